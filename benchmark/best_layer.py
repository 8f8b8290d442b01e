"""The best layer per model: one table in which models of different families (ResNet stages, ViT
blocks, AlexNet convs) are read side by side, although they share no layer name.

Goyal et al. 2019 and the papers that follow them report, per model, the number of its best
layer; so does this table, and it names the layer beside each number. The layer is chosen on the
reported (test) metric, as those papers do: the number is a summary for comparison, not a
held-out estimate. Only tasks where some model has several layers get a column; the per-layer
tables stay the full record.
"""

from __future__ import annotations

import pandas as pd

from .rows import LOWER_IS_BETTER, headline_rows, labelled, text_column
from .tables import one_row_per_cell

LAYER_SUFFIX = " [layer]"


def best_layer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and per task/metric label that spans several layers, the row of its best layer
    (highest value; lowest for angular errors). Low-shot rows (per k) and a training task's final
    evaluation are left out: the per-layer tables have them."""
    rows = headline_rows(df)
    if rows.empty:
        return rows
    rows = rows[text_column(rows, "k").eq("") & text_column(rows, "evaluation").isin(["", "best"])]
    rows = labelled(rows.assign(layer=text_column(rows, "layer")))
    layers = rows.groupby(["across_layers", "model"], sort=False)["layer"].transform("nunique")
    spanning = rows.loc[layers > 1, "across_layers"].unique()
    rows = rows[rows["across_layers"].isin(spanning)]
    if rows.empty:
        return rows
    value = pd.to_numeric(rows["value"], errors="coerce")
    score = value.where(~rows["metric"].isin(LOWER_IS_BETTER), -value)
    best = score.groupby([rows["across_layers"], rows["model"]], sort=False).idxmax().dropna()
    return rows.loc[best.to_numpy()].sort_index()


def best_layer_table(rows: pd.DataFrame) -> pd.DataFrame:
    """model x task/metric of ``best_layer_rows``: each number is one row (its model's best layer),
    followed by a '<label> [layer]' column naming that layer. Empty when no task spans several
    layers."""
    if rows.empty:
        return pd.DataFrame()
    values = one_row_per_cell(rows, "model", "across_layers", what="best-layer table")
    layers = one_row_per_cell(rows, "model", "across_layers", values="layer", what="best-layer table")
    table = pd.DataFrame(index=values.index)
    for label in values.columns:
        table[label] = pd.to_numeric(values[label])
        table[label + LAYER_SUFFIX] = layers[label]
    return table


def best_layer_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each number and its layer in one cell ('67.12 (res4)')."""
    out = pd.DataFrame(index=table.index)
    for label in table.columns[::2]:
        layer = table[label + LAYER_SUFFIX]
        out[label] = [f"{v:.2f} ({lay})" if pd.notna(v) else "" for v, lay in zip(table[label], layer)]
    return out
