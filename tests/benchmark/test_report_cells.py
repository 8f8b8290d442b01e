"""Every number a report shows is one result row, or a labelled aggregate of the rows it names.

A run is built whose rows use every key column (evaluation, backend, cost_selection, k, sample,
replicate, dataset, class), with values that are all different, so that a mean of two rows (what
a silent ``aggfunc="mean"`` shows) matches no row. Every output is rendered and read back:
report.html's tables by an HTML parser, leaderboard.csv and .md as text."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import BenchmarkError
from benchmark.published import load_published
from benchmark.report import write_report
from benchmark.results import ResultStore
from benchmark.scaling import scaling_curves
from benchmark.tables import aggregate_cells, one_row_per_cell
from tests.report_cells import check_cells_are_rows, html_tables
from tests.paths import REPO

PROVENANCE = {"replicate": 0, "device": "cpu:x86_64x2threads", "git_sha": "deadbeef", "wall_time_s": 1.0}


def _rows() -> dict[str, list[dict]]:
    """unit id -> rows; values from one counter so that no two rows hold the same number."""
    counter = iter(np.arange(11.0, 99.0, 0.37).round(4))
    units: dict[str, list[dict]] = {}

    def add(unit: str, **row) -> None:
        units.setdefault(unit, []).append({**row, "value": float(next(counter)), **PROVENANCE})

    for model in ("alpha", "beta"):
        for layer in ("res4", "res5"):
            unit = f"{model}/voc07_svm/{layer}"
            for selection in ("3-fold-cv-ap", "test-selected"):  # two cost selections: two sections
                for cls in ("cat", "dog"):
                    add(unit, model=model, task="voc07_svm", dataset="voc07", layer=layer, metric="AP",
                        **{"class": cls}, cost_selection=selection)
                add(unit, model=model, task="voc07_svm", dataset="voc07", layer=layer, metric="mAP",
                    cost_selection=selection)
            unit = f"{model}/lowshot_voc07/{layer}"
            for k in (1, 4):
                for sample in range(3):
                    add(unit, model=model, task="lowshot_voc07", dataset="voc07", layer=layer, metric="mAP",
                        k=k, sample=sample, cost_selection="validation")
                add(unit, model=model, task="lowshot_voc07", dataset="voc07", layer=layer, metric="mAP_mean", k=k,
                    cost_selection="validation")
                add(unit, model=model, task="lowshot_voc07", dataset="voc07", layer=layer, metric="mAP_ci95", k=k,
                    cost_selection="validation")
            for evaluation in ("best", "final"):
                add(f"{model}/linear_places205/{layer}", model=model, task="linear_places205", dataset="places205",
                    layer=layer, metric="top1", evaluation=evaluation)
        for task, backend in (("detection_voc07", "torchvision"), ("detection_d2", "detectron2")):
            unit = f"{model}/{task}/frozen"
            for metric in ("mAP", "mAP50_95"):
                # the model's number, and the evaluator's check on perturbed ground truth
                add(unit, model=model, task=task, dataset="voc07", layer="frozen", metric=metric, backend=backend)
                add(unit, model=model, task=task, dataset="voc07", layer="frozen", metric=metric,
                    evaluation="perturbed_ground_truth", determinism="exact")
        for metric in ("mean_error", "median_error", "within_11.25"):
            add(f"{model}/normals_nyuv2/res5", model=model, task="normals_nyuv2", dataset="nyuv2", layer="res5",
                metric=metric)
            add(f"{model}/normals_nyuv2/res5", model=model, task="normals_nyuv2", dataset="nyuv2", layer="res5",
                metric=metric, evaluation="mean_normal_baseline")
        for dataset in ("food", "dtd"):  # one task instance per dataset, comparable across datasets
            add(f"{model}/knn_{dataset}/pool5", model=model, task=f"knn_{dataset}", dataset=dataset, layer="pool5",
                metric="top1", k=20, transfer_column="knn pool5 20-NN top1")
    return units


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "keys"
    store = ResultStore(run)
    for unit, rows in _rows().items():
        store.write_unit(unit, rows)
    (run / "suite.yaml").write_text("tasks:\n  knn_food: {task: knn}\n  knn_dtd: {task: knn}\n"
                                    "  detection_d2: {task: detection_voc07}\n")
    return run


def test_every_report_html_cell_is_one_row(run):
    paths = write_report(run, published=["goyal2019"])
    rows = ResultStore(run).load()
    tables = html_tables(paths["html"].read_text())
    shown = [t for t in tables if t.section in ("leaderboard", "details")]
    titles = [t.title for t in shown]
    assert "voc07_svm [cost: 3-fold-cv-ap]" in titles and "voc07_svm [cost: test-selected]" in titles
    assert any(t.startswith("Detection (VOC07 test): detection_voc07") for t in titles)
    assert any(t.startswith("Surface normals (NYUv2 test): normals_nyuv2") for t in titles)
    assert any(t.startswith("Detection (VOC07 test): detection_d2") for t in titles)
    # every headline and detail number: 2 models x (4 SVM + 4 low-shot + 4 linear + 2 x 2 detection + 6 normals
    # + 2 knn) in the leaderboard, 2 x (2 x 4 detection + 6 normals) in the details
    assert check_cells_are_rows(shown, rows) == 2 * 24 + 2 * 14
    # the detail tables: the model's numbers first, the evaluator's checks in their own labelled columns
    detection = next(t for t in shown if t.title.startswith("Detection (VOC07 test): detection_voc07"))
    assert detection.header[1:3] == ["frozen:mAP [torchvision]", "frozen:mAP50_95 [torchvision]"]
    assert "frozen:mAP (perturbed_ground_truth)" in detection.header
    assert "evaluator's own checks" in detection.title
    published = [t for t in tables if t.section == "published"]
    reference = load_published("goyal2019")
    for table in published:  # published numbers: each the value of one published row
        for cells in table.rows:
            for _, value in cells[1:]:
                if value is not None:
                    assert (reference["value"].astype(float) == value).sum() >= 1


def test_leaderboard_csv_and_markdown_cells_are_rows(run):
    paths = write_report(run)
    rows = ResultStore(run).load()
    values = pd.to_numeric(rows["value"])
    board = pd.read_csv(paths["csv"], index_col="model")
    for model, line in board.iterrows():
        for column, value in line.dropna().items():
            assert ((rows["model"] == model) & (values == value)).sum() == 1, (model, column, value)
    rounded = set(values.round(2))
    header, checked, means = [], 0, 0
    for line in paths["md"].read_text().splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not header:
            header = cells
            continue
        numbers = {label: float(c) for label, c in zip(header[1:], cells[1:]) if re.fullmatch(r"-?\d+\.\d\d", c)}
        for label, number in numbers.items():
            if label.startswith("mean of "):  # the labelled aggregate: the mean of the datasets beside it
                others = [v for other, v in numbers.items() if other != label]
                assert len(others) == int(label.split()[2]) and abs(number - np.mean(others)) <= 0.0051, (line, label)
                means += 1
            else:
                assert number in rounded, (line, label, number)
            checked += 1
    assert checked == 2 * 24 + 2 * 3 and means == 2  # the leaderboard's cells, then knn's across-datasets table


def test_a_collision_is_an_error_naming_the_rows():
    rows = pd.DataFrame([{"model": "a", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "value": 44.62},
                         {"model": "a", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "value": 70.58,
                          "evaluation": "perturbed_ground_truth"}])
    with pytest.raises(BenchmarkError, match=r"(?s)leaderboard.*evaluation=perturbed_ground_truth.*value=70.58"):
        one_row_per_cell(rows.assign(column="frozen:mAP"), "model", "column", what="leaderboard")
    table = one_row_per_cell(rows.assign(column=["frozen:mAP", "check"]), "model", "column", what="t")
    assert table.loc["a", "frozen:mAP"] == 44.62 and table.loc["a", "check"] == 70.58


def test_a_labelled_aggregate_counts_its_rows_and_refuses_other_keys():
    rows = pd.DataFrame({"model": "a", "k": [1, 1, 1, 2], "sample": [0, 1, 2, 0], "value": [10.0, 12.0, 17.0, 5.0]})
    stats = aggregate_cells(rows, ["model", "k"], over=["sample"], what="t").set_index("k")
    assert stats.loc[1, "mean"] == 13.0 and stats.loc[1, "n"] == 3 and stats.loc[2, "std"] == 0.0
    assert stats.loc[1, "std"] == pytest.approx(np.std([10, 12, 17], ddof=1))
    mixed = rows.assign(cost_selection=["validation", "validation", "test-selected", "validation"])
    with pytest.raises(BenchmarkError, match="differ in cost_selection"):
        aggregate_cells(mixed, ["model", "k"], over=["sample"], what="t")


def test_scaling_curves_keep_cost_selections_apart():
    rows = []
    for model, fraction, base in (("m.data_fraction-0.25", 0.25, 10.0), ("m.data_fraction-1.0", 1.0, 20.0)):
        for selection, shift in (("3-fold-cv-ap", 0.0), ("test-selected", 3.0)):
            rows.append({"model": model, "task": "voc07_svm", "layer": "res5", "metric": "mAP", "value": base + shift,
                         "cost_selection": selection, "sweep": "m", "sweep:data_fraction": fraction})
    curves = scaling_curves(pd.DataFrame(rows))
    assert sorted(curves["task"].unique()) == ["voc07_svm [cost: 3-fold-cv-ap]", "voc07_svm [cost: test-selected]"]
    assert sorted(curves["mean"]) == [10.0, 13.0, 20.0, 23.0] and set(curves["n"]) == {1}


def test_no_table_is_built_with_a_silent_aggregate():
    """pivot_table's aggfunc (mean by default, or 'first') merges rows unseen: tables go through
    benchmark/tables.py instead."""
    root = REPO
    offenders = [f"{path.relative_to(root)}:{number}"
                 for folder in ("benchmark", "tasks", "pretrainers") for path in sorted((root / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"pivot_table\(|aggfunc\s*=", line)]
    assert offenders == []


def test_best_layer_cells_are_the_best_row_of_their_model(run):
    """The best-layer section: each number is one row, the layer beside it is that row's, and no
    other layer of the same model, task and metric beats it (angular errors: lower is better)."""
    paths = write_report(run)
    rows = ResultStore(run).load()
    values = pd.to_numeric(rows["value"])
    (table,) = [t for t in html_tables(paths["html"].read_text()) if t.section == "best-layer"]
    # two cost selections of voc07_svm are two columns, linear's best evaluation one; normals,
    # detection and knn have one layer and no column
    assert sorted(table.header[1::2]) == ["linear_places205: top1 (best)", "voc07_svm [cost: 3-fold-cv-ap]: mAP",
                                          "voc07_svm [cost: test-selected]: mAP"]
    assert table.header[2::2] == [label + " [layer]" for label in table.header[1::2]]
    checked = 0
    for cells in table.rows:
        model = cells[0][0]
        for label, (_, value), (layer, _) in zip(table.header[1::2], cells[1::2], cells[2::2]):
            if label.startswith("voc07_svm"):
                task, metric, evaluation = "voc07_svm", "mAP", ""
                selection = re.search(r"\[cost: (.*)\]", label).group(1)
            else:
                task, metric, evaluation, selection = "linear_places205", "top1", "best", ""
            candidates = rows[(rows["model"] == model) & (rows["task"] == task) & (rows["metric"] == metric)
                              & rows["class"].isna() & (rows["evaluation"].fillna("") == evaluation)
                              & (rows["cost_selection"].fillna("") == selection)]
            assert ((candidates["layer"] == layer) & (pd.to_numeric(candidates["value"]) == value)).sum() == 1
            assert value == pd.to_numeric(candidates["value"]).max() and len(candidates) == 2
            checked += 1
    assert checked == 2 * 3
    best = pd.read_csv(paths["best_layer_csv"])
    assert len(best) == 6 and all(((rows["model"] == r.model) & (rows["layer"] == r.layer)
                                   & (values == r.value)).sum() == 1 for r in best.itertuples())


def test_the_lowest_angular_error_is_the_best_layer():
    from benchmark.best_layer import best_layer_rows

    rows = pd.DataFrame({"model": ["m"] * 4, "task": ["normals_nyuv2"] * 4, "layer": ["res4", "res5"] * 2,
                         "metric": ["mean_error", "mean_error", "within_11.25", "within_11.25"],
                         "value": [30.0, 25.0, 40.0, 35.0]})
    best = best_layer_rows(rows)
    assert dict(zip(best["metric"], best["layer"])) == {"mean_error": "res5", "within_11.25": "res4"}
