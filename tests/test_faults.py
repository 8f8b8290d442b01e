"""Faults of the world around a run: names that would escape the run directory, unit file names
that collide, a full disk (simulated and real), damaged result and cache files, leftovers of
killed processes, and two drivers on one run directory.

Every fault test checks three things: the message names the file, key or path; the exit code of
the command; and every finished result file is byte-identical afterwards."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.diskspace import layer_dims
from benchmark.features import FeatureCache, FeatureKey, open_entry
from benchmark.paths import DiskFullError, UnsafePathError, inside, remove_stale_temporaries, temporary_path
from benchmark.results import ResultStore, legacy_unit_filename, record_path
from benchmark.runlock import RunLock
from tests.suites import RANDOM, RANDOM_SEED1, suite_yaml, voc07_svm

KEY = ["model", "task", "layer", "metric", "class"]
UNITS = ["random/voc07_svm/res4", "random/voc07_svm/res5", "other/voc07_svm/res4", "other/voc07_svm/res5"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished run of two models x two layers, its config, cache and a reference file."""
    root = tmp_path_factory.mktemp("faults")
    assert main(["data", "synth", "voc07", "--out", str(root / "data"), "--images", "120", "--seed", "2"]) == 0
    config = root / "bench.yaml"
    config.write_text(suite_yaml(root / "data", {"random": RANDOM, "other": RANDOM_SEED1}, {"voc07_svm": voc07_svm()}))
    out = root / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    reference = root / "reference.csv"
    assert main(["check", str(out / "tiny"), "--against", str(reference), "--update"]) == 0
    return {"root": root, "config": config, "run_dir": out / "tiny", "cache": out / "feature-cache",
            "reference": reference}


def _copy_run(tiny, tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny["run_dir"], run_dir)
    return run_dir


def _hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every finished result file (unit files and their records)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run_dir / "units").glob("*")) if p.suffix in (".csv", ".json")}


def _rows(run_dir: Path) -> pd.DataFrame:
    df = ResultStore(run_dir).load()
    return df[KEY + ["value"]].fillna("").sort_values(KEY).reset_index(drop=True)


def _remove_unit(store: ResultStore, unit_id: str) -> None:
    store.unit_path(unit_id).unlink()
    record_path(store.unit_path(unit_id)).unlink()


def _temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in Path(root).rglob(".*tmp*")]


# --- unit file names ---------------------------------------------------------------------------


def test_unit_ids_differing_only_in_punctuation_keep_their_own_files(tmp_path) -> None:
    store = ResultStore(tmp_path)
    ids = ["moco v2/voc07_svm/res5", "moco:v2/voc07_svm/res5", "moco__v2/voc07_svm/res5",
           "moco  v2/voc07_svm/res5", "moco/v2/voc07_svm/res5"]
    assert len({legacy_unit_filename(i) for i in ids}) < len(ids)  # the old names collided
    for value, unit_id in enumerate(ids):
        store.write_unit(unit_id, [{"model": unit_id.rsplit("/", 2)[0], "task": "voc07_svm", "layer": "res5",
                                    "metric": "mAP", "value": float(value), "config_hash": "h"}])
    assert len(list(store.units_dir.glob("*.csv"))) == len(ids)
    df = store.load()
    assert dict(zip(df["unit_id"], df["value"])) == {unit_id: float(v) for v, unit_id in enumerate(ids)}
    assert all(store.is_done(unit_id, "h") for unit_id in ids)
    assert all(store.unit_path(unit_id).parent == store.units_dir for unit_id in ids)


