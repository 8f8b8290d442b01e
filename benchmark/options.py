"""Declared, typed options: every option of a task, pretrainer, pretext method, suite and executor
is declared once, with its default and the values it accepts, and checked in one place.

A plugin declares ``options = {"folds": Int(3, min=2), "solver": Choice("torch", "liblinear"), ...}``
(in the spirit of scikit-learn's ``_parameter_constraints``). ``validate`` overlays the given
values on the defaults, refuses unknown keys and values outside what is declared, and returns an
``Options``: a read-only dict that also allows attribute access, so ``cfg["folds"]`` and
``cfg.folds`` both work. Values are kept exactly as given (an int stays an int, a list a list),
so the config hash of a YAML file does not depend on the declarations.

Every error names where the value came from (``benchmark.yaml: suites.s.tasks.t.k_values[2]``), the
value, and what is allowed. A plain ``{key: default}`` declaration (third-party plugins written
before this module) still works: such a key accepts any value.

Names that become file or folder names (suites, models, task instances, dataset splits) must
match ``NAME_PATTERN``: see ``check_name``.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError
from .registry import closest

_UNSET = object()

# Names that end up in paths: a letter or digit first, then letters, digits, '_', '.', '-'; no
# separators, no '..', so a name can never leave the folder it is joined to.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_MAX_LENGTH = 64
NAME_RULE = (f"a name of 1-{NAME_MAX_LENGTH} characters from A-Z a-z 0-9 _ . - that starts with a letter "
             f"or digit and has no '..'")

# torch device strings ssl-bench accepts; whether the device exists is checked at start-up
# (benchmark.devices), where the machine that will run the work is known
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")
DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"


def name_problem(value: Any) -> str | None:
    """Why ``value`` cannot be used as a name in a path, or None when it can."""
    if not isinstance(value, str):
        return f"a name must be a string, got {type(value).__name__}"
    if len(value) > NAME_MAX_LENGTH:
        return f"it is {len(value)} characters long"
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        return "it contains characters outside the allowed set, or '..'"
    return None


def check_name(value: Any, where: str, what: str = "name") -> str:
    """``value`` when it is a valid name; otherwise a ConfigError naming ``where`` and the rule."""
    problem = name_problem(value)
    if problem:
        raise ConfigError(f"{where}: {what} {value!r} cannot be used: {problem}. Use {NAME_RULE} "
                          f"(it becomes part of file and folder names)")
    return value


def _path(where: str, key: str | int) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Option:
    """What one option accepts. ``default`` is the value used when the option is not given
    (omitted for element types, e.g. the items of a list); a default of None means the option may
    be left unset (None), whatever its type."""

    def __init__(self, default: Any = _UNSET, *, nullable: bool = False, required: bool = False,
                 omit_at_default: bool = False):
        self.default = default
        self.nullable = nullable or default is None
        self.required = required  # None (the default) is not accepted: the option must be given
        # an option added after results were published: at its default it stays out of a model's
        # identity (``identity_options``), so config hashes and checkpoint names made before it existed hold
        self.omit_at_default = omit_at_default

    def describe(self) -> str:
        """What is allowed, for error messages ('an integer >= 1')."""
        raise NotImplementedError

    def problem(self, value: Any, where: str) -> tuple[str, Any, str] | None:
        """(where, bad value, allowed) of the first value that is not allowed, or None."""
        raise NotImplementedError

    def check(self, value: Any, where: str) -> tuple[str, Any, str] | None:
        if value is None and self.nullable:
            return None
        return self.problem(value, where)

    def allowed(self) -> str:
        return self.describe() + (" (or null)" if self.nullable else "")


class Anything(Option):
    """An undeclared type: a plain ``{key: default}`` declaration. Any value is accepted."""

    def describe(self) -> str:
        return "any value"

    def problem(self, value, where):
        return None


class Int(Option):
    def __init__(self, default: Any = _UNSET, *, min: int | None = None, max: int | None = None,
                 odd: bool = False, **kw):
        super().__init__(default, **kw)
        self.min, self.max, self.odd = min, max, odd

    def describe(self) -> str:
        bounds = [f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else ""]
        text = "an " + ("odd " if self.odd else "") + "integer"
        return " ".join([text, " and ".join(b for b in bounds if b)]).strip()

    def problem(self, value, where):
        if (isinstance(value, bool) or not isinstance(value, int) or (self.min is not None and value < self.min)
                or (self.max is not None and value > self.max) or (self.odd and value % 2 == 0)):
            return where, value, self.allowed()
        return None


class Float(Option):
    """A finite number (an int is accepted as given, not converted)."""

    def __init__(self, default: Any = _UNSET, *, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, **kw):
        super().__init__(default, **kw)
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>' if self.min_open else '>='} {self.min:g}")
        if self.max is not None:
            bounds.append(f"{'<' if self.max_open else '<='} {self.max:g}")
        return " ".join(["a number", " and ".join(bounds)]).strip()

    def problem(self, value, where):
        if not _is_number(value):
            return where, value, self.allowed()
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return where, value, self.allowed()
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            return where, value, self.allowed()
        return None


class Bool(Option):
    def describe(self) -> str:
        return "true or false"

    def problem(self, value, where):
        return None if isinstance(value, bool) else (where, value, self.allowed())


class Str(Option):
    """Free text (paths, descriptions); ``rule`` says what it is in messages."""

    def __init__(self, default: Any = _UNSET, *, rule: str = "", **kw):
        super().__init__(default, **kw)
        self.rule = rule

    def describe(self) -> str:
        return self.rule or "a string"

    def problem(self, value, where):
        return None if isinstance(value, str) else (where, value, self.allowed())


class Name(Option):
    """A name that becomes part of a path (a dataset split, a sub-folder): see ``NAME_RULE``."""

    def describe(self) -> str:
        return NAME_RULE

    def problem(self, value, where):
        return (where, value, self.allowed()) if name_problem(value) else None


class Device(Option):
    """A torch device string. Whether that device exists is checked at start-up."""

    def describe(self) -> str:
        return DEVICE_RULE

    def problem(self, value, where):
        if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
            return where, value, self.allowed()
        return None


class Choice(Option):
    """One of a fixed set of values; ``Choice("torch", "liblinear", default="torch")``."""

    def __init__(self, *choices: Any, default: Any = _UNSET, **kw):
        super().__init__(choices[0] if default is _UNSET and choices else default, **kw)
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def problem(self, value, where):
        # 1 == True in Python: a bool must not pass for a number choice, nor the reverse
        if not any(value == c and type(value) is type(c) for c in self.choices):
            return where, value, self.allowed() + _closest(value, [c for c in self.choices if isinstance(c, str)])
        return None


class Registered(Option):
    """The name of an entry of a registry (``benchmark.registry.Registry``), e.g. an architecture
    or a pretext method; looked up when checked, so plugins installed later count."""

    def __init__(self, registry, default: Any = _UNSET, **kw):
        super().__init__(default, **kw)
        self.registry = registry

    def describe(self) -> str:
        return "one of " + ", ".join(self.registry.names())

    def problem(self, value, where):
        family = getattr(self.registry, "family", lambda name: None)(value) if isinstance(value, str) else None
        if family is not None:  # an open-ended family member (timm/<model>[...]): its own error says why
            try:
                family(value)
            except ConfigError as exc:
                return where, value, str(exc)
            return None
        if not isinstance(value, str) or value not in self.registry:
            return where, value, self.allowed() + _closest(value, self.registry.names())
        return None


class ListOf(Option):
    """A list whose every item satisfies ``item``; ``length`` fixes its length, ``increasing``
    requires strictly increasing items, ``unique`` distinct ones."""

    def __init__(self, item: Option, default: Any = _UNSET, *, min_length: int = 0, length: int | None = None,
                 unique: bool = False, increasing: bool = False, **kw):
        super().__init__(default, **kw)
        self.item, self.min_length, self.length = item, min_length, length
        self.unique, self.increasing = unique, increasing

    def describe(self) -> str:
        if self.length is not None:
            size = f"exactly {self.length} "
        else:
            size = f"at least {self.min_length} " if self.min_length else ""
        order = "strictly increasing " if self.increasing else "distinct " if self.unique else ""
        return f"a list of {size}{order}items, each {self.item.describe()}"

    def problem(self, value, where):
        if not isinstance(value, (list, tuple)):
            return where, value, self.allowed()
        if len(value) < self.min_length or (self.length is not None and len(value) != self.length):
            return where, value, self.allowed()
        for index, item in enumerate(value):
            found = self.item.check(item, _path(where, index))
            if found:
                return found
        if self.unique and len({repr(v) for v in value}) != len(value):
            return where, value, self.allowed()
        if self.increasing and any(not a < b for a, b in zip(value, value[1:])):
            return where, value, self.allowed()
        return None


class Layers(ListOf):
    """Layers of the architecture to evaluate (None: the task's default). Beyond the form checked
    here, ``benchmark.config.load_suite`` checks them against the architecture of every model."""

    def __init__(self, default: Any = None, **kw):
        super().__init__(Str(rule="a layer name"), default, min_length=1, unique=True, **kw)

    def describe(self) -> str:
        return "a list of distinct layer names of the architecture (ResNet: conv1, res2, res3, res4, res5, pool5)"


class Range(ListOf):
    """``[low, high]`` with low <= high, each ``item``."""

    def __init__(self, item: Option, default: Any = _UNSET, **kw):
        super().__init__(item, default, length=2, **kw)

    def describe(self) -> str:
        return f"[low, high] with low <= high, each {self.item.describe()}"

    def problem(self, value, where):
        found = super().problem(value, where)
        if found is None and not value[0] <= value[1]:
            return where, value, self.allowed()
        return found


class MappingOf(Option):
    """A mapping with the given keys (a subset of them), each value checked by its option."""

    def __init__(self, keys: Mapping[str, Option], default: Any = _UNSET, **kw):
        super().__init__(default, **kw)
        self.keys = dict(keys)

    def describe(self) -> str:
        return "a mapping with keys among " + ", ".join(self.keys)

    def problem(self, value, where):
        if not isinstance(value, dict):
            return where, value, self.allowed()
        for key, item in value.items():
            if key not in self.keys:
                return _path(where, key), item, f"a key among {', '.join(self.keys)}"
            found = self.keys[key].check(item, _path(where, key))
            if found:
                return found
        return None


class OneOf(Option):
    """Any of several kinds: ``OneOf(Choice("reference", "vissl"), ListOf(Float(min=0)))``."""

    def __init__(self, *kinds: Option, default: Any = _UNSET, **kw):
        super().__init__(default, **kw)
        self.kinds = kinds

    def describe(self) -> str:
        return " or ".join(kind.describe() for kind in self.kinds)

    def problem(self, value, where):
        found = [kind.check(value, where) for kind in self.kinds]
        if all(found):
            # report the deepest problem (an item of a list) when one kind got further than the top
            deeper = [f for f in found if f[0] != where]
            return deeper[0] if len(deeper) == 1 else (where, value, self.allowed())
        return None


class PluginOptions(Option):
    """A nested option block whose declaration belongs to the plugin another option chooses, e.g.
    a pretext pretrainer's ``method_options`` are declared by the method named in ``method``.
    Checked by ``validate`` once the choosing option is known to be valid."""

    def __init__(self, registry, chosen_by: str, default: Any = _UNSET, **kw):
        super().__init__({} if default is _UNSET else default, nullable=True, **kw)
        self.registry, self.chosen_by = registry, chosen_by

    def describe(self) -> str:
        return f"a mapping of the options of the chosen {self.chosen_by}"

    def problem(self, value, where):
        return None if isinstance(value, dict) else (where, value, self.allowed())


class Options(dict):
    """Validated options: a read-only dict with attribute access (``cfg.folds``). A dict, so
    ``json.dumps`` and ``{**cfg}`` behave exactly as they did with plain dicts. Plugins read their
    options as attributes (tests/test_option_reads.py checks each read against the declaration)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            # dunder look-ups (copy, pickle, numpy probing) are not option reads: no suggestion
            if key.startswith("__"):
                raise AttributeError(key) from None
            raise AttributeError(f"no option '{key}' is declared.{closest(key, self)} "
                                 f"Declared options: {', '.join(sorted(self))}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("validated options are read-only; build a new mapping ({**options, key: value}) instead")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only
    update = pop = popitem = setdefault = clear = __ior__ = _read_only

    def __reduce__(self):
        return Options, (dict(self),)

    def __copy__(self):
        return Options(dict(self))

    def __deepcopy__(self, memo):
        return Options(copy.deepcopy(dict(self), memo))


# a run directory's suite.yaml holds validated blocks: they are written as the mappings they are
yaml.SafeDumper.add_representer(Options, yaml.representer.SafeRepresenter.represent_dict)


class Declared(Mapping):
    """A plugin's option declaration. As a mapping it is ``{key: default}`` (a fresh copy of the
    default on every access), which is what code written before the declarations were typed reads
    (``{**Task.options, "layers": [...]}``); ``spec`` holds the Option of every key."""

    def __init__(self, options: Mapping[str, Any]):
        self.spec: dict[str, Option] = {
            key: value if isinstance(value, Option) else Anything(value) for key, value in options.items()}
        for key, option in self.spec.items():
            if option.default is _UNSET:
                raise TypeError(f"option '{key}' is declared without a default")

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self.spec[key].default)

    def __iter__(self):
        return iter(self.spec)

    def __len__(self) -> int:
        return len(self.spec)

    def __repr__(self) -> str:
        return f"declare({dict(self)!r})"


def declare(options: Mapping[str, Any]) -> Declared:
    """``options = declare({"folds": Int(3, min=2), ...})`` in a plugin class."""
    return Declared(options)


def declared(options: Mapping[str, Any]) -> dict[str, Option]:
    """Every entry of a declaration as an Option (a plain default: ``Anything(default)``)."""
    return options.spec if isinstance(options, Declared) else Declared(options).spec


def _closest(name: Any, candidates: Iterable[str]) -> str:
    """' Did you mean ...?' for a string close to a candidate, else ''."""
    return closest(name, candidates) if isinstance(name, str) else ""


def identity_options(options: Mapping[str, Any], declaration: Mapping[str, Any]) -> dict:
    """``options`` without the options declared ``omit_at_default`` that are at their default: what
    identifies a configuration (config hashes, checkpoint names) independently of options added later."""
    spec = declared(declaration)
    return {key: value for key, value in options.items()
            if not (key in spec and spec[key].omit_at_default and value == spec[key].default)}


def refuse(where: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{where}: {value!r} is not allowed; expected {allowed}")


def validate(given: Mapping | None, options: Mapping[str, Any], where: str) -> Options:
    """The declared defaults overlaid with ``given``, every value checked against its declaration.

    ``where`` names the block (``benchmark.yaml: suites.s.tasks.t``); an error names the key path,
    the value and what is allowed. Nested plugin blocks (``PluginOptions``) are validated against
    the declaration of the plugin their choosing option names."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a mapping of options, got {type(given).__name__} {given!r}")
    spec = declared(options)
    for key in given:
        if key not in spec:
            raise ConfigError(f"unknown key '{key}' in {where}.{_closest(str(key), spec)} "
                              f"Valid keys: {', '.join(sorted(spec))}")
    merged = {key: copy.deepcopy(option.default) for key, option in spec.items()}
    merged.update(copy.deepcopy(dict(given)))
    for key, option in spec.items():
        if option.required and merged[key] is None:
            raise ConfigError(f"{_path(where, key)} is required; expected {option.describe()}")
        found = option.check(merged[key], _path(where, key))
        if found:
            raise refuse(*found)
    for key, option in spec.items():
        if isinstance(option, PluginOptions) and merged[option.chosen_by] is not None:
            plugin = option.registry.get(merged[option.chosen_by])
            # checked only: the block stays as given, it is part of the parent's identity (config
            # hash, checkpoint name); the plugin gets its defaults when it is built
            validate(merged[key], getattr(plugin, "options", {}), _path(where, key))
    return Options(merged)
