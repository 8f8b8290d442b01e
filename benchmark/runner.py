"""A suite as units of work (model x task x unit), planned once and run by an executor.

The plan is written into the run directory (a copy of the config, the invocation and a manifest
of units), so the run can be resumed, inspected (``ssl-bench status``) and executed by jobs in
other processes or on other machines. A unit whose result file exists for the same config is
skipped; a failing unit is recorded next to the results and does not stop the others.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import yaml

from .config import Suite, config_hash, load_suite
from .devices import check_device
from .diskspace import (FIXED_RUN_BYTES, RESULT_BYTES_PER_UNIT, Estimate, check_space, feature_bytes,
                        training_checkpoint_bytes)
from .engine import LoadedModel, RunContext, Task
from .errors import BenchmarkError, ConfigError
from .features import FeatureCache
from .models.backbone import get_architecture
from .options import Device, declared, refuse
from .paths import remove_stale_temporaries
from .provenance import measure, resolve_device, static_provenance
from .registry import PRETRAINERS, TASKS, closest
from .results import ResultStore, atomic_write_text
from .runlock import RunLock, command_line
from .training import replicate_seed


@dataclass(frozen=True)
class Unit:
    unit_id: str
    model: str
    task: str
    unit: str
    config_hash: str
    needs_gpu: bool


@dataclass
class Plan:
    suite: Suite
    run_dir: Path
    cache_dir: Path
    data_root: Path
    device: str
    units: list[Unit]
    replicate: int = 0  # 0: the suite as configured; N > 0: every SGD training reseeded (see unit_trains)
    device_source: str = "--device"  # where the device request came from, for error messages

    def invocation(self) -> dict:
        return {"suite": self.suite.name, "cache_dir": str(self.cache_dir), "data_root": str(self.data_root),
                "device": self.device, "models": sorted({u.model for u in self.units}),
                "tasks": sorted({u.task for u in self.units}), "replicate": self.replicate}


@dataclass
class RunSummary:
    run_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def select(names: list[str] | None, available: list[str], what: str) -> list[str]:
    if not names:
        return available
    for name in names:
        if name not in available:
            raise ConfigError(f"no {what} '{name}' in this suite.{closest(name, available)} "
                              f"Available: {', '.join(available)}")
    return [name for name in available if name in names]


def check_writable(directory: Path, what: str) -> None:
    """Fail before any work when results could not be saved (unwritable dir)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BenchmarkError(f"{what} {directory} is not writable ({exc.strerror}); choose another with --out/--cache") from exc


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


def build_tasks(suite: Suite) -> dict[str, Task]:
    tasks = {}
    for spec in suite.tasks:
        tasks[spec.name] = TASKS.get(spec.task)(**spec.options)
        tasks[spec.name].instance_name = spec.name
    return tasks


def unit_trains(suite: Suite, model: str, task: str) -> bool:
    """Whether a unit's numbers come downstream of SGD training (its model's or its own): such
    numbers move with the floating-point rounding of the processor, and with a replicate's seeds.
    The others follow from fixed inputs (seeded initialisation, files, seeded sampling, solvers run
    to a tolerance) and are checked tightly."""
    model_spec = next(m for m in suite.models if m.name == model)
    task_spec = next(t for t in suite.tasks if t.name == task)
    return PRETRAINERS.get(model_spec.pretrainer).trains or TASKS.get(task_spec.task).trains


