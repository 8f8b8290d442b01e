"""``run_plan``: the checks made before any work (devices, writable folders, data, disk space),
the run lock, then the plan's pending units handed to an executor."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from ..config import Suite
from ..devices import check_device
from ..diskspace import (FIXED_RUN_BYTES, RESULT_BYTES_PER_UNIT, Estimate, check_space, feature_bytes,
                         training_checkpoint_bytes)
from ..plugin_api import RunContext, Task
from ..errors import BenchmarkError
from ..features import FeatureCache
from ..models.backbone import get_architecture
from ..options import Device, declared, refuse
from ..paths import remove_stale_temporaries
from ..provenance import resolve_device
from ..registry import PRETRAINERS, TASKS
from ..runlock import RunLock, command_line
from .executors import execute
from .plan import Plan, Unit, plan_run, write_plan
from .units import RunSummary, pending_units

logger = logging.getLogger(__name__)


def _existing_ancestor(directory: Path) -> Path:
    """``directory`` itself when it exists, else its nearest existing parent (where it would be made)."""
    path = Path(os.path.abspath(directory))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(directory: Path, what: str) -> None:
    """Fail before any work when results could not be saved (unwritable dir). Writes nothing that
    stays: the probe goes into ``directory``, or, while it does not exist yet, into the folder it
    would be made in."""
    where = _existing_ancestor(directory)
    if not where.is_dir():
        raise BenchmarkError(f"{what} {directory} is not writable: {where} is a file, not a folder; "
                             f"choose another with --out/--cache")
    try:
        probe = where / f".write-probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BenchmarkError(f"{what} {directory} is not writable ({exc.strerror} in {where}); "
                             f"choose another with --out/--cache") from exc


def _missing_folders(*directories: Path) -> list[Path]:
    """The topmost folder of each of ``directories`` that does not exist yet (what a run makes)."""
    made = []
    for directory in directories:
        path = Path(os.path.abspath(directory))
        top = None
        while not path.exists() and path != path.parent:
            top, path = path, path.parent
        if top is not None and top not in made:
            made.append(top)
    return made


def _undo(lock: "RunLock", lock_existed: bool, made: list[Path]) -> None:
    """Remove what a refused run wrote before any unit ran: its lock file and the folders it made
    (only while they hold nothing else)."""
    lock.release()
    if not lock_existed:
        lock.path.unlink(missing_ok=True)
    for top in made:
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: someone else's files, kept


def estimate_writes(plan: Plan, pending: list[Unit], tasks: dict[str, Task], ctx: RunContext) -> Estimate:
    """An upper bound of what running ``pending`` writes: the features of every model with pending
    units (all the entries its tasks read, shared entries once), checkpoints and results."""
    specs = {m.name: m for m in plan.suite.models}
    estimate = Estimate(run_bytes=FIXED_RUN_BYTES + RESULT_BYTES_PER_UNIT * len(pending))
    needs, arch_of = {}, {}
    checkpoints, training_state = 0, 0
    for model in dict.fromkeys(u.model for u in pending):
        spec = specs[model]
        arch = get_architecture(spec.options["arch"])
        arch_of[model] = arch.name
        kept = PRETRAINERS.get(spec.pretrainer)(**spec.options).checkpoint_bytes(arch)
        checkpoints += kept
        if kept:  # models train one after the other: one resumable training state at a time
            training_state = max(training_state, training_checkpoint_bytes(arch.name))
        for task_name in dict.fromkeys(u.task for u in pending if u.model == model):
            for need in tasks[task_name].feature_needs(ctx, arch):
                needs[(model, need.dataset, need.split, need.layer, need.input_size)] = need
        checkpoints += sum(tasks[u.task].checkpoint_bytes(arch) for u in pending if u.model == model)
    checkpoints += training_state
    estimate.cache_bytes, estimate.detail = feature_bytes(needs, arch_of)
    estimate.run_bytes += checkpoints
    estimate.detail.append(f"checkpoints {checkpoints / 2**20:,.1f} MiB, results and reports "
                           f"{(estimate.run_bytes - checkpoints) / 2**20:,.1f} MiB")
    return estimate


def check_devices(plan: Plan, executor: str) -> None:
    """Every device the plan asks for (the run's, and task options such as ``svm_device``) is one
    this machine has, before any work. SLURM units run on other machines: there only the form of
    the request is checked here."""
    requests = [(plan.device, plan.device_source)]
    where = f"{plan.suite.source}: suites.{plan.suite.name}.tasks"
    for spec in plan.suite.tasks:
        if spec.name in {u.task for u in plan.units}:
            requests += [(spec.options[key], f"{where}.{spec.name}.{key}")
                         for key, option in declared(TASKS.get(spec.task).options).items()
                         if isinstance(option, Device) and spec.options.get(key) is not None]
    for name, source in requests:
        if executor == "slurm":
            found = Device().check(name, source)
            if found:
                raise refuse(*found)
        else:
            check_device(name, source)


def preflight(plan: Plan, executor: str) -> RunContext:
    """Every check that needs neither the lock nor a folder (devices, writable places, the data of
    every task); it writes nothing, so a refusal here leaves the output tree as it was."""
    check_devices(plan, executor)
    check_writable(plan.run_dir, "run directory")
    check_writable(plan.cache_dir, "feature cache")
    ctx_probe = RunContext(run_dir=plan.run_dir, data_root=plan.data_root, cache=FeatureCache(plan.cache_dir),
                           device=resolve_device(plan.device))
    for task_name in dict.fromkeys(u.task for u in plan.units):
        plan.tasks[task_name].check_data(ctx_probe)
    specs = {spec.name: spec for spec in plan.suite.models}
    for model_name in dict.fromkeys(u.model for u in plan.units):  # checkpoints exist and fit, once
        spec = specs[model_name]
        PRETRAINERS.get(spec.pretrainer)(**spec.options).check_inputs(ctx_probe, model_name)
    return ctx_probe


def run_plan(plan: Plan, *, force: bool = False, executor: dict | None = None,
             log: Callable[[str], None] = logger.info, after_unit: Callable[[Unit], None] | None = None) -> RunSummary:
    """Check, lock, then run the plan's pending units; ``after_unit`` is called as each one ends
    (e.g. to refresh the leaderboard while a long run works)."""
    ctx_probe = preflight(plan, (executor or {}).get("name", "local"))
    made = _missing_folders(plan.run_dir, plan.cache_dir)
    lock = RunLock(plan.run_dir, command_line())
    lock_existed = lock.path.exists()
    lock.acquire(log)
    try:
        plan.cache_dir.mkdir(parents=True, exist_ok=True)
        for root in (plan.run_dir, plan.cache_dir):
            removed = remove_stale_temporaries(root)
            if removed:
                log(f"[ssl-bench] removed {len(removed)} temporary file(s) of killed processes under {root}")
        pending, skipped = pending_units(plan, force, log)
        if pending:  # a finished run can always be reported again, even on a full disk
            check_space(estimate_writes(plan, pending, plan.tasks, ctx_probe), plan.run_dir, plan.cache_dir)
    except BaseException:
        _undo(lock, lock_existed, made)
        raise
    try:
        write_plan(plan)
        summary = RunSummary(plan.run_dir, skipped=skipped)
        if not pending:
            return summary
        return execute(plan, pending, summary, executor or {"name": "local"}, log, after_unit)
    finally:
        lock.release()


def run_suite(suite: Suite, run_dir: Path, cache_dir: Path, *, data_root: Path | None = None,
              models: list[str] | None = None, tasks: list[str] | None = None, device: str | None = None,
              force: bool = False, executor: dict | None = None, log: Callable[[str], None] = logger.info,
              replicate: int = 0, after_unit: Callable[[Unit], None] | None = None) -> RunSummary:
    plan = plan_run(suite, run_dir, cache_dir, data_root=data_root, models=models, tasks=tasks, device=device,
                    replicate=replicate)
    return run_plan(plan, force=force, executor=executor, log=log, after_unit=after_unit)
