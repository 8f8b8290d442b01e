"""Scheduling and trust: resume, status, retry of failed units, the debug executor, kill -9 of the
driver at random moments, and the regression check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.check import compare, read_reference, run_check, write_reference
from benchmark.cli import main
from benchmark.results import ResultStore
from tests.suites import RANDOM, RANDOM_SEED1, suite_yaml, voc07_svm

KEY = ["model", "task", "layer", "metric", "class"]


def _rows(run_dir: Path) -> pd.DataFrame:
    df = ResultStore(run_dir).load()
    return df[KEY + ["value"]].fillna("").sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synth_voc07):
    root = tmp_path_factory.mktemp("sched")
    config = root / "bench.yaml"
    config.write_text(suite_yaml(synth_voc07(120, 2), {"random": RANDOM, "other": RANDOM_SEED1},
                                 {"voc07_svm": voc07_svm()}))
    out = root / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    return root, config, out / "tiny"


# --- regression check ------------------------------------------------------------------------

def _frame(rows):
    return pd.DataFrame([{**dict(zip(["model", "task", "dataset", "layer", "metric", "class", "k", "sample",
                                      "cost_selection"], key)), "value": value} for key, value in rows])


def test_compare_reports_regressions_missing_and_new() -> None:
    reference = _frame([(("m", "t", "d", "res5", "mAP", "", "", "", ""), 50.0),
                        (("m", "t", "d", "res4", "mAP", "", "", "", ""), 40.0),
                        (("m", "t", "d", "res3", "mAP", "", "", "", ""), 30.0)])
    run = _frame([(("m", "t", "d", "res5", "mAP", "", "", "", ""), 50.4),   # within the 0.5 default
                  (("m", "t", "d", "res4", "mAP", "", "", "", ""), 39.2),   # moved by 0.8
                  (("m", "t", "d", "conv1", "mAP", "", "", "", ""), 10.0)])  # new
    result = compare(run, reference)
    assert result["regressions"]["layer"].tolist() == ["res4"]
    assert result["regressions"]["delta"].iloc[0] == pytest.approx(-0.8)
    assert result["missing"]["layer"].tolist() == ["res3"]
    assert result["new"]["layer"].tolist() == ["conv1"]
    assert len(compare(run, reference, tolerance=1.0)["regressions"]) == 0
    assert len(compare(run, reference, tolerance=0.1)["regressions"]) == 2


def test_lowshot_tolerance_comes_from_the_spread_over_samples() -> None:
    key = ("m", "lowshot", "d", "res5", "{}", "", "4", "", "validation")
    reference = _frame([(tuple(v.format("mAP_mean") for v in key), 20.0),
                        (tuple(v.format("mAP_ci95") for v in key), 2.0)])
    ok = _frame([(tuple(v.format("mAP_mean") for v in key), 21.5), (tuple(v.format("mAP_ci95") for v in key), 9.0)])
    bad = _frame([(tuple(v.format("mAP_mean") for v in key), 22.5)])
    assert len(compare(ok, reference)["regressions"]) == 0  # |1.5| <= ci95 2.0; spreads are not held
    assert len(compare(bad, reference)["regressions"]) == 1


def test_check_cli_update_then_pass_then_fail(tiny, tmp_path, capsys) -> None:
    _, _, run_dir = tiny
    reference = tmp_path / "reference.csv"
    assert main(["check", str(run_dir), "--against", str(reference)]) == 2  # no reference yet: clear error
    assert "--update" in capsys.readouterr().err
    assert run_check(run_dir, reference, update=True) == 0
    assert run_check(run_dir, reference) == 0
    df, _ = read_reference(reference)  # a deliberate edit, re-signed: the check holds it
    row = df.index[(df.metric == "mAP") & (df.layer == "res5") & (df.model == "random")][0]
    df.loc[row, "value"] += 5
    write_reference(df, reference)
    capsys.readouterr()
    assert run_check(run_dir, reference) == 1
    out = capsys.readouterr().out
    assert "1 moved beyond tolerance" in out and "RESULT: FAIL" in out and "| random" in out


# --- status, resume, retry -------------------------------------------------------------------

def test_status_reports_done_failed_running_and_interrupted(tiny, capsys) -> None:
    _, _, run_dir = tiny
    store = ResultStore(run_dir)
    assert main(["status", str(run_dir)]) == 0
    assert "4 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    csv = store.unit_path("other/voc07_svm/res5")
    saved = csv.read_text()
    try:
        csv.unlink()
        store.write_error("other/voc07_svm/res5", "RuntimeError: boom\nlog: /some/log\n")
        assert main(["status", str(run_dir)]) == 1
        out = capsys.readouterr().out
        assert "3 done, 0 running, 1 failed, 0 pending" in out and "RuntimeError: boom" in out
        assert "/some/log" in out and "--only-failed" in out
        marker = csv.with_suffix(".running")
        marker.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "job_id": "17",
                                      "started": time.time() - 130}))
        main(["status", str(run_dir)])
        out = capsys.readouterr().out
        assert "1 running" in out and "job 17, for about 2 min" in out
        assert "time left: under 1 min for 1 unit(s)" in out  # the mean of its finished siblings, less 130 s
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        marker.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
        csv.with_suffix(".error.txt").unlink()
        main(["status", str(run_dir)])
        assert "1 pending" in capsys.readouterr().out  # the writer died: interrupted, will rerun
        marker.unlink()
    finally:
        csv.write_text(saved)
        csv.with_suffix(".error.txt").unlink(missing_ok=True)


def test_resume_only_failed_reruns_just_that_unit(tiny, capsys) -> None:
    _, _, run_dir = tiny
    store = ResultStore(run_dir)
    before = _rows(run_dir)
    csv = store.unit_path("random/voc07_svm/res4")
    csv.unlink()
    store.write_error("random/voc07_svm/res4", "RuntimeError: simulated")
    stamps = {p: p.stat().st_mtime_ns for p in store.units_dir.glob("*.csv")}
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--only-failed"]) == 0
    out = capsys.readouterr().out
    assert "retrying 1 failed unit(s)" in out and "1 unit(s) run" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing else was recomputed
    pd.testing.assert_frame_equal(_rows(run_dir), before)
    assert not csv.with_suffix(".error.txt").exists()


def test_debug_executor_gives_the_same_numbers(tiny, tmp_path) -> None:
    root, config, run_dir = tiny
    out = tmp_path / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--cache", str(run_dir.parent / "feature-cache"), "--executor", "debug"]) == 0
    pd.testing.assert_frame_equal(_rows(out / "tiny"), _rows(run_dir))
    assert (out / "tiny" / "submitit").is_dir()


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(tiny, tmp_path) -> None:
    """SIGKILL the driver (and its worker processes) repeatedly, rerun until complete: the rows
    equal those of an uninterrupted run, each exactly once, and no partial file is read."""
    _, config, reference_dir = tiny
    out = tmp_path / "runs"
    exe = Path(sys.executable).with_name("ssl-bench")
    command = [str(exe), "run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]
    rng = np.random.default_rng(0)
    for delay in rng.uniform(2.0, 6.0, size=3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the driver and any worker it started
        process.wait()
    assert subprocess.run(command, stdout=subprocess.DEVNULL).returncode == 0
    assert list(out.rglob(".*.tmp*")) == []  # the killed drivers' temporary files were cleaned up
    rows = _rows(out / "tiny")
    assert not rows.duplicated(KEY).any()
    pd.testing.assert_frame_equal(rows, _rows(reference_dir))
    gathered = pd.read_csv(out / "tiny" / "results.csv")
    assert len(gathered) == len(rows)


def test_unwritable_or_full_results_dir_fails_before_any_work(tiny, tmp_path, monkeypatch, capsys) -> None:
    """Results that could not be saved are an error up front, not after hours of compute."""
    import shutil as shutil_module
    from collections import namedtuple

    _, config, _ = tiny
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker) in err
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "only 1.0 MiB are free" in err and "--out" in err and str(tmp_path / "runs" / "tiny") in err
    assert "features of random" in err
    assert not (tmp_path / "runs" / "tiny" / "units").exists()


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_the_leaderboard_is_refreshed_as_units_finish(tiny, tmp_path, monkeypatch, capsys, executor) -> None:
    """With SSL_BENCH_REPORT_EVERY_S=0 every finished unit rewrites the leaderboard, so a long run
    can be looked at while it works (the driver's own refresh, for both executor paths)."""
    import benchmark.report as report

    _, config, run_dir = tiny
    out = tmp_path / "runs"
    seen = []
    real = report.write_report

    def counting(directory):
        seen.append(len(ResultStore(directory).load()["unit_id"].unique()))
        return real(directory)

    monkeypatch.setattr(report, "write_report", counting)
    monkeypatch.setenv("SSL_BENCH_REPORT_EVERY_S", "0")
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--cache", str(run_dir.parent / "feature-cache"), "--executor", executor]) == 0
    assert seen == [1, 2, 3, 4, 4]  # after each of the 4 units, then the final report
    monkeypatch.setenv("SSL_BENCH_REPORT_EVERY_S", "soon")
    capsys.readouterr()
    assert main(["resume", str(out / "tiny")]) == 2  # refused before any work, naming the variable
    assert "SSL_BENCH_REPORT_EVERY_S must be a number of seconds, got 'soon'" in capsys.readouterr().err
