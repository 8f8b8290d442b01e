"""Significance marks in the leaderboard and report.html, from per-image outcomes saved with the rows."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from benchmark.report import write_comparison, write_report
from benchmark.results import ResultStore
from benchmark.significance import Outcomes, bootstrap_interval, not_worse_than_best
from tests.report_cells import html_tables

PROVENANCE = {"replicate": 0, "device": "cpu:x86_64x2threads", "git_sha": "deadbeef", "wall_time_s": 1.0}
rng = np.random.default_rng(0)
TRUTH = rng.random(300) < 0.7
CORRECT = {"best": TRUTH, "close": np.where(rng.random(300) < 0.03, ~TRUTH, TRUTH),
           "poor": rng.random(300) < 0.4}


def _write(store: ResultStore, model: str, dataset: str, correct: np.ndarray) -> None:
    outcomes = Outcomes("top1", correct.astype(np.float64))
    store.write_unit(f"{model}/knn_{dataset}/pool5", [
        {"model": model, "task": f"knn_{dataset}", "dataset": dataset, "layer": "pool5", "metric": "top1",
         "evaluation": "20-NN", "value": outcomes.value(), "outcomes": outcomes,
         "transfer_column": "knn pool5 20-NN top1", **PROVENANCE},
        {"model": model, "task": f"knn_{dataset}", "dataset": dataset, "layer": "pool5", "metric": "top5",
         "evaluation": "20-NN", "value": 99.0, **PROVENANCE}])


def _run(tmp_path, models=CORRECT, name="run"):
    store = ResultStore(tmp_path / name)
    for model, correct in models.items():
        for dataset in ("food", "dtd"):
            _write(store, model, dataset, correct if dataset == "food" else ~correct)
    return store.run_dir


def _section(md: str, heading: str) -> str:
    start = md.index(heading + "\n")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def _expected():
    outcomes = {m: Outcomes("top1", c.astype(float)) for m, c in CORRECT.items()}
    return outcomes, not_worse_than_best(outcomes)


def test_outcomes_are_kept_beside_the_unit_file(tmp_path):
    run = _run(tmp_path)
    rows = ResultStore(run).load()
    top1 = rows[(rows["metric"] == "top1") & (rows["dataset"] == "food")].iloc[0]
    assert top1["outcomes_file"].endswith(".outcomes.npz") and (run / "units" / top1["outcomes_file"]).is_file()
    assert pd.isna(rows[rows["metric"] == "top5"].iloc[0]["outcomes_file"])  # only the rows that saved some
    read = ResultStore(run).read_outcomes(top1["outcomes_file"], top1["outcomes_entry"])
    assert np.array_equal(read.values, CORRECT[top1["model"]].astype(float)) and read.statistic == "top1"


def test_leaderboard_marks_the_models_not_worse_than_the_best(tmp_path):
    run = _run(tmp_path)
    paths = write_report(run)
    outcomes, p = _expected()
    assert p["poor"] < 0.05 < p["close"]  # the fixture: one model clearly worse, one tied with the best
    md = paths["md"].read_text()
    section = _section(md, "## knn_food")
    for model in CORRECT:
        low, high = bootstrap_interval(outcomes[model])
        value = f"{outcomes[model].value():.2f}"
        shown = f"**{value}**" if p[model] > 0.05 else value
        assert re.search(rf"\| {model} +\| {re.escape(shown)} \[{low:.1f}, {high:.1f}\]", section), model
    assert "Bold: not significantly worse" in section
    # report.html: the same cells bold, with the p-value in the cell's title
    (table,) = [t for t in html_tables(paths["html"].read_text()) if t.title == "knn_food"]
    page = paths["html"].read_text()
    for model in CORRECT:
        value = outcomes[model].value()
        cell = re.search(rf'<td data-v="{float(value)!r}"( class="not-worse")? title="([^"]*)"', page)
        assert bool(cell.group(1)) == (p[model] > 0.05), model
        assert ("p = " in cell.group(2)) and cell.group(2).startswith(f"p = {p[model]:.3g}")
    # the across-datasets table marks per dataset
    across = _section(md, "## Across datasets")
    dtd = not_worse_than_best({m: Outcomes("top1", (~c).astype(float)) for m, c in CORRECT.items()})
    marked = sum(v > 0.05 for v in p.values()) + sum(v > 0.05 for v in dtd.values())
    assert across.count("**") == 2 * marked and "The mean is not tested" in md


def test_compare_marks_across_runs_and_a_damaged_outcomes_file_is_left_out(tmp_path):
    a = _run(tmp_path, {"best": CORRECT["best"], "poor": CORRECT["poor"]}, "a")
    b = _run(tmp_path, {"close": CORRECT["close"]}, "b")
    paths = write_comparison([a, b], tmp_path / "out")
    md = paths["md"].read_text()
    section = _section(md, "## knn_food")
    assert re.search(r"\| b:close +\| \*\*", section) and re.search(r"\| a:best +\| \*\*", section)
    assert not re.search(r"\| a:poor +\| \*\*", section)
    for npz in (b / "units").glob("*.npz"):
        npz.write_bytes(b"not a zip")
    md = write_comparison([a, b], tmp_path / "out")["md"].read_text()
    assert "## Per-image outcomes left out of the significance marks" in md and "cannot be read" in md
    assert re.search(r"\| b:close +\| [0-9.]+ +\|", md)  # still shown, unmarked
