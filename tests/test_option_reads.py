"""Plugins read their options as attributes of the validated ``Options`` (``self.config.folds``), and
every such read names an option the plugin declares. Read from the source (ast), so a typo in an
option name fails here instead of in the middle of a unit, hours into a run.

What counts as an option object, inside ``tasks/`` and ``pretrainers/``:

* ``self.config`` in a method (``benchmark.plugin_api.Task``/``Pretrainer`` and the pretext methods
  set it to ``validate(...)``);
* a parameter annotated ``Options`` (helpers given a plugin's options: ``run_detectron2``);
* a local name bound to one of the above (``cfg = self.config``, ``size, cfg = ..., self.config``).

Values inside an option are plain data (a ``MappingOf`` option is a dict, a pretext pretrainer's
``method_options`` stays the dict the user wrote because it is part of the model's identity and is
validated by the method when it is built): ``cfg.method_options["x"]`` is not a read of an option
object and is not checked here. Suite-level and executor blocks are read by the engine
(``benchmark/``), which names no plugin, and are outside this test.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmark.options import Int, Options, declare, validate

REPO = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = ("tasks", "pretrainers")
PLUGIN_GROUPS = ("ssl_bench.tasks", "ssl_bench.pretrainers", "ssl_bench.pretext_methods")
# Modules with module-level functions given a plugin's options, but that define no plugin class:
# the plugin whose options they get. (run_detectron2 runs DetectionVOC07's units on detectron2.)
HELPER_MODULES = {"tasks.detection.detectron2_backend": ("tasks.detection.voc07:DetectionVOC07",)}
# What an attribute read on an Options may name besides an option: its (dict) methods
OPTIONS_ATTRIBUTES = {name for name in dir(Options) if not name.startswith("__")}


@dataclass(frozen=True)
class Finding:
    where: str  # module:line (function)
    text: str


def _is_self_config(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "config" and isinstance(node.value, ast.Name)
            and node.value.id == "self")


def _annotated_options(arg: ast.arg) -> bool:
    ann = arg.annotation
    return (isinstance(ann, ast.Name) and ann.id == "Options") or (
        isinstance(ann, ast.Constant) and ann.value == "Options")


def option_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names that hold an option object anywhere in ``function`` (nested functions included:
    closures read the enclosing function's ``cfg``). Flow-insensitive: ``options`` that is first
    the ``**options`` of a pretext method and then ``self.config`` counts as an option object."""
    args = function.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if _annotated_options(a)}

    def is_option(node: ast.AST) -> bool:
        return _is_self_config(node) or (isinstance(node, ast.Name) and node.id in names)

    changed = True
    while changed:  # cfg = self.config; opts = cfg; ...
        changed = False
        for node in ast.walk(function):
            if not isinstance(node, ast.Assign):
                continue
            pairs = []
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                        and len(target.elts) == len(node.value.elts):
                    pairs += zip(target.elts, node.value.elts)
                else:
                    pairs.append((target, node.value))
            for target, value in pairs:
                if isinstance(target, ast.Name) and target.id not in names and is_option(value):
                    names.add(target.id)
                    changed = True
    return names


