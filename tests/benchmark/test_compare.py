"""``ssl-bench compare``: several runs' models side by side in one leaderboard and report.html."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.report import run_labels, write_comparison
from benchmark.results import ResultStore
from tests.report_cells import check_cells_are_rows, html_tables

PROVENANCE = {"replicate": 0, "device": "cpu:x86_64x2threads", "git_sha": "deadbeef", "wall_time_s": 1.0}


def _run(folder: Path, values: dict[tuple[str, str], float], n_test: int = 8, vit: bool = False) -> Path:
    """A run of voc07_svm rows, (model, layer) -> mAP, plus per-class rows that must stay out of tables."""
    store = ResultStore(folder)
    for (model, layer), value in values.items():
        common = {"model": model, "task": "voc07_svm", "dataset": "voc07", "layer": layer, "n_train": 8,
                  "n_test": n_test, "cost_selection": "3-fold-cv-ap", **PROVENANCE}
        store.write_unit(f"{model}/voc07_svm/{layer}",
                         [{**common, "metric": "AP", "class": "cat", "value": value + 0.5},
                          {**common, "metric": "mAP", "value": value}])
    return folder


def test_two_runs_side_by_side(tmp_path, capsys):
    # the same model name in both runs, a ResNet in one and a ViT in the other: one table, the
    # best layer of each named beside its number
    a = _run(tmp_path / "a" / "goyal", {("dino", "res4"): 40.25, ("dino", "res5"): 55.5, ("random", "res5"): 9.0})
    b = _run(tmp_path / "b" / "goyal", {("dino", "block10"): 61.75, ("dino", "block11"): 60.5})
    out = tmp_path / "compare"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a/goyal:dino" in printed and "b/goyal:dino" in printed  # same folder name: the parent tells them apart
    board = pd.read_csv(out / "leaderboard.csv", index_col="model")
    assert board.loc["a/goyal:dino", "voc07_svm/res5:mAP"] == 55.5
    assert board.loc["b/goyal:dino", "voc07_svm/block10:mAP"] == 61.75
    best = pd.read_csv(out / "leaderboard_best_layer.csv").set_index("model")
    assert best.loc["a/goyal:dino", ["layer", "value"]].tolist() == ["res5", 55.5]
    assert best.loc["b/goyal:dino", ["layer", "value"]].tolist() == ["block10", 61.75]
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows["run"].unique()) == ["a/goyal", "b/goyal"] and len(rows) == 10
    tables = [t for t in html_tables((out / "report.html").read_text()) if t.section == "leaderboard"]
    assert check_cells_are_rows(tables, rows) == 5
    assert "Not comparable" not in printed
    # the runs themselves are untouched: no report was written into them
    assert not (a / "report.html").exists() and not (b / "leaderboard.md").exists()


def test_runs_made_with_other_settings_are_said_to_differ(tmp_path):
    a = _run(tmp_path / "real", {("m", "res5"): 50.0}, n_test=4952)
    b = _run(tmp_path / "synth", {("m", "res5"): 70.0}, n_test=100)
    paths = write_comparison([a, b], tmp_path / "out")
    text = paths["md"].read_text()
    assert "- voc07_svm: the runs differ in n_test (real: 4952; synth: 100)" in text
    assert "the runs differ in n_test" in paths["html"].read_text()


def test_refusals(tmp_path):
    a = _run(tmp_path / "a", {("m", "res5"): 1.0})
    b = _run(tmp_path / "b", {("m", "res5"): 2.0})
    with pytest.raises(BenchmarkError, match="two or more"):
        write_comparison([a], tmp_path / "out")
    with pytest.raises(BenchmarkError, match="is one of the runs"):
        write_comparison([a, b], b)
    with pytest.raises(BenchmarkError, match="not a run directory"):
        write_comparison([a, tmp_path / "nothing"], tmp_path / "out")
    with pytest.raises(BenchmarkError, match="named twice"):
        run_labels([a, a])
    assert not (tmp_path / "out").exists()
    assert main(["compare", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