def test_unit_files_of_older_versions_are_found_and_adopted(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.units_dir.mkdir(parents=True)
    legacy = store.units_dir / legacy_unit_filename("m/voc07_svm/res5")
    legacy.write_text("model,task,layer,metric,value,config_hash,unit_id\nm,voc07_svm,res5,mAP,50.5,h,m/voc07_svm/res5\n")
    content = legacy.read_bytes()
    assert store.is_done("m/voc07_svm/res5", "h") and len(store.load()) == 1  # read-only commands find it
    # an old file shared by two ids holds the rows of only one of them: the other is not done
    assert not store.is_done("m:voc07_svm/res5", "h")
    assert store.adopt_legacy("m/voc07_svm/res5") == store.unit_path("m/voc07_svm/res5")
    assert not legacy.exists() and store.unit_path("m/voc07_svm/res5").read_bytes() == content
    assert record_path(store.unit_path("m/voc07_svm/res5")).is_file()
    assert store.is_done("m/voc07_svm/res5", "h")


# --- paths stay inside their directory ---------------------------------------------------------


@pytest.mark.parametrize("parts", [("..", "x.csv"), ("a", "..", "..", "x.csv"), ("/etc/passwd",),
                                   ("lowshot", "../../../tmp/evil", "s.npy")])
def test_paths_that_would_escape_are_refused(tmp_path, parts) -> None:
    root = tmp_path / "run"
    root.mkdir()
    with pytest.raises(UnsafePathError) as info:
        inside(root, *parts)
    assert str(root.resolve()) in str(info.value) and parts[-1] in str(info.value)
    assert inside(root, "units", "a..b.csv") == root / "units" / "a..b.csv"  # dots inside a name are fine


def test_a_planted_symlink_does_not_lead_writes_outside(tmp_path) -> None:
    run_dir = tmp_path / "run"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run_dir.mkdir()
    (run_dir / "units").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="elsewhere"):
        ResultStore(run_dir).write_unit("m/t/res5", [{"metric": "mAP", "value": 1.0}])
    assert list(outside.iterdir()) == []


def test_names_from_results_and_options_cannot_place_files_outside(tmp_path) -> None:
    from tasks.detection.proposals import cache_path
    from tasks.lowshot.protocol import sample_directory
    from benchmark.report import write_report

    class Split:
        split = "../../../outside"

        def fingerprint(self) -> str:
            return "0" * 64

    with pytest.raises(UnsafePathError, match="outside"):
        sample_directory(tmp_path / "run", "lowshot_voc07", Split(), 0)
    with pytest.raises(UnsafePathError, match="escape"):
        cache_path(tmp_path / "cache", {"generator": "../../escape"})
    # a task name in the results becomes a figure's file name (in the low-shot family's report hook,
    # reached through the run's suite.yaml, which says which task the instance is)
    run_dir = tmp_path / "deep" / "run"
    store = ResultStore(run_dir)
    store.write_unit("m/x/res5", [{"model": "m", "task": "../../escape", "layer": "res5", "metric": "mAP_mean",
                                   "k": "1", "value": 1.0}])
    (run_dir / "suite.yaml").write_text("tasks:\n  ../../escape: {task: lowshot_voc07}\n")
    before = _hashes(run_dir)
    with pytest.raises(UnsafePathError, match="escape.png"):
        write_report(run_dir)
    assert not (tmp_path / "escape.png").exists() and not list(tmp_path.glob("*.png"))
    assert _hashes(run_dir) == before


# --- damaged result files ----------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_last_rows(path: Path) -> None:  # still a valid CSV, with fewer rows
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff\x13garbage" * 40)


def _record_removed(path: Path) -> None:
    record_path(path).unlink()


def _record_garbled(path: Path) -> None:
    record_path(path).write_text('{"rows": 3, "by')


def _linked_outside(path: Path) -> None:  # a hostile run directory: an intact unit file read from elsewhere
    elsewhere = path.parent.parent.parent / "elsewhere"
    elsewhere.mkdir()
    for member in (path, record_path(path)):
        member.rename(elsewhere / member.name)
        member.symlink_to(elsewhere / member.name)


