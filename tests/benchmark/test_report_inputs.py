"""`ssl-bench report` on a run whose inputs did not change since its last report prints that report
without writing it (benchmark.report_inputs); any changed unit, run file, code file or deleted output,
and a report with published numbers, writes it again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import benchmark.report
from benchmark import report_inputs
from benchmark.cli import main
from benchmark.results import ResultStore


def _run(run_dir: Path, value: float = 50.0) -> Path:
    store = ResultStore(run_dir)
    for layer, offset in (("res4", 0.0), ("res5", 10.0)):
        store.write_unit(f"m/voc07_svm/{layer}", [{"model": "m", "task": "voc07_svm", "layer": layer, "metric": "mAP",
                                                  "value": value + offset}])
    return run_dir


@pytest.fixture
def counted(monkeypatch):
    """How many times the report was written."""
    calls = []
    real = benchmark.report.write_report

    def write_report(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(benchmark.report, "write_report", write_report)
    return calls


def _report(run: Path, capsys, *extra: str) -> str:
    assert main(["report", str(run), *extra]) == 0
    return capsys.readouterr().out


def test_an_unchanged_run_prints_its_last_report(tmp_path, capsys, counted) -> None:
    run = _run(tmp_path / "run")
    first = _report(run, capsys)
    assert len(counted) == 1 and (run / report_inputs.RECORD).is_file()
    assert _report(run, capsys) == first and len(counted) == 1
    assert "60.00" in first  # res5's number, printed from the kept leaderboard.md


def test_a_changed_input_or_output_writes_it_again(tmp_path, capsys, counted, monkeypatch) -> None:
    run = _run(tmp_path / "run")
    _report(run, capsys)
    _run(run, value=20.0)  # new unit files
    assert "30.00" in _report(run, capsys) and len(counted) == 2
    (run / "report.html").unlink()
    _report(run, capsys)
    assert len(counted) == 3 and (run / "report.html").is_file()
    (run / "config.yaml").write_text("suites: {}\n")
    _report(run, capsys)
    assert len(counted) == 4
    leaderboard = run / "leaderboard.md"
    stat = leaderboard.stat()
    os.utime(leaderboard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # an edited output
    _report(run, capsys)
    assert len(counted) == 5
    monkeypatch.setattr(report_inputs, "_code_state", lambda: ["another version of the code"])
    _report(run, capsys)
    assert len(counted) == 6
    _report(run, capsys)
    assert len(counted) == 6


def test_published_numbers_and_a_damaged_record_write_it(tmp_path, capsys, counted) -> None:
    run = _run(tmp_path / "run")
    _report(run, capsys)
    _report(run, capsys, "--published", "goyal2019")
    assert len(counted) == 2
    _report(run, capsys)  # the published report replaced the outputs the record names
    assert len(counted) == 3
    (run / report_inputs.RECORD).write_text("{not json")
    _report(run, capsys)
    assert len(counted) == 4


def test_a_moved_run_finds_its_own_report(tmp_path, capsys, counted, monkeypatch) -> None:
    run = _run(tmp_path / "run")
    first = _report(run, capsys)
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    monkeypatch.chdir(tmp_path)
    again = _report(Path("elsewhere"), capsys)  # named relatively now: the paths printed are the moved run's
    assert "elsewhere" in again and str(run) not in again and len(counted) == 1
    assert again.split("leaderboard: ")[0] == first.split("leaderboard: ")[0]
