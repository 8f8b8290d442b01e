"""The report's significance marks: for every table column in which two or more models saved their
per-image outcomes (``benchmark.row_schema.OUTCOMES``), the models not significantly worse than
the column's best (paired permutation test, p > 0.05; as the bold entries of SimCLR's Table 8),
and for every such cell a bootstrap 95 % interval over the test images
(``benchmark.significance``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BenchmarkError
from .results import ResultStore
from .row_schema import OUTCOMES_ENTRY, OUTCOMES_FILE
from .rows import text_column
from .significance import ALPHA, bootstrap_interval, not_worse_than_best

LEGEND = ("Bold: not significantly worse than the best of its column (paired permutation test over the test "
          "images, p > 0.05, as in SimCLR's Table 8); [low, high]: bootstrap 95 % interval over the test images. "
          "Only columns in which two or more models saved their per-image outcomes are tested.")


@dataclass(frozen=True)
class Mark:
    p_value: float | None  # against the column's best; None where the column has one model
    low: float
    high: float

    @property
    def not_worse(self) -> bool:
        return self.p_value is not None and self.p_value > ALPHA

    def title(self) -> str:
        tested = "" if self.p_value is None else f"p = {self.p_value:.3g} against the best; "
        return f"{tested}95 % interval [{self.low:.2f}, {self.high:.2f}]"


def significance_marks(rows: pd.DataFrame, cell: tuple[str, str], stores: dict[str, ResultStore],
                       notes: list[str]) -> dict[tuple[str, str], Mark]:
    """(row label, column label) -> Mark for the ``rows`` that name outcomes, a table cell being
    ``cell`` = (index column, column column), e.g. ("model", "column"). ``stores``: the run label
    (``run`` column; "" for a single run) -> its ResultStore. Unreadable outcome files are left
    out and said in ``notes``."""
    if rows.empty or OUTCOMES_FILE not in rows:
        return {}
    rows = rows[text_column(rows, OUTCOMES_FILE).ne("")]
    marks: dict[tuple[str, str], Mark] = {}
    index, columns = cell
    for column, sub in rows.groupby(columns, sort=False):
        outcomes = {}
        for _, row in sub.iterrows():
            store = stores[str(row["run"]) if "run" in row and pd.notna(row["run"]) else ""]
            try:
                outcomes[row[index]] = store.read_outcomes(str(row[OUTCOMES_FILE]), str(row[OUTCOMES_ENTRY]))
            except BenchmarkError as exc:
                notes.append(f"- {row[index]} {column}: {exc}")
        if not outcomes:
            continue
        sizes = {len(o.values) for o in outcomes.values()}
        if len(sizes) > 1:
            notes.append(f"- {column}: the models were scored on different numbers of test images "
                         f"({sorted(sizes)}); no significance test")
        for name, mark in _tested(outcomes).items():
            marks[(name, column)] = mark
    return marks


# the marks of one set of outcomes, by content: a report shows the same outcomes in its per-task
# tables and its across-datasets tables, and the tests (resampling) are the costly part
_TESTED: dict[tuple, dict[str, Mark]] = {}


def _tested(outcomes: dict) -> dict[str, Mark]:
    key = tuple((name, o.statistic, _digest(o.values), _digest(o.classes)) for name, o in outcomes.items())
    if key not in _TESTED:
        sizes = {len(o.values) for o in outcomes.values()}
        p_values = not_worse_than_best(outcomes) if len(outcomes) > 1 and len(sizes) == 1 else {}
        _TESTED[key] = {name: Mark(p_values.get(name), *bootstrap_interval(o)) for name, o in outcomes.items()}
    return _TESTED[key]


def _digest(array) -> str:
    if array is None:
        return ""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str((array.dtype, array.shape)).encode() + array.tobytes()).hexdigest()


def markdown_cells(table: pd.DataFrame, marks: dict[tuple[str, str], Mark]) -> pd.DataFrame:
    """The table as text, bold where not significantly worse than the best, with intervals."""
    out = table.copy().astype(object)
    for model in table.index:
        for column in table.columns:
            value = table.at[model, column]
            if pd.isna(value):
                out.at[model, column] = ""
                continue
            mark = marks.get((model, column))
            text = f"{value:.2f}"
            if mark is not None:
                text = (f"**{text}**" if mark.not_worse else text) + f" [{mark.low:.1f}, {mark.high:.1f}]"
            out.at[model, column] = text
    return out
