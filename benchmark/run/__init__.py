"""The run machinery, one module per stage, imported in this order (no cycles):

- ``plan``: a suite as units (model x task x unit), written into and rebuilt from the run directory;
- ``units``: running units in this process (``UnitRunner``), with provenance and failure records;
- ``executors``: where units run (in this process, submitit's debug executor, SLURM job arrays);
- ``driver``: the checks before any work, the run lock, then an executor (``run_plan``);
- ``status``: what ``ssl-bench status`` shows of a run directory;
- ``manifest``: the planned units as the run directory records them (read without any plugin).
"""

import importlib

# name -> module: loaded on first use, so that `ssl-bench status` (status, manifest) does not import
# the driver, the plugins and torch before its first line
_EXPORTS = {
    "check_devices": "driver", "estimate_writes": "driver", "run_plan": "driver", "run_suite": "driver",
    "UnitJob": "executors", "execute": "executors",
    "Plan": "plan", "build_tasks": "plan", "load_plan": "plan", "plan_run": "plan", "unit_trains": "plan",
    "write_plan": "plan", "Unit": "manifest", "read_manifest": "manifest",
    "PlannedUnits": "status", "print_status": "status", "unit_states": "status",
    "RunSummary": "units", "UnitRunner": "units", "pending_units": "units",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
