"""benchmark.yaml: safe loading, duplicate-key detection and schema validation.

One config tree: ``suites.<name>`` holds run settings, ``models`` (name -> pretrainer options) and
``tasks`` (name -> task options). Task and pretrainer options are validated against the defaults
each plugin declares, so an unknown key anywhere is an error that names it and suggests the
closest valid key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .options import (Anything, Choice, Device, Int, Layers, Options, Str, check_name, declare, declared,
                      identity_options, validate)
from .registry import PRETRAINERS, TASKS, closest
from .sweeps import expand_models, sweep_columns

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "benchmark.yaml"

EXECUTORS = ("local", "debug", "slurm")

# local (default) | debug | slurm, with SLURM settings: see benchmark.run.executors
EXECUTOR_OPTIONS = declare({
    "name": Choice(*EXECUTORS),
    "partition": Str(None),
    "gpus_per_node": Int(1, min=0),
    "cpus_per_task": Int(10, min=1),  # GPU jobs: model preparation, feature extraction, training tasks
    "cpus_per_svm_task": Int(10, min=1),  # CPU-only jobs: SVM units on cached features
    "mem_gb": Int(64, min=1),
    "timeout_min": Int(24 * 60, min=1),
    "constraint": Str(None),
    "account": Str(None),
    "array_parallelism": Int(64, min=1),
})

SUITE_OPTIONS = declare({
    "description": Str(""),
    "data_root": Str("data"),
    "seed": Int(0, min=0),
    "device": Device("auto"),
    "batch_size": Int(64, min=1),
    "num_workers": Int(2, min=0),
    # torch threads for every unit, whatever the machine: trained numbers depend on the count
    "threads": Int(None, min=1),
    "executor": Anything(None),  # checked against EXECUTOR_OPTIONS
    "models": Anything(None),
    "tasks": Anything(None),
})
# {key: default}, as the suite and executor blocks were declared before they were typed
SUITE_KEYS = dict(SUITE_OPTIONS)
EXECUTOR_KEYS = dict(EXECUTOR_OPTIONS)

# A YAML alias repeats its anchored value wherever it appears: a few lines can expand to billions
# of nodes ("billion laughs"). Aliases may add at most this many nodes to a file.
MAX_ALIAS_EXPANSION = 10_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicated mapping keys instead of silently keeping the last, and
    aliases that expand the document beyond MAX_ALIAS_EXPANSION nodes."""

    def compose_document(self):
        node = super().compose_document()
        _check_alias_expansion(node, self.name)
        return node

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