def plan_run(suite: Suite, run_dir: Path, cache_dir: Path, *, data_root: Path | None = None,
             models: list[str] | None = None, tasks: list[str] | None = None, device: str | None = None,
             replicate: int = 0, device_source: str | None = None) -> Plan:
    """The suite's units. ``replicate`` > 0 keeps only the units that train (the others would give
    the replicate-0 numbers again) and reseeds their training, so that replicates measure how much
    each trained number moves with its seeds."""
    if not isinstance(replicate, int) or isinstance(replicate, bool) or replicate < 0:
        raise ConfigError(f"replicate must be an integer >= 0, got {replicate!r}")
    model_specs = {m.name: m for m in suite.models}
    task_specs = {t.name: t for t in suite.tasks}
    model_names = select(models, list(model_specs), "model")
    task_names = select(tasks, list(task_specs), "task")
    task_objects = build_tasks(suite)
    units = []
    for model_name in model_names:
        spec = model_specs[model_name]
        arch = get_architecture(spec.options["arch"])
        for task_name in task_names:
            task = task_objects[task_name]
            if task_specs[task_name].models is not None and model_name not in task_specs[task_name].models:
                continue
            if replicate and not unit_trains(suite, model_name, task_name):
                continue
            for unit in task.units(arch):
                identity = {"model": [spec.pretrainer, spec.options], "task": task_specs[task_name].task,
                            "options": task_specs[task_name].options, "unit": unit, "seed": suite.settings["seed"]}
                digest = config_hash({**identity, "replicate": replicate} if replicate else identity)
                units.append(Unit(f"{model_name}/{task_name}/{unit}", model_name, task_name, unit, digest,
                                  needs_gpu=task.needs_gpu))
    source = device_source or ("--device" if device else f"{suite.source}: suites.{suite.name}.device")
    return Plan(suite, Path(run_dir), Path(cache_dir), Path(data_root or suite.settings["data_root"]).expanduser(),
                device or suite.settings["device"], units, replicate, source)


def write_plan(plan: Plan) -> None:
    """Everything a job (or a later resume) needs to rebuild this plan, inside the run directory."""
    atomic_write_text(plan.run_dir / "config.yaml", Path(plan.suite.source).read_text())
    atomic_write_text(plan.run_dir / "invocation.json", json.dumps(plan.invocation(), indent=1))
    atomic_write_text(plan.run_dir / "manifest.json", json.dumps([asdict(u) for u in plan.units], indent=1))
    atomic_write_text(plan.run_dir / "suite.yaml", yaml.safe_dump(_resolved(plan), sort_keys=False))


def load_plan(run_dir: Path, *, only: list[str] | None = None) -> Plan:
    """The plan of an existing run directory (for resume, status and jobs)."""
    run_dir = Path(run_dir)
    invocation_path = run_dir / "invocation.json"
    if not invocation_path.is_file():
        raise BenchmarkError(f"{run_dir} is not a run directory (no invocation.json); pass the folder that "
                             f"'ssl-bench run' created, e.g. runs/goyal2019-mini")
    try:
        invocation = json.loads(invocation_path.read_text())
        missing = [key for key in ("suite", "cache_dir", "data_root", "models", "tasks", "device")
                   if key not in invocation]
        problem = f"keys {missing} are missing" if missing else ""
    except (ValueError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise BenchmarkError(f"{invocation_path} is damaged ({problem}); 'ssl-bench run' writes it: run the "
                             f"suite again with the same options (finished units are kept)")
    config = run_dir / "config.yaml"
    try:
        suite = load_suite(invocation["suite"], config)
        plan = plan_run(suite, run_dir, Path(invocation["cache_dir"]), data_root=Path(invocation["data_root"]),
                        models=invocation["models"], tasks=invocation["tasks"], device=invocation["device"],
                        replicate=invocation.get("replicate", 0), device_source=f"{invocation_path} (device)")
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{config} is damaged (not UTF-8 text: {exc.reason} at byte {exc.start}); it is "
                             f"the copy of the suite file this run was started with: restore it, or run the "
                             f"suite again with the same options") from None
    except ConfigError as exc:
        if str(config) in str(exc):
            raise
        raise ConfigError(f"{config} (this run's copy of its suite file) does not match {invocation_path}: "
                          f"{exc}") from None
    if only is not None:
        plan.units = [u for u in plan.units if u.unit_id in set(only)]
    return plan


