"""Sweeps in a suite: a model entry declares axes over its options and becomes one model per point.

    jigsaw:
      pretrainer: pretext
      method: jigsaw
      method_options: {num_permutations: 100}
      sweep:
        method_options.num_permutations: [10, 100, 1000]   # problem complexity
        data_fraction: [0.25, 1.0]                          # data size (nested subsets)

expands into the cartesian product of the axes (6 models here). Each point is named
``<entry>.<axis>-<value>`` (axes in the order written, joined by '.'; the axis is the last
component of its key path), e.g. ``jigsaw.num_permutations-10.data_fraction-0.25``: a spelling inside
the name rule of ``benchmark.options`` (characters outside ``A-Z a-z 0-9 _ . -`` in a value become
'_'). The point whose options equal the entry's own options (every axis value equal to the value
the entry has, or the option's default) keeps the entry's name, so adding a sweep to a model that
already has results keeps them: its units keep their config hashes.

Every result row of a point records its sweep (``sweep``: the entry's name, ``sweep:<key path>``:
the value), so the report draws metric-vs-axis curves (``benchmark.scaling``).

The data-size axis (``data_fraction``) draws nested subsets: ``nested_subset`` orders the images by
a permutation drawn from ``data_seed`` and keeps a prefix, so the 0.25 subset lies inside the 0.5
subset, whatever the order the files were listed in.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .options import name_problem

SWEEP_KEY = "sweep"
SWEEP_COLUMN = "sweep"
AXIS_PREFIX = "sweep:"
# axes over which a point is a repetition, not a position on a curve: the report shows their spread
SEED_AXES = ("seed", "data_seed")
_SUBSET_TAG = 0x5B5E7  # keeps the subset's seeds apart from other uses of the same seed


def _get(options: Mapping, path: Sequence[str]) -> Any:
    value: Any = options
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _set(options: dict, path: Sequence[str], value: Any) -> dict:
    """A copy of ``options`` with ``path`` set to ``value`` (intermediate mappings copied/created)."""
    out = dict(options)
    if len(path) == 1:
        out[path[0]] = value
        return out
    inner = out.get(path[0])
    out[path[0]] = _set(dict(inner) if isinstance(inner, Mapping) else {}, path[1:], value)
    return out


def value_spelling(value: Any) -> str:
    """A value as it appears in a point's name: numbers as written (1e-05 stays short), other
    characters outside the name rule replaced by '_'."""
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def axis_label(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _axes(raw_sweep: Any, where: str) -> list[tuple[str, list]]:
    if not isinstance(raw_sweep, Mapping) or not raw_sweep:
        raise ConfigError(f"{where}.{SWEEP_KEY} must be a mapping of option key paths to lists of values, e.g. "
                          f"{{data_fraction: [0.25, 1.0]}} or {{method_options.num_permutations: [10, 100]}}; "
                          f"got {raw_sweep!r}")
    axes = []
    for key, values in raw_sweep.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}.{SWEEP_KEY}: {key!r} is not an option key path (e.g. 'arch', "
                              f"'method_options.num_permutations')")
        if key.split(".")[0] in ("pretrainer", SWEEP_KEY):
            raise ConfigError(f"{where}.{SWEEP_KEY}.{key}: '{key.split('.')[0]}' cannot be swept; write one model "
                              f"entry per pretrainer")
        if (not isinstance(values, list) or not values
                or any(isinstance(v, (dict, list)) or v is None for v in values)):
            raise ConfigError(f"{where}.{SWEEP_KEY}.{key} must be a non-empty list of values (numbers or "
                              f"strings), got {values!r}")
        spelled = [value_spelling(v) for v in values]
        if len(set(spelled)) != len(spelled):
            raise ConfigError(f"{where}.{SWEEP_KEY}.{key}: the values {values!r} repeat (as spelt in model "
                              f"names: {spelled})")
        axes.append((key, list(values)))
    labels = [axis_label(key) for key, _ in axes]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}.{SWEEP_KEY}: two axes end in the same name ({', '.join(k for k, _ in axes)}); "
                          f"point names would not tell them apart")
    return axes


def expand_models(models: Mapping[str, Any], where: str,
                  defaults: Mapping[str, Mapping[str, Any]] | None = None) -> list[tuple[str, Any, dict]]:
    """``(name, raw options, sweep)`` for every model of a suite's ``models:`` block, in order, a
    swept entry replaced by its points. ``sweep`` is {} for a plain model, else
    ``{"sweep": entry name, "axes": {key path: value}}``. ``defaults`` (pretrainer -> {option:
    default}) decides which point keeps the entry's name when the entry does not write an axis' option."""
    out: list[tuple[str, Any, dict]] = []
    for name, raw in models.items():
        if not isinstance(raw, Mapping) or SWEEP_KEY not in raw:
            out.append((name, raw, {}))
            continue
        entry = f"{where}.{name}"
        axes = _axes(raw[SWEEP_KEY], entry)
        base = {k: v for k, v in raw.items() if k != SWEEP_KEY}
        own_defaults = (defaults or {}).get(base.get("pretrainer"), {})
        for point in itertools.product(*(values for _, values in axes)):
            options = base
            own = True
            for (key, _), value in zip(axes, point):
                path = key.split(".")
                current = _get(base, path)
                if current is None and len(path) == 1:
                    current = own_defaults.get(path[0])
                own = own and current is not None and current == value and type(current) is type(value)
                options = _set(options, path, value)
            spelt = ".".join(f"{axis_label(key)}-{value_spelling(value)}" for (key, _), value in zip(axes, point))
            point_name = name if own else f"{name}.{spelt}"
            problem = name_problem(point_name)
            if problem:
                raise ConfigError(f"{entry}.{SWEEP_KEY}: the point {spelt} would be named {point_name!r}, which "
                                  f"cannot be used: {problem}. Shorten the model name or the values")
            out.append((point_name, options, {"sweep": name, "axes": dict(zip((k for k, _ in axes), point))}))
    seen: dict[str, int] = {}
    for name, _, _ in out:
        seen[name] = seen.get(name, 0) + 1
    clashes = [name for name, count in seen.items() if count > 1]
    if clashes:
        raise ConfigError(f"{where}: sweep points are named like other models of the suite: "
                          f"{', '.join(clashes)}; rename the model entry")
    return out


def sweep_columns(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a point's result rows carry: ``sweep`` (the entry) and ``sweep:<key path>``."""
    if not sweep:
        return {}
    return {SWEEP_COLUMN: sweep["sweep"], **{AXIS_PREFIX + key: value for key, value in sweep["axes"].items()}}


def nested_subset(keys: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Ascending indices into ``keys`` of a ``fraction`` of them (at least one), drawn from ``seed``.

    The keys (e.g. image paths relative to the dataset root) are sorted, permuted by a generator
    seeded from ``seed``, and the first ceil(fraction x n) kept: for one seed, a smaller fraction's
    subset is inside a larger one's (nested, as the data-size axis needs), and the subset does not
    depend on the order in which the files were listed."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data_fraction must be in (0, 1], got {fraction!r}")
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    canonical = np.array(sorted(range(n), key=lambda i: keys[i]), dtype=np.int64)
    from .training import derived_seed

    order = np.random.default_rng(derived_seed(seed, _SUBSET_TAG)).permutation(n)
    count = max(1, math.ceil(fraction * n - 1e-9))
    return np.sort(canonical[order[:count]])
