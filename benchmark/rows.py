"""What the report's parts share: reading result rows (headline metrics, text columns) and
writing figures atomically. Task families' report hooks use them too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import atomic_output

# normals: angular errors in degrees (lower is better) and the share of pixels within 11.25 degrees
# transfer protocol (benchmark.datasets.transfer.METRICS): mean per-class accuracy, VOC2007 11-point mAP
HEADLINE_METRICS = ("mAP", "top1", "mAP_mean", "top1_mean", "mean_error", "median_error", "within_11.25",
                    "mean_per_class", "voc07_11point_map")
LOWER_IS_BETTER = ("mean_error", "median_error")


def text_column(df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` as text ('' for missing, '4' rather than '4.0'), or '' everywhere without it."""
    if column not in df:
        return pd.Series("", index=df.index)
    return df[column].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)


def section_label(rows: pd.DataFrame) -> pd.Series:
    """The task of each row, plus its cost selection where the task reports several (the SVM tasks'
    validation-selected and reference test-selected costs are different numbers)."""
    selection = text_column(rows, "cost_selection")
    several = selection.groupby(rows["task"]).transform("nunique") > 1
    return rows["task"].where(~several, rows["task"] + " [cost: " + selection + "]")


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds 'section' (task, plus the cost selection where a task reports several), 'column' and
    'across_layers' (the column's label without its layer): every key column in which a task's
    headline rows differ is in the label, so that each leaderboard cell is one row
    (``one_row_per_cell`` refuses anything else)."""
    section = section_label(rows)
    k = text_column(rows, "k")
    evaluation = text_column(rows, "evaluation")  # training tasks report the best and the final evaluation
    backend = text_column(rows, "backend")  # detection: two backends' numbers never share (or average in) a column
    dataset = text_column(rows, "dataset")
    datasets = dataset.groupby(rows["task"]).transform("nunique") > 1  # a task instance over several datasets
    qualifiers = (evaluation.where(evaluation.eq(""), " (" + evaluation + ")")
                  + backend.where(backend.eq(""), " [" + backend + "]")
                  + (" {" + dataset + "}").where(datasets & dataset.ne(""), ""))
    column = (section + "/" + text_column(rows, "layer") + k.where(k.eq(""), " k=" + k) + ":" + rows["metric"]
              + qualifiers)
    # the same label without the layer: what a best-layer table compares across architectures
    across_layers = section + k.where(k.eq(""), " k=" + k) + ": " + rows["metric"] + qualifiers
    return rows.assign(section=section, column=column, across_layers=across_layers)


def headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate rows (no per-class or per-sample breakdown) of the metrics a leaderboard shows."""
    if df.empty:
        return df
    mask = df["metric"].isin(HEADLINE_METRICS) & text_column(df, "class").eq("") & text_column(df, "sample").eq("")
    return df[mask]


def save_figure(fig, path: Path) -> None:
    """Writes a matplotlib figure atomically (and closes it); a full disk is a DiskFullError."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path, keep_suffix=True) as tmp:  # matplotlib infers the format from the suffix
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
