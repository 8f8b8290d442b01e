"""The normals_nyuv2 task: option checks, data checks that name the file, and the CLI end to end."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.datasets.synth_nyuv2 import synth_nyuv2
from benchmark.plugin_api import RunContext
from benchmark.errors import ConfigError, DatasetError
from benchmark.features import FeatureCache
from benchmark.models.backbone import get_architecture
from tasks.normals.metrics import METRIC_NAMES
from benchmark.registry import TASKS
from tasks.normals.nyuv2 import resolve_schedule


def task(**options):
    cls = TASKS.get("normals_nyuv2")
    return cls(**{**cls.options, **options})


def test_schedules() -> None:
    reference = resolve_schedule(task().config)
    assert (reference.iterations, reference.batch_size, reference.base_lr, reference.weight_decay) == (
        10_000, 16, 0.02, 1e-4)
    assert reference.lr_at(0) == 0.02 and reference.lr_at(5_000) == pytest.approx(0.02 * 0.5 ** 0.9)
    custom = resolve_schedule(task(schedule="custom", iterations=80, batch_size=8).config)
    assert (custom.iterations, custom.batch_size, custom.base_lr) == (80, 8, 0.02)
    with pytest.raises(ConfigError, match="custom schedule needs 'iterations'"):
        resolve_schedule(task(schedule="custom").config)
    with pytest.raises(ConfigError, match="iterations only apply to schedule: custom"):
        resolve_schedule(task(iterations=5).config)
    with pytest.raises(ConfigError, match=r"normals_nyuv2'\.batch_size: 1 is not allowed; expected an integer >= 2"):
        resolve_schedule(task(batch_size=1).config)


@pytest.mark.parametrize("options, message", [
    ({"head": "classes"}, r"\.head: 'classes' is not allowed; expected one of 'codebook', 'regression'"),
    ({"normals": "ladicky"}, r"\.normals: 'ladicky' is not allowed; expected one of 'file', 'depth'"),
    ({"train_short_side": [600, 300]},
     r"\.train_short_side: \[600, 300\] is not allowed; expected \[low, high\] with low <= high"),
    ({"depth_window": 4}, r"\.depth_window: 4 is not allowed; expected an odd integer >= 3"),
    ({"codebook_size": 0}, r"\.codebook_size: 0 is not allowed; expected an integer >= 1"),
])
def test_bad_options_fail_before_any_work(tmp_path, options, message) -> None:
    ctx = RunContext(run_dir=tmp_path, data_root=tmp_path, cache=FeatureCache(tmp_path / "cache"), device=None)
    with pytest.raises(ConfigError, match=message):
        task(**options).check_data(ctx)


def test_missing_data_and_wrong_architecture(tmp_path) -> None:
    ctx = RunContext(run_dir=tmp_path, data_root=tmp_path, cache=FeatureCache(tmp_path / "cache"), device=None)
    with pytest.raises(DatasetError, match="NYUv2 folder .*NYUv2 does not exist.*ssl-bench data synth nyuv2"):
        task().check_data(ctx)
    with pytest.raises(ConfigError, match="needs a ResNet"):
        task().units(get_architecture("alexnet"))
    assert task().units(get_architecture("resnet18")) == ["res5"]


def test_both_suites_configure_the_task() -> None:
    for name in ("goyal2019", "goyal2019-mini"):
        spec = next(t for t in load_suite(name).tasks if t.name == "normals_nyuv2")
        assert spec.options["head"] == "codebook"
    mini = next(t for t in load_suite("goyal2019-mini").tasks if t.name == "normals_nyuv2")
    assert mini.models == ["random", "supervised"] and mini.options["schedule"] == "custom"


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    synth_nyuv2(data, n_images=12, seed=0, width=48, height=36)
    config = tmp_path / "suite.yaml"
    config.write_text(textwrap.dedent("""\
        suites:
          tiny:
            data_root: data
            device: cpu
            num_workers: 0
            models:
              random:
                pretrainer: random
                arch: resnet18
            tasks:
              normals_nyuv2:
                schedule: custom
                iterations: 4
                batch_size: 2
                decoder_channels: 16
                codebook_size: 8
                codebook_samples: 2000
                checkpoint_every: 2
    """))
    args = ["run", "--suite", "tiny", "--config", str(config), "--out", str(tmp_path / "runs"),
            "--data-root", str(data)]
    assert main(args) == 0
    results = pd.read_csv(tmp_path / "runs" / "tiny" / "results.csv")
    baseline = results[results["evaluation"] == "mean_normal_baseline"]
    assert sorted(baseline["metric"]) == sorted(METRIC_NAMES) and (baseline["determinism"] == "exact").all()
    results = results[results["evaluation"] != "mean_normal_baseline"]
    assert sorted(results["metric"]) == sorted(METRIC_NAMES) and (results["determinism"] == "trained").all()
    row = results.set_index("metric")
    assert (row["task"] == "normals_nyuv2").all() and (row["layer"] == "res5").all()
    assert (row["head"] == "codebook").all() and (row["iterations"] == 4).all() and (row["n_train"] == 7).all()
    assert 0 < row.loc["median_error", "value"] < 180 and 0 <= row.loc["within_30", "value"] <= 100
    assert row.loc["within_11.25", "value"] <= row.loc["within_22.5", "value"] <= row.loc["within_30", "value"]
    assert list((tmp_path / "runs" / "feature-cache" / "normals-codebook").glob("*-k8.npy"))
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds the unit done
    assert "0 unit(s) run, 1 already done" in capsys.readouterr().out
