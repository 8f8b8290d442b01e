"""The leaderboard refresh during a run: throttled, and never fatal."""

from __future__ import annotations

import benchmark.report as report
from benchmark.cli import LiveReport


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refreshes_at_most_once_per_interval(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(report, "write_report", lambda run_dir: calls.append(run_dir))
    clock = Clock()
    live = LiveReport(tmp_path, interval_s=60, clock=clock)
    for now in (10, 59, 61, 90, 120, 122, 500):
        clock.now = now
        live(unit=None)
    assert len(calls) == 3 and live.refreshed == 3  # at 61, 122 (61 + 61 >= 60 after 61), 500


def test_a_failing_refresh_warns_once_and_does_not_stop_the_run(tmp_path, monkeypatch, capsys) -> None:
    def broken(run_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", broken)
    clock = Clock()
    live = LiveReport(tmp_path, interval_s=0, clock=clock)
    live(unit=None)
    live(unit=None)
    err = capsys.readouterr().err
    assert err.count("leaderboard not refreshed") == 1 and "No space left" in err
