"""The command line end to end on a tiny generated dataset: run, resume, report, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from tests.suites import RANDOM, SUPERVISED_1_EPOCH, suite_yaml, voc07_svm

pytestmark = pytest.mark.slow

MODELS = {"random": RANDOM, "supervised": SUPERVISED_1_EPOCH}
TASKS = {"voc07_svm": voc07_svm()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synth_voc07):
    root = tmp_path_factory.mktemp("e2e")
    config = root / "bench.yaml"
    config.write_text(suite_yaml(synth_voc07(120, 1), MODELS, TASKS))
    out = root / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    return root, config, out


def test_run_writes_results_with_provenance(tiny) -> None:
    _, _, out = tiny
    df = pd.read_csv(out / "tiny" / "results.csv", keep_default_na=False)
    maps = df[df.metric == "mAP"]
    assert sorted(zip(maps.model, maps.layer)) == [("random", "res4"), ("random", "res5"),
                                                   ("supervised", "res4"), ("supervised", "res5")]
    for column in ("ssl_bench_version", "git_sha", "config_hash", "seed", "wall_time_s", "peak_rss_mb",
                   "device", "weights_sha256", "solver", "cost_list"):
        assert column in df and (df[column].astype(str) != "").all(), column
    # the layer mAP is the mean of its 20 per-class APs; a class with too few positives for
    # 3-fold CV has no AP (NaN, with a note) and is left out of the mean
    for (model, layer), group in df[df.metric == "AP"].groupby(["model", "layer"]):
        assert len(group) == 20
        values = pd.to_numeric(group.value)
        assert (values.isna() == group.note.str.contains("positive training images")).all()
        expected = values.mean()
        got = float(maps[(maps.model == model) & (maps.layer == layer)].value.iloc[0])
        assert got == pytest.approx(expected, abs=1e-9)
    assert set(pd.to_numeric(df[df.metric == "AP"].cost).dropna()) <= {0.1, 1.0}


def test_leaderboard_files(tiny) -> None:
    _, _, out = tiny
    md = (out / "tiny" / "leaderboard.md").read_text()
    assert "| random" in md and "| supervised" in md and "res5:mAP" in md
    board = pd.read_csv(out / "tiny" / "leaderboard.csv", index_col=0)
    assert list(board.index) == ["random", "supervised"]
    assert (out / "tiny" / "leaderboard.png").stat().st_size > 1000
    assert main(["report", str(out / "tiny")]) == 0


def test_rerun_skips_finished_units_and_force_reuses_the_feature_cache(tiny, capsys) -> None:
    _, config, out = tiny
    before = (out / "tiny" / "results.csv").read_text()
    cache_files = sorted((out / "feature-cache").rglob("*.npy"))
    assert len(cache_files) == 8  # 2 models x 2 layers x 2 splits
    capsys.readouterr()
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    assert "0 unit(s) run, 4 already done" in capsys.readouterr().out
    assert (out / "tiny" / "results.csv").read_text() == before
    # --force recomputes the SVMs but the features come from the cache: no new entries
    stamps = {p: p.stat().st_mtime_ns for p in cache_files}
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--models", "random", "--force"]) == 0
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "feature-cache").rglob("*.npy"))} == stamps
    after = pd.read_csv(out / "tiny" / "results.csv", keep_default_na=False)
    old = pd.read_csv(pd.io.common.StringIO(before), keep_default_na=False)
    key = ["model", "layer", "metric", "class"]
    merged = old.merge(after, on=key, suffixes=("_old", "_new"))
    assert len(merged) == len(old)
    old_values, new_values = pd.to_numeric(merged.value_old), pd.to_numeric(merged.value_new)
    assert (old_values.isna() == new_values.isna()).all()
    assert (old_values - new_values).abs().max() < 1e-9


def test_missing_dataset_is_a_clear_error(tmp_path, capsys) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(tmp_path / "nowhere", MODELS, TASKS))
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "ssl-bench data synth voc07" in err
    assert not (tmp_path / "runs" / "tiny" / "units").exists()


def test_unknown_key_is_a_clear_error(tmp_path, capsys) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(tmp_path, MODELS, TASKS).replace("layers:", "lyaers:"))
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "lyaers" in err and "Did you mean 'layers'" in err and str(config) in err


def test_console_script_lists_the_registries() -> None:
    exe = Path(sys.executable).with_name("ssl-bench")
    out = subprocess.run([str(exe), "list", "pretrainers"], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["checkpoint", "pretext", "random", "supervised"]
    suites = subprocess.run([str(exe), "list", "suites"], capture_output=True, text=True, check=True).stdout
    assert "goyal2019 " in suites and "goyal2019-mini" in suites


def test_third_party_plugin_registers_through_an_entry_point(tmp_path, monkeypatch) -> None:
    """A pip-installed plugin is a distribution with an entry point: emulate one on sys.path."""
    from benchmark.registry import Registry

    (tmp_path / "my_ssl_plugin.py").write_text(textwrap.dedent("""
        from benchmark.plugin_api import Pretrainer, Task
        class MyMethod(Pretrainer):
            options = {"arch": "resnet18"}
        class MyTask(Task):
            pass
    """))
    dist = tmp_path / "my_ssl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ssl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ssl_bench.pretrainers]\nmy_method = my_ssl_plugin:MyMethod\n\n"
                                           "[ssl_bench.tasks]\nmy_task = my_ssl_plugin:MyTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # the built-in parts come through the same entry points, from ssl-bench's own distribution
    pretrainers, tasks = Registry("pretrainers"), Registry("tasks")
    assert pretrainers.names() == ["checkpoint", "my_method", "pretext", "random", "supervised"]
    assert pretrainers.get("my_method").options == {"arch": "resnet18"}
    assert "my_task" in tasks.names() and "voc07_svm" in tasks.names()
    assert tasks.get("my_task").name == "my_task"  # named after its entry point, as a registered class is


def test_a_reader_that_stops_early_ends_the_command_quietly(monkeypatch, capsys) -> None:
    """``ssl-bench list archs | head -1``: the pipe's reader is gone before the listing is written;
    the command stops with 141 (128 + SIGPIPE, as other tools) and no error message."""
    import io
    import os

    from benchmark.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: writing raises BrokenPipeError (Python ignores SIGPIPE)
    with io.open(write_end, "w", buffering=1) as closed_pipe:
        monkeypatch.setattr("sys.stdout", closed_pipe)
        assert main(["list", "archs"]) == 141
    assert capsys.readouterr().err == ""


def test_a_mistyped_option_is_named_by_its_sub_command_with_the_closest_ones(capsys) -> None:
    from benchmark.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["check", "runs/x", "--agianst", "ref.csv"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: ssl-bench check")  # the sub-command's usage, not the top-level one
    assert "unrecognized arguments: --agianst; --agianst: did you mean --against?" in err
    with pytest.raises(SystemExit):
        main(["run", "--suite", "mini", "--modles", "a", "--tasks=knn"])
    assert "--modles: did you mean --models?" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a unique prefix is argparse's abbreviation, still accepted
        main(["status", "--nonsense"])
    assert "unrecognized arguments: --nonsense" in capsys.readouterr().err
