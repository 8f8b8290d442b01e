"""``ssl-bench status``: which units of a run are done, running, failed or pending."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from ..paths import process_alive
from ..results import ResultStore
from .plan import Plan, Unit


@dataclass
class UnitState:
    state: str  # done | running | failed | pending
    detail: str = ""
    log: str = ""


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
            where = f"pid {info.get('pid')} on {info.get('host')}" + (f", job {info['job_id']}" if info.get("job_id") else "")
            return UnitState("running", where, info.get("log", ""))
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