def option_uses(function: ast.FunctionDef | ast.AsyncFunctionDef, where: str) -> tuple[list[Finding], list[Finding]]:
    """(string-key reads, attribute reads) of option objects in ``function``. An attribute read's
    text is the attribute name; a string-key read's text is the offending expression."""
    names = option_names(function)

    def is_option(node: ast.AST) -> bool:
        return _is_self_config(node) or (isinstance(node, ast.Name) and node.id in names)

    keyed, attributes = [], []
    for node in ast.walk(function):
        at = f"{where}:{getattr(node, 'lineno', '?')} ({function.name})"
        if isinstance(node, ast.Subscript) and is_option(node.value) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            keyed.append(Finding(at, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and is_option(node.func.value) and node.args and isinstance(node.args[0], ast.Constant):
            keyed.append(Finding(at, ast.unparse(node)))
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and is_option(node.value):
            attributes.append(Finding(at, node.attr))
    return keyed, attributes


def _functions(body: list[ast.stmt]):
    return [node for node in body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@dataclass
class ModuleUses:
    keyed: list[Finding]
    by_class: dict[str, list[Finding]]  # class name -> attribute reads in its methods
    module_level: list[Finding]  # attribute reads in module-level functions


def module_uses(module: str, source: str) -> ModuleUses:
    tree = ast.parse(source)
    uses = ModuleUses([], {}, [])
    for function in _functions(tree.body):
        keyed, attributes = option_uses(function, module)
        uses.keyed += keyed
        uses.module_level += attributes
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        reads = []
        for function in _functions(cls.body):
            keyed, attributes = option_uses(function, module)
            uses.keyed += keyed
            reads += attributes
        if reads:
            uses.by_class[cls.name] = reads
    return uses


def plugin_modules() -> dict[str, Path]:
    modules = {}
    for package in PLUGIN_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def registered_plugins() -> list[type]:
    """Every task, pretrainer and pretext method ssl-bench's own pyproject.toml registers."""
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    classes = []
    for group in PLUGIN_GROUPS:
        for target in entry_points[group].values():
            classes.append(_load(target))
    return classes


def _load(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def unknown_reads(reads: list[Finding], declared: set[str], plugin: str) -> list[str]:
    return [f"{read.where}: '{read.text}' is not an option of {plugin} (declared: {', '.join(sorted(declared))})"
            for read in reads if read.text not in declared and read.text not in OPTIONS_ATTRIBUTES]


@pytest.fixture(scope="module")
def uses() -> dict[str, ModuleUses]:
    return {module: module_uses(module, path.read_text()) for module, path in plugin_modules().items()}


def test_no_option_is_read_by_string_key(uses) -> None:
    keyed = [f"{f.where}: {f.text}" for u in uses.values() for f in u.keyed]
    assert not keyed, ("read options as attributes (self.config.folds, not self.config['folds'] or "
                       ".get('folds')), so the read can be checked against the declaration:\n" + "\n".join(keyed))


def test_every_option_read_names_a_declared_option(uses) -> None:
    problems, checked_classes = [], set()
    for plugin in registered_plugins():
        declared = set(plugin.options)
        # the plugin's own methods and those it inherits from classes of the plugin packages
        # (mixins such as tasks.common.SVMTask are checked against each plugin that uses them)
        for klass in plugin.__mro__:
            reads = uses.get(klass.__module__, ModuleUses([], {}, [])).by_class.get(klass.__name__)
            if reads is not None:
                checked_classes.add((klass.__module__, klass.__name__))
                problems += unknown_reads(reads, declared, plugin.__name__)
    for module, module_use in uses.items():
        unchecked = sorted(set(module_use.by_class) - {name for mod, name in checked_classes if mod == module})
        problems += [f"{module}.{name} reads self.config but is not (a base of) a registered plugin, so its "
                     f"reads cannot be checked: register it or derive a registered plugin from it"
                     for name in unchecked]
        if not module_use.module_level:
            continue
        owners = HELPER_MODULES.get(module) or tuple(
            f"{plugin.__module__}:{plugin.__name__}" for plugin in registered_plugins()
            if any(klass.__module__ == module for klass in plugin.__mro__))
        if not owners:
            problems.append(f"{module} has functions given Options but no plugin class: name the plugin whose "
                            f"options they get in HELPER_MODULES")
            continue
        declared = set().union(*(set(_load(owner).options) for owner in owners))
        problems += unknown_reads(module_use.module_level, declared, " / ".join(owners))
    assert not problems, "\n".join(problems)


def test_every_declared_option_can_be_read_as_an_attribute() -> None:
    """An option named like a dict method (``items``, ``copy``) would read as the method."""
    shadowed = [f"{plugin.__name__}.{key}" for plugin in registered_plugins() for key in plugin.options
                if key in OPTIONS_ATTRIBUTES or not key.isidentifier()]
    assert not shadowed, f"options that attribute access cannot reach: {shadowed}"


def test_the_checker_finds_a_misspelt_option_and_string_keys() -> None:
    source = '''
class Plugin:
    def run(self, ctx):
        cfg = self.config
        size, opts = 3, cfg
        def inner():
            return opts.fold
        return cfg["folds"], self.config.get("folds"), self.config.folds, cfg.items(), inner()

def helper(options: Options, plain):
    return options.sovler, plain["solver"], plain.get("solver")
'''
    uses = module_uses("example", source)
    assert sorted(f.text for f in uses.keyed) == ["cfg['folds']", "self.config.get('folds')"]
    reads = uses.by_class["Plugin"]
    assert unknown_reads(reads, {"folds"}, "Plugin") == [
        "example:7 (run): 'fold' is not an option of Plugin (declared: folds)"]
    assert [f.text for f in uses.module_level] == ["sovler"]


def test_reading_an_undeclared_option_names_it_and_the_declared_ones() -> None:
    options = validate({"folds": 5}, declare({"folds": Int(3), "n_jobs": Int(2)}), "task 't'")
    assert options.folds == 5
    with pytest.raises(AttributeError) as raised:
        options.fold
    message = str(raised.value)
    assert "no option 'fold'" in message and "Did you mean 'folds'?" in message
    assert "Declared options: folds, n_jobs" in message