class UnitRunner:
    """Runs units in this process; each model is built (trained, loaded) at most once."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = print, log_path: str = ""):
        settings = plan.suite.settings
        self.log_path = log_path  # where this process's output goes (a job's log file)
        self.plan = plan
        self.log = log
        self.store = ResultStore(plan.run_dir)
        self.device = resolve_device(plan.device)
        self.ctx = RunContext(run_dir=plan.run_dir, data_root=plan.data_root, cache=FeatureCache(plan.cache_dir),
                              device=self.device, seed=settings["seed"], batch_size=settings["batch_size"],
                              num_workers=settings["num_workers"])
        self.tasks = build_tasks(plan.suite)
        self.specs = {m.name: m for m in plan.suite.models}
        self.models: dict[str, LoadedModel | Exception] = {}

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            spec = self.specs[name]
            try:  # a supervised model trains here, once
                self.models[name] = PRETRAINERS.get(spec.pretrainer)(**self.model_options(name)).build(self.ctx, name)
            except Exception as exc:
                self.models[name] = exc
        if isinstance(self.models[name], Exception):
            raise self.models[name]
        return self.models[name]

    def model_options(self, name: str) -> dict:
        """The model's options; in a replicate run, a training pretrainer gets its replicate's seed
        (its checkpoint is keyed by its options, so each replicate trains its own)."""
        spec = self.specs[name]
        if not self.plan.replicate or not PRETRAINERS.get(spec.pretrainer).trains:
            return spec.options
        if "seed" not in spec.options:
            raise ConfigError(f"model '{name}': pretrainer '{spec.pretrainer}' trains but has no 'seed' option, "
                              f"so a replicate run cannot reseed it")
        return {**spec.options, "seed": replicate_seed(spec.options["seed"], self.plan.replicate)}

    def task_context(self, task_name: str) -> RunContext:
        """The run context a task's units see; in a replicate run, a training task gets its seed."""
        if self.plan.replicate and self.tasks[task_name].trains:
            return replace(self.ctx, seed=replicate_seed(self.ctx.seed, self.plan.replicate))
        return self.ctx

    def prepare(self, model_name: str, units: list[Unit]) -> None:
        """Build the model and extract the features its units need, once (a job of its own)."""
        model = self.model(model_name)
        for task_name in dict.fromkeys(u.task for u in units):
            self.tasks[task_name].prepare(self.task_context(task_name), model)

    def run(self, unit: Unit, summary: RunSummary) -> None:
        self.log(f"[ssl-bench] {unit.unit_id}")
        marker = self.store.unit_path(unit.unit_id).with_suffix(".running")
        try:
            atomic_write_text(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "job_id": os.environ.get("SLURM_JOB_ID", ""),
                                                  "log": self.log_path, "started": time.time()}))
            model = self.model(unit.model)
            ctx = self.task_context(unit.task)
            with measure(self.device) as stats:
                rows = self.tasks[unit.task].run(ctx, model, unit.unit)
            spec = self.specs[unit.model]
            provenance = {"model": unit.model, "task": unit.task, "pretrainer": spec.pretrainer,
                          "arch": model.arch.name, "config_hash": unit.config_hash, "seed": ctx.seed,
                          "replicate": self.plan.replicate,
                          "determinism": "trained" if unit_trains(self.plan.suite, unit.model, unit.task) else "exact",
                          "weights_sha256": model.weights[:16], **stats, **static_provenance(self.device),
                          **family_provenance(model)}
            # a task may mark rows computed without its training (evaluator checks) as exact itself;
            # a full disk here fails this unit only, and its earlier result file, if any, stays whole
            self.store.write_unit(unit.unit_id, [{**row, **provenance,
                                                  "determinism": row.get("determinism", provenance["determinism"])}
                                                 for row in rows])
        except Exception as exc:
            self._fail(unit, summary, exc)
            return
        finally:
            marker.unlink(missing_ok=True)
        summary.done.append(unit.unit_id)

    def _fail(self, unit: Unit, summary: RunSummary, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        where = f"log: {self.log_path}\n" if self.log_path else ""
        try:
            self.store.write_error(unit.unit_id, message + "\n" + where + "\n" + traceback.format_exc())
        except (OSError, BenchmarkError) as error_exc:  # e.g. the disk is still full
            message += f" (its error file could not be written either: {type(error_exc).__name__})"
        summary.failed[unit.unit_id] = message
        self.log(f"[ssl-bench] FAILED {unit.unit_id}: {message}")


# What a family of architectures records about the input (timm/<model>: the timm model, its
# pretrained_cfg statistics and the statistics the weights were fed with); absent for the others,
# whose rows stay as they were
FAMILY_KEYS = ("timm_model", "input_size", "pretrained_cfg_mean", "pretrained_cfg_std", "input_mean", "input_std")


def family_provenance(model: LoadedModel) -> dict:
    return {key: (" ".join(map(str, value)) if isinstance(value, (list, tuple)) else value)
            for key, value in model.info.items() if key in FAMILY_KEYS}


def pending_units(plan: Plan, force: bool = False,
                  log: Callable[[str], None] = print) -> tuple[list[Unit], list[str]]:
    store = ResultStore(plan.run_dir)
    pending, skipped = [], []
    for unit in plan.units:
        store.adopt_legacy(unit.unit_id)
        state, detail = store.unit_state(unit.unit_id, unit.config_hash)
        if state == "damaged":
            log(f"[ssl-bench] {detail}; {unit.unit_id} will run again")
        if not force and state == "done":
            skipped.append(unit.unit_id)
        else:
            pending.append(unit)
    return pending, skipped


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


def run_plan(plan: Plan, *, force: bool = False, executor: dict | None = None,
             log: Callable[[str], None] = print) -> RunSummary:
    check_devices(plan, (executor or {}).get("name", "local"))
    check_writable(plan.run_dir, "run directory")
    check_writable(plan.cache_dir, "feature cache")
    lock = RunLock(plan.run_dir, command_line()).acquire(log)
    try:
        for root in (plan.run_dir, plan.cache_dir):
            removed = remove_stale_temporaries(root)
            if removed:
                log(f"[ssl-bench] removed {len(removed)} temporary file(s) of killed processes under {root}")
        ctx_probe = RunContext(run_dir=plan.run_dir, data_root=plan.data_root, cache=FeatureCache(plan.cache_dir),
                               device=resolve_device(plan.device))
        tasks = build_tasks(plan.suite)
        for task_name in dict.fromkeys(u.task for u in plan.units):
            tasks[task_name].check_data(ctx_probe)
        pending, skipped = pending_units(plan, force, log)
        if pending:  # a finished run can always be reported again, even on a full disk
            check_space(estimate_writes(plan, pending, tasks, ctx_probe), plan.run_dir, plan.cache_dir)
        write_plan(plan)
        summary = RunSummary(plan.run_dir, skipped=skipped)
        if not pending:
            return summary
        from .scheduler import execute

        return execute(plan, pending, summary, executor or {"name": "local"}, log)
    finally:
        lock.release()


def run_suite(suite: Suite, run_dir: Path, cache_dir: Path, *, data_root: Path | None = None,
              models: list[str] | None = None, tasks: list[str] | None = None, device: str | None = None,
              force: bool = False, executor: dict | None = None, log: Callable[[str], None] = print,
              replicate: int = 0) -> RunSummary:
    plan = plan_run(suite, run_dir, cache_dir, data_root=data_root, models=models, tasks=tasks, device=device,
                    replicate=replicate)
    return run_plan(plan, force=force, executor=executor, log=log)


def _resolved(plan: Plan) -> dict:
    suite = plan.suite
    return {
        "suite": suite.name, "source": suite.source, "data_root": str(plan.data_root), **suite.settings,
        "models": {m.name: {"pretrainer": m.pretrainer, **m.options} for m in suite.models},
        "tasks": {t.name: {"task": t.task, **t.options} for t in suite.tasks},
    }
