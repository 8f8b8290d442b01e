"""Executors: where the units of a plan run.

- ``local`` (default): in this process, one unit after the other.
- ``debug``: through submitit's debug executor (same process, submitit's code path).
- ``slurm``: submitit jobs. Per model, one GPU job builds the model (trains it if its pretrainer
  does) and extracts every feature its units need; the units follow as job arrays that depend on
  it (``afterok``): SVM units as CPU-only jobs, training units as GPU jobs. Jobs are
  checkpointable: on preemption or timeout submitit requeues them, and a requeued job skips the
  units already done and resumes training units from their own checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..config import EXECUTOR_OPTIONS, validate_options
from ..console_log import configure_console_logging
from ..results import ResultStore
from .plan import Plan, Unit, load_plan
from .units import RunSummary, UnitRunner

logger = logging.getLogger(__name__)


def executor_config(raw: dict | None, where: str = "executor") -> dict:
    return validate_options(raw or {}, EXECUTOR_OPTIONS, where)


def execute(plan: Plan, pending: list[Unit], summary: RunSummary, executor: dict,
            log: Callable[[str], None] = logger.info,
            after_unit: Callable[[Unit], None] | None = None) -> RunSummary:
    """Run ``pending``; ``after_unit`` is called in this process as each unit finishes (or fails)."""
    cfg = executor_config(executor, "executor")
    after_unit = after_unit or (lambda unit: None)
    if cfg["name"] == "local":
        runner = UnitRunner(plan, log)
        for unit in pending:
            runner.run(unit, summary)
            after_unit(unit)
        return summary
    return _execute_submitit(plan, pending, summary, cfg, log, after_unit)


class UnitJob:
    """The callable a submitit job runs: rebuilds the plan from the run directory, then prepares a
    model or runs units. Checkpointable, so preempted jobs are requeued with the same arguments."""

    def __call__(self, run_dir: str, unit_ids: list[str], prepare: bool = False) -> dict:
        configure_console_logging()  # the job's log gets the messages a local run shows
        plan = load_plan(Path(run_dir), only=unit_ids)
        runner = UnitRunner(plan, log_path=_job_log_path())
        summary = RunSummary(plan.run_dir)
        if prepare:
            for model in dict.fromkeys(u.model for u in plan.units):
                runner.prepare(model, [u for u in plan.units if u.model == model])
            return {"prepared": unit_ids}
        store = ResultStore(plan.run_dir)
        for unit in plan.units:
            if not store.is_done(unit.unit_id, unit.config_hash):
                runner.run(unit, summary)
        return {"done": summary.done, "failed": summary.failed}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(UnitJob(), *args, **kwargs)


def _job_log_path() -> str:
    import submitit

    try:
        return str(submitit.JobEnvironment().paths.stdout)
    except KeyError:  # the debug executor runs in the driver, without a job environment
        return ""


def _executor(plan: Plan, cfg: dict, *, gpu: bool):
    import submitit

    cluster = {"debug": "debug", "slurm": "slurm"}[cfg["name"]]
    executor = submitit.AutoExecutor(folder=plan.run_dir / "submitit" / "%j", cluster=cluster)
    params = {"timeout_min": cfg["timeout_min"], "mem_gb": cfg["mem_gb"],
              "cpus_per_task": cfg["cpus_per_task"] if gpu else cfg["cpus_per_svm_task"],
              "gpus_per_node": cfg["gpus_per_node"] if gpu else 0, "name": f"ssl-bench-{plan.suite.name}"}
    if cluster == "slurm":
        params.update({f"slurm_{key}": cfg[key] for key in ("partition", "constraint", "account") if cfg[key]})
        params["slurm_array_parallelism"] = cfg["array_parallelism"]
    executor.update_parameters(**params)
    return executor


def _execute_submitit(plan: Plan, pending: list[Unit], summary: RunSummary, cfg: dict, log,
                      after_unit: Callable[[Unit], None]) -> RunSummary:
    run_dir = str(plan.run_dir)
    jobs = []
    for model in dict.fromkeys(u.model for u in pending):
        units = [u for u in pending if u.model == model]
        prepare = _executor(plan, cfg, gpu=True).submit(UnitJob(), run_dir, [u.unit_id for u in units], True)
        log(f"[ssl-bench] submitted {model}: prepare job {prepare.job_id}")
        if cfg["name"] != "slurm":
            prepare.result()  # no dependency support outside SLURM: wait here
        for gpu in (False, True):
            group = [u for u in units if u.needs_gpu == gpu]
            if not group:
                continue
            executor = _executor(plan, cfg, gpu=gpu)
            if cfg["name"] == "slurm":
                executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{prepare.job_id}"})
            array = executor.map_array(UnitJob(), [run_dir] * len(group), [[u.unit_id] for u in group],
                                       [False] * len(group))
            log(f"[ssl-bench] submitted {len(group)} {'GPU' if gpu else 'CPU'} unit job(s) for {model}: "
                f"{', '.join(j.job_id for j in array)}")
            jobs += list(zip(group, array))
    store = ResultStore(plan.run_dir)
    for unit, job in jobs:
        try:
            job.result()
        except Exception as exc:  # the job died (killed, node failure, prepare failed): say where to look
            if not store.is_done(unit.unit_id, unit.config_hash):
                message = (f"job {job.job_id} did not finish: {type(exc).__name__}: {str(exc)[:300]} "
                           f"(logs: {plan.run_dir / 'submitit' / str(job.job_id)})")
                store.write_error(unit.unit_id, message)
                summary.failed[unit.unit_id] = message
                log(f"[ssl-bench] FAILED {unit.unit_id}: {message}")
                after_unit(unit)
                continue
        if store.is_done(unit.unit_id, unit.config_hash):
            summary.done.append(unit.unit_id)
        else:
            error = store.unit_path(unit.unit_id).with_suffix(".error.txt")
            lines = error.read_text(errors="replace").splitlines() if error.exists() else []
            summary.failed[unit.unit_id] = lines[0] if lines else f"no result (see {error})"
        after_unit(unit)
    return summary
