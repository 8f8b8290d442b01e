"""Running units in this process: each model is built once, each unit's rows are written with
their provenance, and a failing unit is recorded next to the results without stopping the others."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..cpus import configure_threads
from ..plugin_api import LoadedModel, RunContext
from ..errors import BenchmarkError, ConfigError
from ..features import FeatureCache
from ..provenance import measure, resolve_device, static_provenance
from ..registry import PRETRAINERS
from ..paths import atomic_write
from ..results import ResultStore
from ..training import replicate_seed
from .plan import Plan, Unit, unit_trains

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def checkpoint_provenance(model: LoadedModel) -> dict:
    """Which weights file a model was loaded from (path, sha256, key prefix), for its rows."""
    info = model.info
    found = {"checkpoint_path": info.get("checkpoint"), "checkpoint_sha256": info.get("checkpoint_sha256"),
             "checkpoint_prefix": info.get("checkpoint_prefix")}
    return {key: value for key, value in found.items() if value}


class UnitRunner:
    """Runs units in this process; each model is built (trained, loaded) at most once."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = logger.info, log_path: str = ""):
        settings = plan.suite.settings
        # before any work: a SLURM job or container may own fewer cores than the node
        configure_threads(log, fixed=settings["threads"])
        self.log_path = log_path  # where this process's output goes (a job's log file)
        self.plan = plan
        self.log = log
        self.store = ResultStore(plan.run_dir)
        self.device = resolve_device(plan.device)
        self.ctx = RunContext(run_dir=plan.run_dir, data_root=plan.data_root, cache=FeatureCache(plan.cache_dir),
                              device=self.device, seed=settings["seed"], batch_size=settings["batch_size"],
                              num_workers=settings["num_workers"])
        self.tasks = plan.tasks
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
            atomic_write(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
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
                          "weights_sha256": model.weights[:16], **checkpoint_provenance(model),
                          **spec.row_columns(), **stats,
                          **static_provenance(self.device), **family_provenance(model)}
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


def family_provenance(model: LoadedModel) -> dict:
    """The entries of the model's info its architecture family declares as row columns
    (``FamilyInfo.row_keys``), in the info's order; none for the families that declare none."""
    keys = model.row_keys()
    return {key: (" ".join(map(str, value)) if isinstance(value, (list, tuple)) else value)
            for key, value in model.info.items() if key in keys}


def pending_units(plan: Plan, force: bool = False,
                  log: Callable[[str], None] = logger.info) -> tuple[list[Unit], list[str]]:
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
