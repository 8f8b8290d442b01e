"""benchmark.yaml: safe loading, duplicate-key detection and schema validation.

One config tree: ``suites.<name>`` holds run settings, ``models`` (name -> pretrainer options) and
``tasks`` (name -> task options). Task and pretrainer options are validated against the defaults
each plugin declares, so an unknown key anywhere is an error that names it and suggests the
closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import PRETRAINERS, TASKS, closest

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "benchmark.yaml"

SUITE_KEYS = {
    "description": "",
    "data_root": "data",
    "seed": 0,
    "device": "auto",
    "batch_size": 64,
    "num_workers": 2,
    "executor": None,  # local (default) | debug | slurm, with SLURM settings: see benchmark.scheduler
    "models": None,
    "tasks": None,
}


EXECUTOR_KEYS = {
    "name": "local",
    "partition": None,
    "gpus_per_node": 1,
    "cpus_per_task": 10,  # GPU jobs: model preparation, feature extraction, training tasks
    "cpus_per_svm_task": 10,  # CPU-only jobs: SVM units on cached features
    "mem_gb": 64,
    "timeout_min": 24 * 60,
    "constraint": None,
    "account": None,
    "array_parallelism": 64,
}
EXECUTORS = ("local", "debug", "slurm")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicated mapping keys instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{self.name}: duplicated key '{key}' at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key] + 1}); YAML would silently keep only the last one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping with a 'suites' key")
    return data


def validate_options(given: dict | None, allowed: dict, where: str) -> dict:
    """Defaults overlaid with ``given``; an unknown key is an error with a suggestion."""
    given = given or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(given).__name__}")
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{key}' in {where}.{closest(key, allowed)} "
                f"Valid keys: {', '.join(sorted(allowed))}"
            )
    merged = copy.deepcopy(allowed)
    merged.update(copy.deepcopy(given))
    return merged


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ModelSpec:
    name: str
    pretrainer: str
    options: dict


@dataclass
class TaskSpec:
    name: str
    task: str
    options: dict
    models: list[str] | None = None  # the suite models this task evaluates; None: all of them


@dataclass
class Suite:
    name: str
    settings: dict
    models: list[ModelSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    source: str = ""


def _mapping(value, where: str) -> dict:
    """``value`` (empty/None -> {}) when it is a mapping; otherwise an error naming where it is."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of names to options, got {type(value).__name__} {value!r}")
    return value


def _registered(registry, name: str, where: str):
    """``registry.get(name)`` whose error also says where in the config the name was found."""
    try:
        return registry.get(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_model(name: str, raw: dict, where: str) -> ModelSpec:
    if not isinstance(raw, dict) or "pretrainer" not in raw:
        # a misspelt 'pretrainer' is the likeliest cause: name that key and suggest the fix
        typos = difflib.get_close_matches("pretrainer", [str(k) for k in raw], n=1, cutoff=0.8) \
            if isinstance(raw, dict) else []
        typo = f" (unknown key '{typos[0]}'.{closest(typos[0], ['pretrainer'])})" if typos else ""
        raise ConfigError(f"{where} needs a 'pretrainer' key{typo} (one of: {', '.join(PRETRAINERS.names())})")
    raw = dict(raw)
    pretrainer = raw.pop("pretrainer")
    cls = _registered(PRETRAINERS, pretrainer, where)
    return ModelSpec(name, pretrainer, validate_options(raw, cls.options, where))


def parse_task(name: str, raw: dict | None, where: str) -> TaskSpec:
    raw = dict(_mapping(raw, where))
    task = raw.pop("task", name)
    models = raw.pop("models", None)
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ConfigError(f"{where}.models must be a list of model names of this suite, got {models!r}")
    cls = _registered(TASKS, task, where)
    return TaskSpec(name, task, validate_options(raw, cls.options, where), models)


def load_suite(name: str, path: str | Path = DEFAULT_CONFIG) -> Suite:
    data = load_yaml(path)
    for key in data:
        if key != "suites":
            raise ConfigError(f"unknown top-level key '{key}' in {path}.{closest(key, ['suites'])}")
    suites = _mapping(data.get("suites"), f"{path}: suites")
    if name not in suites:
        raise ConfigError(
            f"no suite '{name}' in {path}.{closest(name, suites)} Suites: {', '.join(sorted(suites))}"
        )
    where = f"{path}: suites.{name}"
    settings = validate_options(suites[name], SUITE_KEYS, where)
    settings["executor"] = validate_options(settings["executor"], EXECUTOR_KEYS, f"{where}.executor")
    if settings["executor"]["name"] not in EXECUTORS:
        raise ConfigError(f"{where}.executor: unknown executor '{settings['executor']['name']}'; "
                          f"use one of {', '.join(EXECUTORS)}")
    models = _mapping(settings.pop("models"), f"{where}.models")
    tasks = _mapping(settings.pop("tasks"), f"{where}.tasks")
    task_specs = [parse_task(t, spec, f"{where}.tasks.{t}") for t, spec in tasks.items()]
    for spec in task_specs:
        for model in spec.models or []:
            if model not in models:
                raise ConfigError(f"{where}.tasks.{spec.name}.models: no model '{model}' in this suite."
                                  f"{closest(model, models)} Models: {', '.join(models)}")
    return Suite(
        name=name,
        settings=settings,
        models=[parse_model(m, spec, f"{where}.models.{m}") for m, spec in models.items()],
        tasks=task_specs,
        source=str(path),
    )


def list_suites(path: str | Path = DEFAULT_CONFIG) -> dict[str, str]:
    suites = load_yaml(path).get("suites") or {}
    return {name: (spec or {}).get("description", "") for name, spec in suites.items()}
