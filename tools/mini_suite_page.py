"""Writes docs/mini-suite.md: the headline numbers of the mini suite, read from the stored
reference (results/reference/goyal2019-mini.csv), so that no number on the page is typed by hand.

    python tools/mini_suite_page.py > docs/mini-suite.md

tests/test_docs.py regenerates the page and fails when the file differs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "results" / "reference" / "goyal2019-mini.csv"


@dataclass
class Table:
    title: str
    rows_match: dict[str, str]  # column -> required value (the reference is read as text)
    columns_from: str  # the column whose values become the table's columns
    columns: list[str]  # which of them, in order
    column_label: str = "{}"
    row_label: str = "model"
    note: str = ""
    # few-shot columns show the mean over draws, stored under another metric (top1_mean)
    few_shot_metric: str = ""
    # column -> the metric its rows hold, where columns report different metrics (the transfer datasets)
    column_metrics: dict[str, str] | None = None


TABLES = [
    Table("VOC07 linear SVM, mAP per layer (ResNet-18)",
          {"task": "voc07_svm", "metric": "mAP", "class": ""}, "layer", ["conv1", "res2", "res3", "res4", "res5"]),
    Table("VOC07 linear SVM, mAP per block (ViT-Tiny, 4 blocks)",
          {"task": "voc07_svm_vit", "metric": "mAP", "class": ""}, "layer",
          ["block0", "block1", "block2", "block3", "last4_cls"]),
    Table("Places205 linear classifiers, top-1 (best evaluation)",
          {"task": "linear_places205", "metric": "top1", "evaluation": "best"}, "layer",
          ["res3", "res4", "res5", "pool5"]),
    Table("Low-shot VOC07, res5, mean mAP over samples (cost chosen on validation)",
          {"task": "lowshot_voc07", "metric": "mAP_mean", "layer": "res5", "cost_selection": "validation"},
          "k", ["1", "2", "4", "8", "16"], column_label="k={}"),
    Table("Low-shot Places205, res5, mean top-1 over samples (cost chosen on validation)",
          {"task": "lowshot_places205", "metric": "top1_mean", "layer": "res5", "cost_selection": "validation"},
          "k", ["1", "2", "4", "8", "16"], column_label="k={}"),
    Table("Detection on VOC07 test (frozen trunk, RPN proposals)",
          {"task": "detection_voc07", "class": "", "evaluation": ""}, "metric", ["mAP", "mAP_all", "mAP50_95"]),
    Table("Surface normals on NYUv2 test (rendered rooms)",
          {"task": "normals_nyuv2", "evaluation": ""}, "metric",
          ["mean_error", "median_error", "within_11.25", "within_22.5", "within_30"]),
    Table("kNN on the generated classification set, top-1 on test (20-NN, full bank)",
          {"task": "knn", "metric": "top1", "evaluation": "20-NN", "k": "", "sample": ""}, "layer", ["res5", "pool5"]),
    Table("Logistic regression, pool5, top-1 on test (C chosen on validation)",
          {"task": "logreg", "metric": "top1", "layer": "pool5", "sample": ""}, "k", ["", "1", "5"],
          few_shot_metric="top1_mean", note="The few-shot columns are means over 3 draws."),
    Table("Linear probe grid, top-1 on test of the head chosen on validation",
          {"task": "linear_probe", "metric": "top1"}, "layer", ["all", "res3", "res4", "res5", "pool5"]),
    Table("Linear heads trained from images (`linear`, goyal recipe scaled down), top-1 on test",
          {"task": "linear", "metric": "top1"}, "layer", ["res4", "res5", "pool5"]),
    Table("Kornblith et al.'s linear protocol on three transfer datasets, pool5, each dataset's metric on test",
          {"layer": "pool5", "class": "", "evaluation": ""}, "task",
          ["logreg_cifar10", "logreg_flowers102", "logreg_voc2007"],
          column_metrics={"logreg_cifar10": "top1", "logreg_flowers102": "mean_per_class",
                          "logreg_voc2007": "voc07_11point_map"},
          note="CIFAR-10: top-1; Flowers-102: mean per-class accuracy; VOC2007: 11-point mAP (one binary "
               "classifier per class). The regularisation is chosen on validation among 45 values, then refit "
               "on train + validation."),
    Table("Fine-tuning the whole network on CIFAR-10's format (`finetune`), top-1",
          {"task": "finetune", "metric": "top1"}, "evaluation", ["val lr0.01-wd0.0001", "val lr0.1-wd0.0001", "test"],
          note="The two grid points' validation accuracies, then the chosen point retrained on train + "
               "validation and scored once on test."),
]

FEW_SHOT_LABELS = {"": "full data", "1": "1-shot (mean)", "5": "5-shot (mean)"}


def load(path: Path = REFERENCE) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)


def table_lines(reference: pd.DataFrame, table: Table) -> list[str]:
    rows = reference
    if table.few_shot_metric:
        few_shot = (rows["k"] != "") & (rows["metric"] == table.few_shot_metric)
        rows = rows.assign(metric=rows["metric"].where(~few_shot, table.rows_match["metric"]))
        rows = rows[(rows["k"] == "") | few_shot]
    for column, value in table.rows_match.items():
        rows = rows[rows[column] == value]
    if table.column_metrics:
        rows = rows[rows["metric"] == rows[table.columns_from].map(table.column_metrics)]
    rows = rows[rows[table.columns_from].isin(table.columns)]
    if rows.empty:
        raise ValueError(f"no reference rows for table {table.title!r}")
    models = list(dict.fromkeys(rows["model"]))
    labels = [FEW_SHOT_LABELS[c] if table.few_shot_metric else table.column_label.format(c) for c in table.columns]
    lines = [f"### {table.title}", "", "| model | " + " | ".join(labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for model in models:
        cells = []
        for column in table.columns:
            found = rows[(rows["model"] == model) & (rows[table.columns_from] == column)]["value"]
            if len(found) > 1:
                raise ValueError(f"{table.title}: {len(found)} rows for {model} / {column}")
            cells.append(f"{float(found.iloc[0]):.2f}" if len(found) else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines + ([""] + [table.note] if table.note else []) + [""]


def page(reference: pd.DataFrame | None = None) -> str:
    reference = load() if reference is None else reference
    lines = [
        "# The mini suite's numbers",
        "",
        "`make demo` runs the suite `goyal2019-mini` of `benchmark.yaml` on generated images in the",
        "real VOC2007, Places205 and NYUv2 formats and three of the twelve transfer datasets in theirs",
        "(64-pixel images, a few hundred SGD steps per training). These are the values stored in its",
        "regression reference, `results/reference/goyal2019-mini.csv` (the seed-0 run); this page is",
        "generated from that file (`python tools/mini_suite_page.py > docs/mini-suite.md`), and a test",
        "fails when it is out of date.",
        "",
        "The numbers show that every code path runs and what the regression check holds, not what the",
        "methods can do: on 600 generated images, only the `supervised` trunk learns much, and the",
        "pretext methods need far more steps than this budget. Trained numbers move by several points",
        "with the seed or the processor; see [regression checks](regression-checks.md).",
        "",
    ]
    for table in TABLES:
        lines += table_lines(reference, table)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(page())
