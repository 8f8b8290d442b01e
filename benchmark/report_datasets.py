"""Leaderboard section "Across datasets": for every result column that a task marks comparable
across datasets (rows with a ``transfer_column``, e.g. "knn pool5 20-NN top1"), a models x datasets
table with the mean over the datasets (where a column has two datasets or more). A model that
lacks a dataset gets no mean (an average over different datasets would not compare)."""

from __future__ import annotations

import pandas as pd

from .tables import one_row_per_cell


def mean_label(datasets: int) -> str:
    """The aggregate column's label: what it averages and over how many rows."""
    return f"mean of {datasets} datasets"


def across_datasets(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if df.empty or "transfer_column" not in df:
        return {}
    rows = df[df["transfer_column"].fillna("").astype(str) != ""]
    tables = {}
    for column, sub in rows.groupby("transfer_column", sort=False):
        table = one_row_per_cell(sub, "model", "dataset", what=f"across datasets, {column}")
        if table.shape[1] < 2:
            continue  # one dataset: its task's own table says it all
        table[mean_label(table.shape[1])] = table.mean(axis=1, skipna=False)
        tables[column] = table
    return tables


def across_datasets_lines(df: pd.DataFrame, stores: dict | None = None, notes: list[str] | None = None) -> list[str]:
    """The section's markdown; where models saved per-image outcomes (``stores``: run label ->
    ResultStore), each dataset's column marks the models not significantly worse than its best."""
    from .report_significance import LEGEND, markdown_cells, significance_marks

    tables = across_datasets(df)
    if not tables:
        return []
    lines = ["## Across datasets", "",
             "Each table: one comparable number per dataset (its task's own table above has the details) and "
             "their mean; a model missing a dataset has no mean.", ""]
    rows = df[df["transfer_column"].fillna("").astype(str) != ""]
    for column, table in tables.items():
        marks = significance_marks(rows[rows["transfer_column"] == column], ("model", "dataset"), stores or {},
                                   notes if notes is not None else []) if stores else {}
        if marks:
            lines += [f"### {column}", "", markdown_cells(table, marks).to_markdown(), "",
                      LEGEND + " The mean is not tested.", ""]
        else:
            lines += [f"### {column}", "", table.to_markdown(floatfmt=".2f"), ""]
    return lines
