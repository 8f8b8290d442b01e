"""The run machinery, one module per stage, imported in this order (no cycles):

- ``plan``: a suite as units (model x task x unit), written into and rebuilt from the run directory;
- ``units``: running units in this process (``UnitRunner``), with provenance and failure records;
- ``executors``: where units run (in this process, submitit's debug executor, SLURM job arrays);
- ``driver``: the checks before any work, the run lock, then an executor (``run_plan``);
- ``status``: what ``ssl-bench status`` shows of a run directory.
"""

from .driver import check_devices, estimate_writes, run_plan, run_suite
from .executors import UnitJob, execute
from .plan import Plan, Unit, build_tasks, load_plan, plan_run, unit_trains, write_plan
from .status import print_status, unit_states
from .units import RunSummary, UnitRunner, pending_units

__all__ = ["Plan", "RunSummary", "Unit", "UnitJob", "UnitRunner", "build_tasks", "check_devices",
           "estimate_writes", "execute", "load_plan", "pending_units", "plan_run", "print_status",
           "run_plan", "run_suite", "unit_trains", "unit_states", "write_plan"]
