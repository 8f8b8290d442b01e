"""Tables of result rows, where every number shown is one row or a labelled aggregate.

Every table the report writes (leaderboard md/csv/png, report.html, across-datasets, published
rows, scaling and low-shot figure data) is built here. ``one_row_per_cell`` puts each row in its
own cell and refuses to put two rows in one; ``aggregate_cells`` is the deliberate exception: a
mean over the rows that differ only in the key columns it names ("over samples", "over seeds"),
with the count of rows per cell, never over rows that differ in anything else. A silent mean of
two different numbers (a model's mAP and its evaluator's self-check, two backends, two cost
selections) is what both refuse.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .errors import BenchmarkError
from .rows import text_column

# The columns that tell two result rows apart: two rows equal in all of them are the same number.
ROW_KEYS = ("model", "task", "dataset", "layer", "metric", "class", "k", "sample", "cost_selection",
            "evaluation", "backend", "replicate", "source_file", "pretrain_data", "arch", "train_set")


def _describe(rows: pd.DataFrame, *, besides: Sequence[str] = ()) -> str:
    """The colliding rows, by the key columns in which they differ (all keys when none differs)."""
    keys = [c for c in ROW_KEYS if c in rows and c not in besides]
    differing = [c for c in keys if text_column(rows, c).nunique() > 1] or keys
    shown = [c for c in keys if c in differing or c in ("model", "task", "layer", "metric")]
    texts = {c: text_column(rows, c) for c in shown}
    lines = [f"  {', '.join(f'{c}={texts[c][i]}' for c in shown)}, value={rows.at[i, 'value']}"
             for i in rows.index[:4]]
    return "\n".join(lines) + (f"\n  ... ({len(rows)} rows)" if len(rows) > 4 else "")


def one_row_per_cell(rows: pd.DataFrame, index: str, columns: str, values: str = "value", *,
                     what: str) -> pd.DataFrame:
    """``index`` x ``columns`` table of ``values``, each cell the value of exactly one row; index
    and columns in the order the rows first name them. Two rows that would share a cell are a
    BenchmarkError naming them and the key columns in which they differ: a table label that leaves
    out such a column would otherwise show their mean (or one of them) as if it were one number."""
    if rows.empty:
        return pd.DataFrame()
    cell = [index, columns]
    # duplicated on the two key columns alone: DataFrame.duplicated(subset) walks every column
    clashing = rows[rows[cell].duplicated(keep=False)]
    if not clashing.empty:
        first = clashing[(clashing[index] == clashing[index].iloc[0])
                         & (clashing[columns] == clashing[columns].iloc[0])]
        raise BenchmarkError(
            f"{what}: {len(clashing)} result rows would share table cells, e.g. {index}={clashing[index].iloc[0]!r}, "
            f"{columns}={clashing[columns].iloc[0]!r} holds:\n{_describe(first)}\n"
            f"A table cell shows one number: this is a bug in the table's labels (a key column left out); "
            f"please report it with these rows")
    table = rows.pivot(index=index, columns=columns, values=values)
    table = table.reindex(index=list(dict.fromkeys(rows[index])), columns=list(dict.fromkeys(rows[columns])))
    table.index.name = index
    table.columns.name = None
    return table


def aggregate_cells(rows: pd.DataFrame, cell: Sequence[str], *, over: Sequence[str], what: str,
                    values: str = "value") -> pd.DataFrame:
    """One row per ``cell`` (a list of columns) with the ``mean``, sample ``std`` (ddof 1; 0 for one
    row) and count ``n`` of the rows it groups: a deliberate aggregate over the key columns
    ``over`` (e.g. ["sample"], or the models of a sweep's seed axis). Rows of one cell that differ in
    any other key column are a BenchmarkError: they are different numbers, not repeats."""
    if rows.empty:
        return pd.DataFrame(columns=list(cell) + ["mean", "std", "n"])
    others = [c for c in ROW_KEYS if c in rows and c not in over and c not in cell]
    if others:
        spread = rows.assign(**{f"_key_{c}": text_column(rows, c) for c in others}).groupby(list(cell), sort=False)[
            [f"_key_{c}" for c in others]].nunique()
        mixed = spread[(spread > 1).any(axis=1)]
        if not mixed.empty:
            where = mixed.index[0] if isinstance(mixed.index[0], tuple) else (mixed.index[0],)
            mask = pd.Series(True, index=rows.index)
            for column, value in zip(cell, where):
                mask &= rows[column] == value
            differing = [c[len("_key_"):] for c in mixed.columns if mixed.iloc[0][c] > 1]
            raise BenchmarkError(
                f"{what}: the mean over {', '.join(over)} at {dict(zip(cell, where))} would also mix rows that "
                f"differ in {', '.join(differing)}:\n{_describe(rows[mask], besides=over)}\n"
                f"They are different numbers, not repeats; this is a bug in the table's labels, please report it")
    stats = rows.groupby(list(cell), sort=False)[values].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].where(stats["count"] > 1, 0.0)
    return stats.rename(columns={"count": "n"})
