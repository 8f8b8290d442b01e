"""``ssl-bench status``: which units of a run are done, running, failed or pending."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from .results import ResultStore
from .runner import Plan, Unit


@dataclass
class UnitState:
    state: str  # done | running | failed | pending
    detail: str = ""
    log: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def unit_state(store: ResultStore, unit: Unit) -> UnitState:
    path = store.unit_path(unit.unit_id)
    if store.is_done(unit.unit_id, unit.config_hash):
        return UnitState("done", str(path))
    marker = path.with_suffix(".running")
    if marker.exists():
        info = json.loads(marker.read_text() or "{}")
        here = info.get("host") == socket.gethostname()
        if not here or _alive(int(info.get("pid", -1))):
            where = f"pid {info.get('pid')} on {info.get('host')}" + (f", job {info['job_id']}" if info.get("job_id") else "")
            return UnitState("running", where, info.get("log", ""))
        # the process that wrote the marker is gone: the unit was interrupted and will rerun
    error = path.with_suffix(".error.txt")
    if error.exists():
        text = error.read_text()
        log = next((line[5:] for line in text.splitlines() if line.startswith("log: ")), "")
        return UnitState("failed", text.splitlines()[0] if text else "", log or str(error))
    if path.exists():
        return UnitState("pending", "result from another config; will rerun")
    return UnitState("pending")


def unit_states(plan: Plan) -> list[tuple[Unit, UnitState]]:
    store = ResultStore(plan.run_dir)
    return [(unit, unit_state(store, unit)) for unit in plan.units]


def print_status(plan: Plan) -> int:
    states = unit_states(plan)
    counts = {name: sum(s.state == name for _, s in states) for name in ("done", "running", "failed", "pending")}
    print(f"{plan.run_dir}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    width = max((len(u.unit_id) for u, _ in states), default=10)
    for unit, state in states:
        line = f"  {state.state:8s} {unit.unit_id:{width}s}"
        if state.state != "done":
            line += f"  {state.detail}"
        if state.log and state.state in ("failed", "running"):
            line += f"  [log: {state.log}]"
        print(line)
    if counts["failed"]:
        print(f"retry the failed units alone with: ssl-bench resume {plan.run_dir} --only-failed")
    return 1 if counts["failed"] else 0
