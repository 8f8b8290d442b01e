"""Name -> builder registries for pluggable parts (tasks, pretrainers, architectures; a plugin
package keeps a registry of its own parts beside their base class, e.g. the pretext methods in
``pretrainers/pretext/method.py``).

Parts come through Python entry points (group ``ssl_bench.<registry name>``), loaded the first
time a registry is queried, so ``pip install my-ssl-plugin`` is all a user has to do. The built-in
tasks, pretrainers and pretext methods are plugins like any other: ssl-bench's own pyproject.toml
declares them, and the engine never imports them. Only the engine's own architectures register
in code (``register``), from the modules named in ``builtin_modules``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from functools import partial
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def closest(name: str, candidates) -> str:
    """' Did you mean 'x'?' for the nearest candidate, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    def __init__(self, name: str, builtin_modules: tuple[str, ...] = ()):
        # builtin_modules: engine modules that register parts with ``register`` when imported
        self.name = name
        self.entry_point_group = f"ssl_bench.{name}"
        self._builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False
        # name prefix -> (resolve(name) -> item, names(pattern) -> list): open-ended families
        # such as timm/<model>, whose members are made on demand rather than registered one by one
        self._families: dict[str, tuple[Callable, Callable]] = {}

    def register_family(self, prefix: str, resolve: Callable[[str], T], names: Callable) -> None:
        self._families[prefix] = (resolve, names)

    def family(self, name: str):
        for prefix, (resolve, _) in self._families.items():
            if isinstance(name, str) and name.startswith(prefix):
                return resolve
        return None

    def family_prefixes(self) -> list[str]:
        """The name prefixes of the open-ended families (``timm/``)."""
        self._load()
        return list(self._families)

    def all_names(self, pattern: str | None = None) -> list[str]:
        """Registered names and every family member (e.g. >1,300 timm models), filtered by an
        fnmatch ``pattern`` (matched against the name with and without the family prefix)."""
        import fnmatch

        self._load()
        names = list(self._items)
        for prefix, (_, members) in self._families.items():
            names += members()
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.split("/", 1)[-1], pattern)]
        return sorted(names)

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.name} '{name}' is registered twice")
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, obj: T) -> None:
        self._items[name] = obj
        if isinstance(obj, type) and not isinstance(getattr(obj, "name", None), str):
            obj.name = name  # the class knows the name it is registered under (Task.name, ...)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            if entry_point.name not in self._items:
                self._add(entry_point.name, entry_point.load())

    def _load_one(self, name: str) -> None:
        """Registers the entry point called ``name`` alone: a suite that names two plugins imports
        those two, not every installed plugin (and the libraries each imports)."""
        if self._loaded or name in self._items:
            return
        for module in self._builtin_modules:
            importlib.import_module(module)
        if name in self._items:
            return
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group, name=name):
            self._add(entry_point.name, entry_point.load())
            return

    def get(self, name: str) -> T:
        self._load_one(name)
        if name not in self._items:
            self._load()
        resolve = self.family(name) if name not in self._items else None
        if resolve is not None:
            return partial(resolve, name)
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.name[:-1] if self.name.endswith('s') else self.name} '{name}'."
                f"{closest(name, self._items)} Available: {', '.join(sorted(self._items))}. "
                f"Plugins register more through the entry point group '{self.entry_point_group}'."
                + ("" if self._items else " None is registered: is ssl-bench installed (pip install -e .)?")
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def declared_names(self) -> list[str]:
        """The names registered so far and those the installed entry points declare, without
        importing any plugin (``ssl-bench list tasks`` answers at once; ``names`` imports them)."""
        declared = {entry.name for entry in importlib.metadata.entry_points(group=self.entry_point_group)}
        return sorted(set(self._items) | declared)

    def __contains__(self, name: str) -> bool:
        self._load_one(name)
        if name in self._items:
            return True
        self._load()
        if name in self._items:
            return True
        resolve = self.family(name)
        if resolve is None:
            return False
        try:
            resolve(name)
        except ConfigError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TASKS: Registry = Registry("tasks")
PRETRAINERS: Registry = Registry("pretrainers")
ARCHITECTURES: Registry = Registry("architectures", builtin_modules=("benchmark.models",))
