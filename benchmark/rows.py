"""What the report's parts share: reading result rows (headline metrics, text columns) and
writing figures atomically, each with a record of what it was drawn from, so that a report
redraws only the figures whose rows changed. Task families' report hooks use them too."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import atomic_output, atomic_write

# beside each figure: the digest of what it was drawn from and of the PNG written (see figure_key)
FIGURE_RECORD_SUFFIX = ".inputs.json"

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


def save_figure(fig, path: Path, key: str | None = None) -> None:
    """Writes a matplotlib figure atomically (and closes it); a full disk is a DiskFullError.
    ``key`` (``figure_key``): what the figure was drawn from, recorded beside it so that the next
    report reuses the file while ``figure_is_current``; without one the figure is never reused."""
    import matplotlib.pyplot as plt

    record = figure_record_path(path)
    record.unlink(missing_ok=True)  # a figure being replaced is not the one its old record describes
    try:
        with atomic_output(path, keep_suffix=True) as tmp:  # matplotlib infers the format from the suffix
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    if key is not None:
        atomic_write(record, json.dumps({"inputs": key, "png_sha256": _file_digest(path)}))


def figure_record_path(path: Path) -> Path:
    return path.with_name(path.name + FIGURE_RECORD_SUFFIX)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def _drawing_environment() -> str:
    """The versions a figure's pixels depend on besides its rows and ssl-bench's drawing code: read
    from the installed metadata, so that a report whose figures are all current never imports
    matplotlib."""
    return " ".join([sys.version, f"pandas {pd.__version__}", f"numpy {np.__version__}",
                     f"matplotlib {importlib.metadata.version('matplotlib')}"])


def figure_key(rows: pd.DataFrame, name: str, *drawn_by: str) -> str:
    """A digest of everything a figure is drawn from: its rows (values, columns, dtypes, order),
    ``name`` (which figure), the source of the modules that draw it (``drawn_by``: their
    ``__file__``) and of the helpers every figure uses (this module and tables.py beside it), and
    the library versions. Equal keys give the same PNG."""
    digest = hashlib.sha256()
    for part in (name, _drawing_environment(), rows.to_csv(), rows.dtypes.astype(str).to_csv()):
        digest.update(part.encode())
        digest.update(b"\0")
    for source in dict.fromkeys([*drawn_by, __file__, str(Path(__file__).with_name("tables.py"))]):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def figure_is_current(path: Path, key: str) -> bool:
    """Whether ``path`` is the figure that ``save_figure(..., key=key)`` wrote, unaltered since
    (its record names the same inputs and the PNG's bytes still match it)."""
    try:
        record = json.loads(figure_record_path(path).read_text())
        return record["inputs"] == key and record["png_sha256"] == _file_digest(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False
