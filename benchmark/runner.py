"""Expand a suite into units (model x task x unit) and run the ones not done yet.

Units run in this process in order (the local executor). A unit whose result file exists for
the same config is skipped, so rerunning ``ssl-bench run`` resumes an interrupted suite. A failing
unit is recorded next to the results and does not stop the others.
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .config import Suite, config_hash
from .engine import RunContext
from .errors import BenchmarkError, ConfigError
from .features import FeatureCache
from .models.backbone import get_architecture
from .provenance import measure, resolve_device, static_provenance
from .registry import PRETRAINERS, TASKS, closest
from .results import ResultStore, atomic_write_text

MIN_FREE_BYTES = 512 * 2**20


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
    """Fail before any work when results could not be saved (unwritable dir, full disk)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BenchmarkError(f"{what} {directory} is not writable ({exc.strerror}); choose another with --out/--cache") from exc
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise BenchmarkError(f"{what} {directory} has only {free / 2**20:.0f} MiB free; at least "
                             f"{MIN_FREE_BYTES // 2**20} MiB are needed. Free space or use --out/--cache elsewhere")


def run_suite(
    suite: Suite,
    run_dir: Path,
    cache_dir: Path,
    *,
    data_root: Path | None = None,
    models: list[str] | None = None,
    tasks: list[str] | None = None,
    device: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> RunSummary:
    settings = suite.settings
    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    data_root = Path(data_root or settings["data_root"]).expanduser()
    model_specs = {m.name: m for m in suite.models}
    task_specs = {t.name: t for t in suite.tasks}
    model_names = select(models, list(model_specs), "model")
    task_names = select(tasks, list(task_specs), "task")

    check_writable(run_dir, "run directory")
    check_writable(cache_dir, "feature cache")
    torch_device = resolve_device(device or settings["device"])
    ctx = RunContext(run_dir=run_dir, data_root=data_root, cache=FeatureCache(cache_dir), device=torch_device,
                     seed=settings["seed"], batch_size=settings["batch_size"], num_workers=settings["num_workers"])
    task_objects = {name: TASKS.get(task_specs[name].task)(**task_specs[name].options) for name in task_names}
    for task in task_objects.values():
        task.check_data(ctx)
    atomic_write_text(run_dir / "suite.yaml", yaml.safe_dump(_resolved(suite, data_root), sort_keys=False))

    store = ResultStore(run_dir)
    summary = RunSummary(run_dir)
    for model_name in model_names:
        spec = model_specs[model_name]
        arch = get_architecture(spec.options["arch"])
        pending = []
        for task_name in task_names:
            for unit in task_objects[task_name].units(arch):
                unit_id = f"{model_name}/{task_name}/{unit}"
                unit_hash = config_hash({"model": [spec.pretrainer, spec.options], "task": task_specs[task_name].task,
                                         "options": task_specs[task_name].options, "unit": unit, "seed": ctx.seed})
                if not force and store.is_done(unit_id, unit_hash):
                    summary.skipped.append(unit_id)
                else:
                    pending.append((task_name, unit, unit_id, unit_hash))
        if not pending:
            continue
        try:  # built only when some unit needs it: a supervised model trains here
            loaded = PRETRAINERS.get(spec.pretrainer)(**spec.options).build(ctx, model_name)
        except Exception as exc:
            for _, _, unit_id, _ in pending:
                _record_failure(store, summary, unit_id, exc, log)
            continue
        for task_name, unit, unit_id, unit_hash in pending:
            log(f"[ssl-bench] {unit_id}")
            try:
                with measure(torch_device) as stats:
                    rows = task_objects[task_name].run(ctx, loaded, unit)
            except Exception as exc:
                _record_failure(store, summary, unit_id, exc, log)
                continue
            provenance = {"model": model_name, "task": task_name, "pretrainer": spec.pretrainer,
                          "arch": arch.name, "config_hash": unit_hash, "seed": ctx.seed,
                          "weights_sha256": loaded.weights[:16], **stats, **static_provenance(torch_device)}
            store.write_unit(unit_id, [{**row, **provenance} for row in rows])
            summary.done.append(unit_id)
    return summary


def _record_failure(store: ResultStore, summary: RunSummary, unit_id: str, exc: Exception, log) -> None:
    message = f"{type(exc).__name__}: {exc}"
    store.write_error(unit_id, message + "\n\n" + traceback.format_exc())
    summary.failed[unit_id] = message
    log(f"[ssl-bench] FAILED {unit_id}: {message}")


def _resolved(suite: Suite, data_root: Path) -> dict:
    return {
        "suite": suite.name, "source": suite.source, "data_root": str(data_root), **suite.settings,
        "models": {m.name: {"pretrainer": m.pretrainer, **m.options} for m in suite.models},
        "tasks": {t.name: {"task": t.task, **t.options} for t in suite.tasks},
    }
