"""``ssl-bench status``: which units of a run are done, running (for how long), failed or
pending, and an estimate of the time left."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..paths import process_alive
from ..results import ResultStore
from .manifest import Unit, read_manifest


@dataclass
class UnitState:
    state: str  # done | running | failed | pending
    detail: str = ""
    log: str = ""
    started: float | None = None  # epoch seconds, for running units


def _read_marker(marker) -> dict:
    """The running marker's content; {} when it vanished or was cut off (its writer is gone)."""
    try:
        info = json.loads(marker.read_text())
        return info if isinstance(info, dict) and str(info.get("pid", "")).isdigit() else {}
    except (OSError, ValueError):
        return {}


def unit_state(store: ResultStore, unit: Unit) -> UnitState:
    path = store.unit_path(unit.unit_id)
    result, detail = store.unit_state(unit.unit_id, unit.config_hash)
    if result == "done":
        return UnitState("done", detail)
    marker = path.with_suffix(".running")
    info = _read_marker(marker) if marker.exists() else {}
    if info:
        here = info.get("host") == socket.gethostname()
        if not here or process_alive(int(info["pid"])):
            where = (f"pid {info.get('pid')} on {info.get('host')}"
                     + (f", job {info['job_id']}" if info.get("job_id") else ""))
            started = info.get("started")
            return UnitState("running", where, info.get("log", ""),
                             float(started) if isinstance(started, (int, float)) else None)
        # the process that wrote the marker is gone: the unit was interrupted and will rerun
    error = path.with_suffix(".error.txt")
    if error.exists():
        text = error.read_text(errors="replace")
        log = next((line[5:] for line in text.splitlines() if line.startswith("log: ")), "")
        return UnitState("failed", text.splitlines()[0] if text else f"(empty error file {error})", log or str(error))
    if result == "damaged":
        return UnitState("pending", f"damaged result file, will rerun: {detail}")
    if result == "other-config":
        return UnitState("pending", "result from another config; will rerun")
    return UnitState("pending")


def unit_states(plan) -> list[tuple[Unit, UnitState]]:
    """Each unit of ``plan`` (a Plan, or anything with ``run_dir`` and ``units``) with its state."""
    store = ResultStore(plan.run_dir)
    return [(unit, unit_state(store, unit)) for unit in plan.units]


@dataclass
class PlannedUnits:
    """A run directory's units as its manifest records them: enough for status, no plugin loaded."""
    run_dir: Path
    units: list[Unit]

    @classmethod
    def read(cls, run_dir: Path) -> "PlannedUnits":
        return cls(Path(run_dir), read_manifest(run_dir))


FINISHED_COLUMNS = ["task", "arch", "wall_time_s"]


def finished_units(store: ResultStore) -> pd.DataFrame:
    """One row per finished unit, indexed by unit id: its task, architecture and wall time (the
    ``wall_time_s`` its rows carry); empty where the run has none or its results cannot be read."""
    empty = pd.DataFrame(columns=FINISHED_COLUMNS)
    if not store.units_dir.is_dir():
        return empty
    try:
        rows = store.load(damaged="skip")
    except Exception:  # status and --dry-run show what they can, whatever the results' state
        return empty
    if rows.empty or "wall_time_s" not in rows or "unit_id" not in rows:
        return empty
    for column in FINISHED_COLUMNS:
        if column not in rows:
            rows[column] = ""
    return rows.dropna(subset=["wall_time_s"]).groupby("unit_id").first()[FINISHED_COLUMNS]


def unit_durations(store: ResultStore) -> dict[str, float]:
    """Wall time of every finished unit, by unit id."""
    times = finished_units(store)["wall_time_s"]
    return {str(k): float(v) for k, v in times.items()}


def time_left(states: list[tuple[Unit, UnitState]], durations: dict[str, float],
              now: float | None = None) -> tuple[float, int]:
    """Seconds of work left if the units ran one after the other, each unfinished unit costing the
    mean wall time of the finished units of its task (less what a running unit has already spent),
    and how many unfinished units have no finished unit of their task to go by (left out)."""
    now = time.time() if now is None else now
    by_task: dict[str, list[float]] = {}
    for unit, state in states:
        if state.state == "done" and unit.unit_id in durations:
            by_task.setdefault(unit.task, []).append(durations[unit.unit_id])
    seconds, unknown = 0.0, 0
    for unit, state in states:
        if state.state in ("done", "failed"):
            continue
        if unit.task not in by_task:
            unknown += 1
            continue
        mean = sum(by_task[unit.task]) / len(by_task[unit.task])
        spent = now - state.started if state.state == "running" and state.started else 0.0
        seconds += max(mean - spent, 0.0)
    return seconds, unknown


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under 1 min"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 120 else f"about {minutes / 60:.1f} h"


def print_status(plan) -> int:
    states = unit_states(plan)
    counts = {name: sum(s.state == name for _, s in states) for name in ("done", "running", "failed", "pending")}
    print(f"{plan.run_dir}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    if counts["running"] or counts["pending"]:
        seconds, unknown = time_left(states, unit_durations(ResultStore(plan.run_dir)))
        known = counts["running"] + counts["pending"] - unknown
        if known:
            print(f"time left: {_duration(seconds)} for {known} unit(s) run one after the other (the mean "
                  f"wall time of the finished units of each task)"
                  + (f"; {unknown} unit(s) of tasks with no finished unit yet not counted" if unknown else ""))
    width = max((len(u.unit_id) for u, _ in states), default=10)
    for unit, state in states:
        line = f"  {state.state:8s} {unit.unit_id:{width}s}"
        if state.state != "done":
            line += f"  {state.detail}"
        if state.state == "running" and state.started:
            line += f", for {_duration(max(time.time() - state.started, 0.0))}"
        if state.log and state.state in ("failed", "running"):
            line += f"  [log: {state.log}]"
        print(line)
    if counts["failed"]:
        print(f"retry the failed units alone with: ssl-bench resume {plan.run_dir} --only-failed")
    return 1 if counts["failed"] else 0