DAMAGES = [_empty, _cut_in_half, _drop_last_rows, _garbage, _record_removed, _record_garbled]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.strip("_") for d in DAMAGES])
def test_a_damaged_unit_file_is_named_everywhere_and_recomputed(tiny, tmp_path, capsys, damage) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    victim = store.unit_path("other/voc07_svm/res4")
    others = {k: v for k, v in _hashes(run_dir).items() if not k.startswith(victim.stem)}
    damage(victim)
    capsys.readouterr()

    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 done, 0 running, 0 failed, 1 pending" in out and str(victim) in out and "damaged" in out

    assert main(["check", str(run_dir), "--against", str(tiny["reference"])]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "damaged" in err and "ssl-bench resume" in err

    assert main(["report", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert str(victim) in captured.err
    assert str(victim) in (run_dir / "leaderboard.md").read_text()

    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 unit(s) run, 3 already done, 0 failed" in out and str(victim) in out
    assert {k: v for k, v in _hashes(run_dir).items() if not k.startswith(victim.stem)} == others
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(tiny["run_dir"]))
    assert main(["check", str(run_dir), "--against", str(tiny["reference"])]) == 0


def test_damaged_plan_and_marker_files_are_named(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    _remove_unit(store, "random/voc07_svm/res5")
    before = _hashes(run_dir)
    marker = store.unit_path("random/voc07_svm/res5").with_suffix(".running")
    for text in ("", '{"pid": 12', "[]", '{"pid": "x"}'):  # cut off while written: its writer is gone
        marker.write_text(text)
        assert main(["status", str(run_dir)]) == 0
        assert "3 done, 0 running, 0 failed, 1 pending" in capsys.readouterr().out
    config = run_dir / "config.yaml"
    saved = config.read_bytes()
    for damaged in (b"", saved[: len(saved) // 3], b"\xff\xfe\x00garbage"):
        config.write_bytes(damaged)
        assert main(["status", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert "config.yaml" in err and "Traceback" not in err
    config.write_bytes(saved)
    invocation = run_dir / "invocation.json"
    for text in ("", '{"suite": "tiny"', '{"suite": "tiny"}', "[1, 2]"):
        invocation.write_text(text)
        for command in (["status", str(run_dir)], ["resume", str(run_dir)]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert str(invocation) in err and "damaged" in err and "Traceback" not in err
    assert _hashes(run_dir) == before


def test_a_damaged_low_shot_sample_file_is_drawn_again_identically(tmp_path, capsys) -> None:
    from tasks.lowshot.protocol import load_or_draw

    path = tmp_path / "samples" / "train_targets_sample1_k4.npy"
    draw = lambda: np.arange(12, dtype=np.int64).reshape(3, 4)  # noqa: E731
    first = load_or_draw(path, draw)
    for damaged in (b"", path.read_bytes()[:90], b"\x93NUMPY garbage"):
        path.write_bytes(damaged)
        np.testing.assert_array_equal(load_or_draw(path, draw), first)
        assert str(path) in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(path), first)


# --- damaged feature cache entries --------------------------------------------------------------


def _entry(cache_root: Path) -> Path:
    return sorted(Path(cache_root).rglob("*.npy"))[0]


def _zero_tail(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size - 64)
        handle.write(b"\x00" * 64)


def _meta_removed(path: Path) -> None:
    path.with_suffix(".json").unlink()


def _meta_garbled(path: Path) -> None:
    path.with_suffix(".json").write_text("{not json")


def _header_garbled(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.write(b"NOTNUMPY")


ENTRY_DAMAGES = [_empty, _cut_in_half, _zero_tail, _meta_removed, _meta_garbled, _header_garbled]


@pytest.mark.parametrize("damage", ENTRY_DAMAGES, ids=[d.__name__.strip("_") for d in ENTRY_DAMAGES])
def test_a_damaged_cache_entry_is_detected_and_named(tmp_path, damage) -> None:
    warnings = []
    cache = FeatureCache(tmp_path / "cache", warn=warnings.append)
    key = FeatureKey("w", "resnet18", "res5", "p", "t", "voc07", "test", "f")
    values = np.random.default_rng(0).standard_normal((300, 1000)).astype(np.float32)
    writer = cache.writer(key, values.shape)
    writer.array[:] = values
    writer.commit({"n": 300, "dim": 1000})
    path = cache._path(key)
    np.testing.assert_array_equal(cache.get(key), values)
    damage(path)
    assert cache.get(key) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and "extracting it again" in warnings[0]
    assert open_entry(path)[1]


@pytest.mark.parametrize("damage", [_cut_in_half, _meta_removed], ids=["cut_in_half", "meta_removed"])
def test_a_run_recomputes_a_damaged_cache_entry_with_the_same_numbers(tiny, tmp_path, capsys, damage) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(tiny["cache"], cache)
    victim = _entry(cache)
    damage(victim)
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main(["run", "--suite", "tiny", "--config", str(tiny["config"]), "--out", str(out), "--cache", str(cache),
                 "--device", "cpu"]) == 0
    assert str(victim) in capsys.readouterr().err
    assert open_entry(victim)[1] == ""
    pd.testing.assert_frame_equal(_rows(out / "tiny"), _rows(tiny["run_dir"]))


# --- a full disk -------------------------------------------------------------------------------


def _full_disk_on(monkeypatch, units_dir: Path) -> None:
    """Renaming a finished temporary file into place as a unit file fails as on a full disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == units_dir and str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_a_full_disk_while_saving_fails_those_units_only(tiny, tmp_path, monkeypatch, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    for unit_id in ("random/voc07_svm/res5", "other/voc07_svm/res4"):
        _remove_unit(store, unit_id)
    before = _hashes(run_dir)
    _full_disk_on(monkeypatch, store.units_dir)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 1
    captured = capsys.readouterr()
    for unit_id in ("random/voc07_svm/res5", "other/voc07_svm/res4"):
        error = store.unit_path(unit_id).with_suffix(".error.txt").read_text()
        assert "DiskFullError" in error and "no space left" in error and str(store.unit_path(unit_id)) in error
        assert f"FAILED {unit_id}" in captured.err
    assert "0 unit(s) run, 2 already done, 2 failed" in captured.out
    assert {k: v for k, v in _hashes(run_dir).items() if k in before} == before
    assert _temporaries(run_dir) == []
    monkeypatch.undo()
    assert main(["status", str(run_dir)]) == 1
    assert "2 done, 0 running, 2 failed" in capsys.readouterr().out


def test_a_full_disk_during_extraction_is_an_error_not_a_crash(tiny, tmp_path, monkeypatch, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    _remove_unit(store, "other/voc07_svm/res5")
    before = _hashes(run_dir)

    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    cache = tmp_path / "fresh-cache"
    capsys.readouterr()
    assert main(["run", "--suite", "tiny", "--config", str(tiny["config"]), "--out", str(run_dir.parent),
                 "--cache", str(cache), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    error = store.unit_path("other/voc07_svm/res5").with_suffix(".error.txt").read_text()
    assert "no space left" in error and str(cache) in error and "KiB needed" in error
    assert "FAILED other/voc07_svm/res5" in captured.err
    assert _hashes(run_dir) == before
    assert _temporaries(run_dir, cache) == [] and list(cache.rglob("*.npy")) == []


def test_a_plan_larger_than_the_free_space_is_refused_with_the_estimate(tiny, tmp_path, monkeypatch, capsys) -> None:
    from collections import namedtuple

    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    _remove_unit(store, "random/voc07_svm/res4")
    before = _hashes(run_dir)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 3 * 2**20, 3 * 2**20))
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "only 3.0 MiB are free" in err and str(run_dir) in err and "features of random" in err
    assert "features of other" not in err  # a model whose units are all done writes nothing
    assert "SSL_BENCH_SKIP_SPACE_CHECK" in err
    assert _hashes(run_dir) == before
    assert not store.unit_path("random/voc07_svm/res4").with_suffix(".error.txt").exists()


def test_the_estimate_counts_images_times_layer_dims(tiny) -> None:
    from benchmark.datasets.voc import load_voc
    from benchmark.plugin_api import RunContext
    from benchmark.run import build_tasks, estimate_writes, load_plan

    plan = load_plan(tiny["run_dir"])
    ctx = RunContext(run_dir=plan.run_dir, data_root=plan.data_root, cache=FeatureCache(plan.cache_dir),
                     device=torch.device("cpu"))
    pending = [u for u in plan.units if u.model == "random"]
    estimate = estimate_writes(plan, pending, build_tasks(plan.suite), ctx)
    images = sum(len(load_voc(plan.data_root, split).image_paths) for split in ("trainval", "test"))
    per_image = 256 * 3 * 3 + 512 * 2 * 2  # resnet18 res4, res5 pooled to 3x3 and 2x2 grids
    assert estimate.cache_bytes == images * per_image * 4 + 4 * 128
    # ... and the cache holds exactly that much per model (the headers aside)
    entries = [p for p in tiny["cache"].rglob("*.npy")]
    assert sum(p.stat().st_size for p in entries) == pytest.approx(2 * estimate.cache_bytes, rel=0.01)
    assert layer_dims("resnet50", 224) == {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216,
                                           "res5": 8192, "pool5": 2048}  # the protocol's dimensions


def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    return path


def test_a_really_full_cache_file_system(tiny, tmp_path, monkeypatch, capsys) -> None:
    """On a 1 MiB tmpfs: refused up front with the real free space; forced past the check, the
    memory-mapped extraction fails as an error of each unit (no SIGBUS), leaving no file behind."""
    cache = _tmpfs(tmp_path / "small", "1m")
    try:
        run_dir = _copy_run(tiny, tmp_path)
        store = ResultStore(run_dir)
        for unit_id in UNITS[:2]:
            _remove_unit(store, unit_id)
        before = _hashes(run_dir)
        command = ["run", "--suite", "tiny", "--config", str(tiny["config"]), "--out", str(run_dir.parent),
                   "--cache", str(cache), "--device", "cpu"]
        assert main(command) == 2
        err = capsys.readouterr().err
        assert str(cache) in err and "are free there" in err and "features of random" in err
        monkeypatch.setenv("SSL_BENCH_SKIP_SPACE_CHECK", "1")
        assert main(command) == 1
        captured = capsys.readouterr()
        for unit_id in UNITS[:2]:
            error = store.unit_path(unit_id).with_suffix(".error.txt").read_text()
            assert "no space left" in error and str(cache) in error
        assert _hashes(run_dir) == before
        assert _temporaries(run_dir, cache) == []
        assert all(open_entry(entry)[1] == "" for entry in cache.rglob("*.npy"))  # what fitted is whole
        assert "2 failed" in captured.out
    finally:
        subprocess.run(["umount", str(cache)], check=False)


# --- leftovers of killed processes ---------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporaries_of_dead_processes_are_removed_and_no_others(tmp_path) -> None:
    host = temporary_path(Path("x")).name.split(".")[2]
    dead = _dead_pid()
    stale = [tmp_path / "units" / f".a.csv.{host}.{dead}.tmp", tmp_path / "ab" / f".e.npy.{host}.{dead}.tmp.npy"]
    kept = [tmp_path / "units" / f".b.csv.{host}.{os.getpid()}.tmp",     # a live writer
            tmp_path / "units" / f".c.csv.othernode.{dead}.tmp",          # another host's pid means nothing here
            tmp_path / "units" / "a.csv", tmp_path / "units" / f".d.csv.{dead}.tmp"]  # not ours to judge
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_a_run_after_kill_9_cleans_up_and_says_so(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    dead = _dead_pid()
    leftover = temporary_path(ResultStore(run_dir).unit_path("random/voc07_svm/res4"))
    leftover = leftover.with_name(leftover.name.replace(f".{os.getpid()}.", f".{dead}."))
    leftover.write_text("half a unit")
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 temporary file(s) of killed processes" in out and str(run_dir) in out
    assert not leftover.exists() and _hashes(run_dir) == before


# --- the run lock --------------------------------------------------------------------------------


def test_a_second_driver_is_refused_while_the_first_runs(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from benchmark.runlock import RunLock; "
        f"RunLock({str(run_dir)!r}, 'ssl-bench run --suite tiny').acquire(); print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["resume", str(run_dir)],
                        ["run", "--suite", "tiny", "--config", str(tiny["config"]), "--out", str(run_dir.parent)]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and socket.gethostname() in err and "started" in err
            assert str(run_dir) in err
        assert main(["status", str(run_dir)]) == 0  # reading is never locked
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's flock; its pid on this host is dead: taken over
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"taking over the lock of {run_dir} from a dead process (pid {holder.pid}" in out
    assert (run_dir / ".lock").read_text() == ""  # released
    assert _hashes(run_dir) == before


def test_a_lock_left_by_a_dead_process_or_another_host(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    lock = run_dir / ".lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": time.time()}))
    assert main(["resume", str(run_dir)]) == 0
    assert "taking over the lock" in capsys.readouterr().out
    lock.write_text(json.dumps({"pid": 4242, "host": "login-node-7", "started": time.time()}))
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "pid 4242 on host login-node-7" in err and f"delete {lock}" in err
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}))
    assert main(["resume", str(run_dir)]) == 2  # a live pid that holds no flock (flock-less file system)
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert _hashes(run_dir) == before


def test_jobs_of_the_driver_are_not_blocked_by_its_lock(tiny, tmp_path, monkeypatch) -> None:
    """SLURM array jobs run while the driver holds the lock: they never take it."""
    from benchmark.run import executors as scheduler
    from benchmark.run.executors import UnitJob

    monkeypatch.setattr(scheduler, "_job_log_path", lambda: "")  # outside a submitit job

    run_dir = _copy_run(tiny, tmp_path)
    store = ResultStore(run_dir)
    _remove_unit(store, "other/voc07_svm/res5")
    before = _hashes(run_dir)
    with RunLock(run_dir, "driver"):
        result = UnitJob()(str(run_dir), ["other/voc07_svm/res5"])
    assert result["done"] == ["other/voc07_svm/res5"] and not result["failed"]
    assert {k: v for k, v in _hashes(run_dir).items() if k in before} == before
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(tiny["run_dir"]))


# --- other files read back ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", [_empty, _cut_in_half, _garbage], ids=["empty", "cut_in_half", "garbage"])
def test_a_damaged_proposal_cache_file_is_generated_again(tmp_path, capsys, damage) -> None:
    from tasks.detection.proposals import cache_path, cached_proposals

    ids = ["000001", "000002"]
    calls = []

    def generate():
        calls.append(1)
        rng = np.random.default_rng(0)
        return [rng.uniform(0, 50, (4, 4)).astype(np.float32) for _ in ids], [np.ones(4, np.float32) for _ in ids]

    path = cache_path(tmp_path, {"generator": "test", "data": "abc"})
    first = cached_proposals(path, ids, generate)
    damage(path)
    again = cached_proposals(path, ids, generate)
    assert len(calls) == 2 and str(path) in capsys.readouterr().err
    for a, b in zip(first[0], again[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", [_empty, _cut_in_half, _garbage], ids=["empty", "cut_in_half", "garbage"])
def test_a_damaged_training_checkpoint_restarts_training(tmp_path, capsys, damage) -> None:
    from benchmark.training import atomic_torch_save, load_matching_checkpoint

    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"format": 1, "fingerprint": "f", "weights": torch.arange(50_000.0)}, path)
    assert load_matching_checkpoint(path, 1, "f", "detection")["fingerprint"] == "f"
    damage(path)
    assert load_matching_checkpoint(path, 1, "f", "detection") is None
    out = capsys.readouterr().out
    assert str(path) in out and "starting afresh" in out


def test_a_suite_name_cannot_place_the_run_outside_out(tiny, tmp_path, capsys) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(tiny["config"].read_text().replace("  tiny:", '  "../../escape":'))
    out = tmp_path / "a" / "runs"
    assert main(["run", "--suite", "../../escape", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    assert "../../escape" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not list(tmp_path.glob("*/escape"))


def test_a_really_full_run_directory_then_freed(tiny, tmp_path, monkeypatch, capsys) -> None:
    """The run directory on a tmpfs filled up to the last pages: the units that cannot be saved
    fail (or, when even the report cannot be written, the run stops with an error naming the
    file); nothing finished changes, nothing temporary stays, and once space is freed a resume
    completes with the same numbers."""
    disk = _tmpfs(tmp_path / "small", "2m")
    try:
        run_dir = disk / "runs" / "tiny"
        shutil.copytree(tiny["run_dir"], run_dir)
        store = ResultStore(run_dir)
        for unit_id in UNITS[2:]:
            _remove_unit(store, unit_id)
        before = _hashes(run_dir)
        filler = disk / "filler"
        with open(filler, "wb") as handle:
            handle.write(b"\0" * (shutil.disk_usage(disk).free - 16 * 2**10))
        monkeypatch.setenv("SSL_BENCH_SKIP_SPACE_CHECK", "1")
        capsys.readouterr()
        code = main(["resume", str(run_dir)])
        captured = capsys.readouterr()
        assert code in (1, 2) and "no space left" in captured.err and str(disk) in captured.err
        assert "FAILED other/voc07_svm/res4: DiskFullError: no space left" in captured.err
        assert "0 unit(s) run, 2 already done, 2 failed" in captured.out
        assert {k: v for k, v in _hashes(run_dir).items() if k in before} == before
        assert _temporaries(disk) == []
        assert main(["status", str(run_dir)]) in (0, 1)
        assert "2 done" in capsys.readouterr().out
        filler.unlink()
        assert main(["resume", str(run_dir)]) == 0
        assert {k: v for k, v in _hashes(run_dir).items() if k in before} == before
        pd.testing.assert_frame_equal(_rows(run_dir), _rows(tiny["run_dir"]))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_unreadable_lock_file_nobody_holds_is_replaced(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    (run_dir / ".lock").write_bytes(b'{"pid": 12\x00\xff')
    assert main(["resume", str(run_dir)]) == 0
    assert f"replacing the unreadable lock file {run_dir / '.lock'}" in capsys.readouterr().out
    assert (run_dir / ".lock").read_text() == "" and _hashes(run_dir) == before


def test_a_forced_rerun_that_cannot_save_keeps_the_finished_result(tiny, tmp_path, monkeypatch, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    _full_disk_on(monkeypatch, ResultStore(run_dir).units_dir)
    assert main(["run", "--suite", "tiny", "--config", str(tiny["config"]), "--out", str(run_dir.parent),
                 "--cache", str(tiny["cache"]), "--device", "cpu", "--models", "random", "--force"]) == 1
    err = capsys.readouterr().err
    assert "FAILED random/voc07_svm/res4: DiskFullError" in err and str(run_dir / "units") in err
    assert _hashes(run_dir) == before
    monkeypatch.undo()
    assert main(["check", str(run_dir), "--against", str(tiny["reference"])]) == 0  # all four still done


def test_without_fallocate_the_free_space_still_decides(tmp_path, monkeypatch) -> None:
    from collections import namedtuple

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("w", "resnet18", "res5", "p", "t", "voc07", "test", "f")
    writer = cache.writer(key, (10, 10))  # fits: sparse as on such file systems
    writer.abort()
    vfs = namedtuple("vfs", "f_bavail f_frsize")
    monkeypatch.setattr(os, "fstatvfs", lambda fd: vfs(1, 4096))
    with pytest.raises(DiskFullError) as info:
        cache.writer(key, (1000, 1000))
    assert "no space left" in str(info.value) and str(cache._path(key)) in str(info.value)
    assert _temporaries(tmp_path) == []


# --- run directories on read-only or full file systems, binary inputs (issue 47) ------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _unreported_copy(tiny, mount: Path) -> Path:
    """The tiny run copied onto ``mount`` without the files ``ssl-bench report`` writes."""
    run_dir = mount / "tiny"
    shutil.copytree(tiny["run_dir"], run_dir)
    for name in ("leaderboard.md", "leaderboard.csv", "results.csv", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    return run_dir


def test_report_on_a_read_only_run_directory_is_one_line_naming_it(tiny, tmp_path, capsys) -> None:
    mount = _tmpfs(tmp_path / "ro", "64m")
    try:
        run_dir = _unreported_copy(tiny, mount)
        before = _hashes(run_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        assert main(["report", str(run_dir)]) == 2
        err = _one_line_error(capsys)
        assert str(run_dir) in err and "read-only" in err and "copy the folder to a writable place" in err
        assert _hashes(run_dir) == before
        assert main(["data", "synth", "classification", "--out", str(mount / "data"), "--classes", "2"]) == 2
        err = _one_line_error(capsys)
        assert str(mount / "data") in err and "read-only" in err
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_report_on_a_full_file_system_is_one_line_and_leaves_no_temporaries(tiny, tmp_path, capsys) -> None:
    mount = _tmpfs(tmp_path / "full", "16m")
    try:
        run_dir = _unreported_copy(tiny, mount)
        with open(mount / "filler", "wb") as handle:  # fill the file system up
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        before = _hashes(run_dir)
        assert main(["report", str(run_dir)]) == 2
        err = _one_line_error(capsys)
        assert str(run_dir) in err and ("space" in err or "full" in err)
        assert _hashes(run_dir) == before
        assert _temporaries(run_dir) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("content", [bytes(range(256)), "suites: {caf\u00e9: {}}\n".encode("latin-1"),
                                     b"\x1f\x8b\x08\x00 gzip"], ids=["binary", "latin-1", "gzip"])
def test_a_binary_or_non_utf8_config_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys, content) -> None:
    config = tmp_path / "bench.yaml"
    config.write_bytes(content)
    out = tmp_path / "out"
    assert main(["run", "--suite", "s", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    assert f"config file {config} is not UTF-8 text" in _one_line_error(capsys)
    assert not out.exists()
    assert main(["list", "suites", "--config", str(config)]) == 2
    assert f"config file {config} is not UTF-8 text" in _one_line_error(capsys)


def test_a_binary_reference_or_plan_file_is_one_line_naming_it(tiny, tmp_path, capsys) -> None:
    run_dir = _copy_run(tiny, tmp_path)
    before = _hashes(run_dir)
    reference = tmp_path / "reference.csv"
    reference.write_bytes(bytes(range(256)) * 4)
    assert main(["check", str(run_dir), "--against", str(reference)]) == 2
    assert f"reference file {reference} is not a readable CSV" in _one_line_error(capsys)
    published = tmp_path / "published.csv"
    published.write_bytes(bytes(range(256)) * 4)
    assert main(["report", str(run_dir), "--published", str(published)]) == 2
    assert f"{published}: not a UTF-8 text file" in _one_line_error(capsys)
    (run_dir / "invocation.json").write_bytes(bytes(range(256)))
    assert main(["status", str(run_dir)]) == 2
    assert f"{run_dir / 'invocation.json'} is damaged" in _one_line_error(capsys)
    assert {k: v for k, v in _hashes(run_dir).items() if k != "invocation.json"} == \
        {k: v for k, v in before.items() if k != "invocation.json"}


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "not-a-mapping", "fifo"])
def test_a_missing_or_malformed_config_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys, kind) -> None:
    config = tmp_path / "bench.yaml"
    expected = {"missing": "does not exist", "folder": "is a folder", "empty": "must contain a mapping",
                "not-a-mapping": "must contain a mapping", "fifo": "is not a regular file"}[kind]
    if kind == "folder":
        config.mkdir()
    elif kind == "empty":
        config.write_text("")
    elif kind == "not-a-mapping":
        config.write_text("- just\n- a list\n")
    elif kind == "fifo":  # a named pipe would block a reader forever: refused as not a file
        os.mkfifo(config)
    out = tmp_path / "out"
    assert main(["run", "--suite", "s", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    err = _one_line_error(capsys)
    assert f"{config}" in err and expected in err
    assert not out.exists()


def test_a_unit_file_linked_from_outside_the_run_directory_is_never_read(tiny, tmp_path, capsys) -> None:
    """A hostile run directory: an intact unit file and its record are symlinks to files elsewhere."""
    run_dir = _copy_run(tiny, tmp_path)
    victim = ResultStore(run_dir).unit_path("other/voc07_svm/res4")
    _linked_outside(victim)
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 2  # resolving the unit's own file refuses the link
    err = _one_line_error(capsys)
    assert victim.name in err and "outside" in err
    frame, problem = ResultStore(run_dir).inspect(victim)
    assert frame is None and f"{victim.name} is a symlink pointing outside the run directory" in problem
    assert main(["report", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert str(victim) in captured.err and "pointing outside the run directory" in captured.err
    rows = pd.read_csv(run_dir / "results.csv")
    assert not rows["unit_id"].astype(str).eq("other/voc07_svm/res4").any()  # its rows were not taken


@pytest.mark.parametrize("fault", ["no images", "missing VOC", "unknown arch"])
def test_a_refused_pretraining_writes_nothing(tmp_path, capsys, fault) -> None:
    images = tmp_path / "images"
    images.mkdir()
    if fault != "no images":
        from PIL import Image

        Image.new("RGB", (32, 32)).save(images / "a.jpg")
    args = {"no images": ["--data", str(images)],
            "missing VOC": ["--data", "voc07:trainval", "--data-root", str(tmp_path / "nowhere")],
            "unknown arch": ["--data", str(images), "--arch", "resnet99"]}[fault]
    out = tmp_path / "out" / "ckpt.pt"
    assert main(["pretrain", "rotation", *args, "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 2
    expected = {"no images": "no images", "missing VOC": str(tmp_path / "nowhere"), "unknown arch": "resnet99"}[fault]
    assert expected in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no out folder, checkpoint or log