def _check_alias_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand it by more than MAX_ALIAS_EXPANSION nodes, or that
    refers to itself, before anything is constructed from it. The composer shares one node per
    anchor, so sizes are counted once per node (memoised) and the check stays linear."""
    expanded: dict[int, int] = {}
    in_progress: set[int] = set()
    distinct: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in in_progress:
            # the composer shares the anchored node itself: its mark is where the anchor is
            raise ConfigError(f"{source}: the value anchored at line {node.start_mark.line + 1} contains an alias of "
                              f"itself (a recursive YAML alias); ssl-bench does not read recursive documents")
        in_progress.add(key)
        distinct.add(key)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        total = 1
        for child in children:
            total += size(child)
            if total - len(distinct) > MAX_ALIAS_EXPANSION:
                raise ConfigError(
                    f"{source}: YAML aliases (*name) expand this document by more than {MAX_ALIAS_EXPANSION:,} "
                    f"values (near line {child.start_mark.line + 1}); ssl-bench refuses it, as a 'billion laughs' "
                    f"document would exhaust memory. Write the values out, or use fewer nested aliases")
        in_progress.discard(key)
        expanded[key] = total
        return total

    if root is not None:
        size(root)


def safe_load_text(text: str, source: str):
    """``yaml.safe_load`` of ``text`` with the checks of every YAML ssl-bench reads (duplicated keys,
    alias expansion); errors name ``source``."""
    loader = _UniqueKeyLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to read") from None
    finally:
        loader.dispose()


def read_config_text(path: Path) -> str:
    """The text of a config file; one that cannot be read or is not UTF-8 text (a binary file, an
    archive passed by mistake) is a ConfigError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (undecodable byte at offset {exc.start}: a binary "
                          f"file?); pass a benchmark.yaml-style YAML file saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check that it is a readable "
                          f"file") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass the YAML file (e.g. {path / 'benchmark.yaml'})")
    if path.exists() and not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file (a pipe or a device?); pass the YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = safe_load_text(read_config_text(path), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping with a 'suites' key")
    return data


def validate_options(given: dict | None, allowed: dict, where: str) -> Options:
    """Defaults overlaid with ``given``, every value checked against its declaration
    (``benchmark.options``); an unknown key is an error with a suggestion."""
    return validate(given, allowed, where)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ModelSpec:
    name: str
    pretrainer: str
    options: dict
    # a sweep point: {"sweep": the entry's name, "axes": {option key path: value}}; {} otherwise
    sweep: dict = field(default_factory=dict)

    def row_columns(self) -> dict:
        """What this model adds to its result rows: its sweep and axis values (benchmark.sweeps)."""
        return sweep_columns(self.sweep)


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


def _parent(where: str, name: str) -> str:
    """``file: suites.s.models`` of ``file: suites.s.models.NAME``: where a name is declared."""
    return where[: -len(name) - 1] if where.endswith(f".{name}") else where


def parse_model(name: str, raw: dict, where: str) -> ModelSpec:
    check_name(name, _parent(where, name), "model name")
    if not isinstance(raw, dict) or "pretrainer" not in raw:
        # a misspelt 'pretrainer' is the likeliest cause: name that key and suggest the fix
        typos = difflib.get_close_matches("pretrainer", [str(k) for k in raw], n=1, cutoff=0.8) \
            if isinstance(raw, dict) else []
        typo = f" (unknown key '{typos[0]}'.{closest(typos[0], ['pretrainer'])})" if typos else ""
        raise ConfigError(f"{where} needs a 'pretrainer' key{typo} (one of: {', '.join(PRETRAINERS.names())})")
    raw = dict(raw)
    pretrainer = raw.pop("pretrainer")
    cls = _registered(PRETRAINERS, pretrainer, where)
    # options added later (declared omit_at_default) stay out at their default: config hashes of
    # units made before they existed hold
    options = validate_options(raw, cls.options, where)
    # what the declarations cannot say alone (e.g. a pretext method that cannot train this arch)
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(options, where)
    return ModelSpec(name, pretrainer, Options(identity_options(options, cls.options)))


def pretrainer_defaults(models: dict) -> dict[str, dict]:
    """pretrainer -> {option: default} for the pretrainers a suite's models name (known ones)."""
    out = {}
    for raw in models.values():
        name = raw.get("pretrainer") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in PRETRAINERS and name not in out:
            out[name] = {key: option.default for key, option in declared(PRETRAINERS.get(name).options).items()}
    return out


def parse_models(models: dict, where: str) -> list[ModelSpec]:
    """The suite's models, each swept entry expanded into its points (benchmark.sweeps)."""
    specs = []
    for name, raw, sweep in expand_models(models, where, pretrainer_defaults(models)):
        point = f"{where}.{name}" if not sweep else f"{where}.{sweep['sweep']} (sweep point {name})"
        if not sweep:
            specs.append(parse_model(name, raw, point))
            continue
        spec = parse_model(name, raw, point)
        spec.sweep = sweep
        specs.append(spec)
    return specs


def _task_models(names: list[str], specs: list[ModelSpec]) -> list[str]:
    """A task's ``models:`` list with the name of a swept entry none of whose points kept it
    replaced by all its points."""
    known = {spec.name for spec in specs}
    out = []
    for name in names:
        if name in known:
            out.append(name)
        else:
            out += [spec.name for spec in specs if spec.sweep and spec.sweep["sweep"] == name]
    return list(dict.fromkeys(out))


def parse_task(name: str, raw: dict | None, where: str) -> TaskSpec:
    check_name(name, _parent(where, name), "task name")
    raw = dict(_mapping(raw, where))
    task = raw.pop("task", name)
    models = raw.pop("models", None)
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ConfigError(f"{where}.models must be a list of model names of this suite, got {models!r}")
    cls = _registered(TASKS, task, where)
    # as for models: options added later (declared omit_at_default) stay out at their default, so
    # the config hashes of units made before they existed hold; the task gets them when it is built
    options = validate_options(raw, cls.options, where)
    return TaskSpec(name, task, Options(identity_options(options, cls.options)), models)


def check_layers(task: TaskSpec, models: list[ModelSpec], where: str) -> None:
    """Layers a task asks for must exist in the architecture of every model it evaluates; checked
    at load where the model declares a known architecture."""
    from .models.architecture import get_architecture
    from .registry import ARCHITECTURES

    declared_layers = [key for key, option in declared(TASKS.get(task.task).options).items()
                       if isinstance(option, Layers) and task.options.get(key) is not None]
    evaluated = [m for m in models if task.models is None or m.name in task.models]
    known = {m.name: get_architecture(m.options["arch"]) for m in evaluated
             if isinstance(m.options.get("arch"), str) and m.options["arch"] in ARCHITECTURES}
    for model in evaluated:
        if model.name not in known:
            continue
        arch, arch_name = known[model.name], model.options["arch"]
        for key in declared_layers:
            for index, layer in enumerate(task.options[key]):
                if layer not in arch.layers:
                    raise ConfigError(
                        f"{where}.{key}[{index}]: {layer!r} is not a layer of {arch_name} (the architecture of "
                        f"model '{model.name}'); expected one of {', '.join(arch.layers)}"
                        + _other_family_fix(task, layer, model.name, known))


def _other_family_fix(task: TaskSpec, layer: str, model: str, known: dict) -> str:
    """How to fix layers that belong to another model's architecture (a ResNet's res4 asked of a
    ViT): the task's layers apply to every model it evaluates."""
    owners = [name for name, arch in known.items() if layer in arch.layers]
    if not owners:
        return ""
    return (f". The task's layers apply to every model it evaluates, and '{layer}' is a layer of "
            f"{', '.join(repr(o) for o in owners)} only: leave 'layers' out (each model then gets its own "
            f"architecture's default layers), or give the task 'models: [{', '.join(owners)}]' and add an "
            f"instance for '{model}', e.g. '{task.name}_{model}: {{task: {task.task}, models: [{model}], "
            f"layers: [...]}}'")


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
    check_name(name, f"{path}: suites", "suite name")
    where = f"{path}: suites.{name}"
    given = validate_options(suites[name], SUITE_OPTIONS, where)
    executor = validate_options(given["executor"], EXECUTOR_OPTIONS, f"{where}.executor")
    models = _mapping(given["models"], f"{where}.models")
    tasks = _mapping(given["tasks"], f"{where}.tasks")
    settings = Options({**{k: v for k, v in given.items() if k not in ("models", "tasks")}, "executor": executor})
    task_specs = [parse_task(t, spec, f"{where}.tasks.{t}") for t, spec in tasks.items()]
    model_specs = parse_models(models, f"{where}.models")
    names = [m.name for m in model_specs] + [m.sweep["sweep"] for m in model_specs if m.sweep]
    for spec in task_specs:
        for model in spec.models or []:
            if model not in names:
                raise ConfigError(f"{where}.tasks.{spec.name}.models: no model '{model}' in this suite."
                                  f"{closest(model, names)} Models: {', '.join(dict.fromkeys(names))}")
        if spec.models is not None:
            spec.models = _task_models(spec.models, model_specs)
    for spec in task_specs:
        check_layers(spec, model_specs, f"{where}.tasks.{spec.name}")
    return Suite(name=name, settings=settings, models=model_specs, tasks=task_specs, source=str(path))


def list_suites(path: str | Path = DEFAULT_CONFIG) -> dict[str, str]:
    suites = load_yaml(path).get("suites") or {}
    return {name: (spec or {}).get("description", "") for name, spec in suites.items()}
