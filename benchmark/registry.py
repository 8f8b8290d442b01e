"""Name -> builder registries for pluggable parts (tasks, pretrainers, architectures).

Built-in parts register themselves with a decorator when their module is imported; third-party
packages add parts through Python entry points (group ``ssl_bench.<registry name>``), loaded the
first time a registry is queried, so ``pip install my-ssl-plugin`` is all a user has to do.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def closest(name: str, candidates) -> str:
    """' Did you mean 'x'?' for the nearest candidate, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    def __init__(self, name: str, builtin_modules: tuple[str, ...] = ()):
        self.name = name
        self.entry_point_group = f"ssl_bench.{name}"
        self._builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.name} '{name}' is registered twice")
            self._items[name] = obj
            if isinstance(obj, type) and not isinstance(getattr(obj, "name", None), str):
                obj.name = name  # the class knows the name it is registered under (Task.name, ...)
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            if entry_point.name not in self._items:
                self._items[entry_point.name] = entry_point.load()

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.name[:-1] if self.name.endswith('s') else self.name} '{name}'."
                f"{closest(name, self._items)} Available: {', '.join(sorted(self._items))}. "
                f"Plugins register more through the entry point group '{self.entry_point_group}'."
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TASKS: Registry = Registry("tasks", builtin_modules=("tasks.voc07_svm", "tasks.lowshot_voc07", "tasks.lowshot_places205", "tasks.linear_places205", "tasks.normals_nyuv2", "tasks.detection_voc07"))
PRETRAINERS: Registry = Registry(
    "pretrainers",
    builtin_modules=("pretrainers.random_init", "pretrainers.supervised", "pretrainers.checkpoint",
                     "pretrainers.pretext_pretrainer"),
)
ARCHITECTURES: Registry = Registry("architectures", builtin_modules=("benchmark.models",))
