"""A suite as units of work (model x task x unit), planned once.

The plan is written into the run directory (a copy of the config, the invocation and a manifest
of units), so the run can be resumed, inspected (``ssl-bench status``) and executed by jobs in
other processes or on other machines, each rebuilding the same plan with ``load_plan``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..config import Suite, config_hash, load_suite
from ..plugin_api import Task
from ..errors import BenchmarkError, ConfigError
from ..models.backbone import get_architecture
from ..registry import PRETRAINERS, TASKS, closest
from ..paths import atomic_write
from .manifest import CONFIG_COPY, INVOCATION, MANIFEST, Unit, config_digest, read_invocation


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
    tasks: dict[str, Task] = field(default_factory=dict)  # the suite's task objects, built once per plan

    def invocation(self) -> dict:
        return {"suite": self.suite.name, "cache_dir": str(self.cache_dir), "data_root": str(self.data_root),
                "device": self.device, "models": sorted({u.model for u in self.units}),
                "tasks": sorted({u.task for u in self.units}), "replicate": self.replicate,
                "config_sha256": config_digest(Path(self.suite.source).read_text())}


def select(names: list[str] | None, available: list[str], what: str) -> list[str]:
    if not names:
        return available
    for name in names:
        if name not in available:
            raise ConfigError(f"no {what} '{name}' in this suite.{closest(name, available)} "
                              f"Available: {', '.join(available)}")
    return [name for name in available if name in names]


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
                device or suite.settings["device"], units, replicate, source, task_objects)


def write_plan(plan: Plan) -> None:
    """Everything a job (or a later resume) needs to rebuild this plan, inside the run directory."""
    atomic_write(plan.run_dir / CONFIG_COPY, Path(plan.suite.source).read_text())
    atomic_write(plan.run_dir / INVOCATION, json.dumps(plan.invocation(), indent=1))
    atomic_write(plan.run_dir / MANIFEST, json.dumps([asdict(u) for u in plan.units], indent=1))
    atomic_write(plan.run_dir / "suite.yaml", yaml.safe_dump(_resolved(plan), sort_keys=False))


def load_plan(run_dir: Path, *, only: list[str] | None = None) -> Plan:
    """The plan of an existing run directory (for resume, status and jobs)."""
    run_dir = Path(run_dir)
    invocation_path = run_dir / INVOCATION
    invocation = read_invocation(run_dir)
    config = run_dir / CONFIG_COPY
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


def _resolved(plan: Plan) -> dict:
    suite = plan.suite
    return {
        "suite": suite.name, "source": suite.source, "data_root": str(plan.data_root), **suite.settings,
        "models": {m.name: {"pretrainer": m.pretrainer, **m.options} for m in suite.models},
        "tasks": {t.name: {"task": t.task, **t.options} for t in suite.tasks},
    }
