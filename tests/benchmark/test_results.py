"""The results store (atomic per-unit CSVs, resume by config hash) and the leaderboard report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import BenchmarkError
from benchmark.report import convergence_notes, leaderboard, write_report
from benchmark.paths import atomic_write
from benchmark.results import KEY_COLUMNS, ResultStore, unit_filename

PROVENANCE = {"ssl_bench_version": "0.1.0", "git_sha": "abc1234", "device": "cpu", "seed": 0}


def _svm_rows(model: str, layer: str, mAP: float, aps: dict[str, float], not_converged: int = 0,
              config_hash: str = "h1") -> list[dict]:
    """Rows as voc07_svm + the runner produce them: per-class AP rows and one mAP row."""
    common = {"model": model, "task": "voc07_svm", "dataset": "voc07", "layer": layer, "config_hash": config_hash,
              "cost_list": "reference", "cost_selection": "3-fold-cv-ap", "n_train": 8, "n_test": 8,
              **PROVENANCE}
    rows = [{**common, "metric": "AP", "class": cls, "value": ap, "fits": 79, "not_converged": 0, "note": ""}
            for cls, ap in aps.items()]
    rows.append({**common, "metric": "mAP", "class": "", "value": mAP, "fits": 79 * len(aps),
                 "not_converged": not_converged, "note": ""})
    return rows


# --- ResultStore -------------------------------------------------------------------------------------


def test_unit_filename_is_safe_and_injective() -> None:
    assert unit_filename("random/voc07_svm/res5").startswith("random__voc07_svm__res5--")
    assert unit_filename("a b/c:d").startswith("a__b__c__d--")
    names = ["moco v2/voc07_svm/res5", "moco:v2/voc07_svm/res5", "moco__v2/voc07_svm/res5", "moco  v2/voc07_svm/res5"]
    files = [unit_filename(name) for name in names]
    assert len(set(files)) == len(names)
    assert all("/" not in f and f.endswith(".csv") and not f.startswith(".") for f in files)
    assert not unit_filename("../../etc/passwd").startswith(".")


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    values = [1 / 3, 0.1 + 0.2, 88.04123456789012, 1e-12, -0.0, 123456789.123]
    rows = [{"model": "m", "task": "t", "layer": "res5", "metric": "AP", "class": f"c{i}", "value": v,
             "note": text, "config_hash": "0123abc"}
            for i, (v, text) in enumerate(zip(values, ["", "NA", "a, b", 'say "hi"', "None", "x\ty"]))]
    path = store.write_unit("m/t/res5", rows)
    assert path == tmp_path / "units" / unit_filename("m/t/res5") and path.name.startswith("m__t__res5--")
    df = store.load()
    assert len(df) == len(values)
    assert df["value"].tolist() == values  # exact: CSV keeps the shortest round-trip repr
    assert df["class"].tolist() == [f"c{i}" for i in range(len(values))]
    assert df["note"].tolist()[1:] == ["NA", "a, b", 'say "hi"', "None", "x\ty"]
    assert math.isnan(df["note"].tolist()[0])  # an empty string is missing
    assert (df["config_hash"] == "0123abc").all()  # a hash with a leading 0 is not turned into a number
    assert (df["unit_id"] == "m/t/res5").all()
    # key columns first (missing ones added empty), then value, then the rest
    assert list(df.columns[: len(KEY_COLUMNS) + 1]) == KEY_COLUMNS + ["value"]
    assert df["k"].isna().all() and df["sample"].isna().all()


def test_load_keeps_layer_and_class_as_strings(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_unit("m/lowshot/1", [{"model": "m", "task": "lowshot", "layer": "1", "class": "007", "k": "8",
                                      "sample": "2", "metric": "mAP", "value": 5.0}])
    row = store.load().iloc[0]
    assert (row["layer"], row["class"], row["k"], row["sample"]) == ("1", "007", "8", "2")


def test_is_done_only_for_same_config_hash(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    assert not store.is_done("m/voc07_svm/res5", "h1")
    store.write_unit("m/voc07_svm/res5", _svm_rows("m", "res5", 50.0, {"cat": 40.0, "dog": 60.0}, config_hash="h1"))
    assert store.is_done("m/voc07_svm/res5", "h1")
    assert not store.is_done("m/voc07_svm/res5", "h2")
    assert not store.is_done("m/voc07_svm/res4", "h1")
    # numeric-looking hashes are compared as strings
    store.write_unit("m/voc07_svm/res4", _svm_rows("m", "res4", 1.0, {"cat": 1.0}, config_hash="0012"))
    assert store.is_done("m/voc07_svm/res4", "0012") and not store.is_done("m/voc07_svm/res4", "12")


def test_rewriting_a_unit_replaces_it_and_clears_its_error(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    error = store.write_error("m/t/u", "RuntimeError: boom")
    assert error.read_text() == "RuntimeError: boom"
    store.write_unit("m/t/u", [{"model": "m", "metric": "mAP", "value": 1.0, "config_hash": "a"}])
    store.write_unit("m/t/u", [{"model": "m", "metric": "mAP", "value": 2.0, "config_hash": "b"}])
    assert not error.exists()
    df = store.load()
    assert df["value"].tolist() == [2.0] and store.is_done("m/t/u", "b") and not store.is_done("m/t/u", "a")


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for layer in ("conv1", "res5"):
        store.write_unit(f"m/voc07_svm/{layer}", _svm_rows("m", layer, 10.0, {"cat": 10.0}))
    store.gather()
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    units = [unit_filename(f"m/voc07_svm/{layer}") for layer in ("conv1", "res5")]
    assert names == sorted(units + [u.replace(".csv", ".record.json") for u in units] + ["results.csv"])


def test_atomic_write_keeps_old_content_when_replace_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "x.csv"
    atomic_write(path, "old\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("benchmark.results.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]  # the temporary file is removed


def test_gather_writes_all_rows(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_unit("a/voc07_svm/res5", _svm_rows("a", "res5", 80.0, {"cat": 70.0, "dog": 90.0}))
    store.write_unit("b/voc07_svm/res5", _svm_rows("b", "res5", 30.0, {"cat": 20.0, "dog": 40.0}))
    path = store.gather()
    assert path == tmp_path / "results.csv"
    df = pd.read_csv(path)
    assert len(df) == 6
    assert sorted(df["unit_id"].unique()) == ["a/voc07_svm/res5", "b/voc07_svm/res5"]
    assert df.loc[df["metric"] == "mAP"].set_index("model")["value"].to_dict() == {"a": 80.0, "b": 30.0}


def test_empty_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    assert store.load().empty
    assert leaderboard(store.load()).empty


# --- report ------------------------------------------------------------------------------------------


def _table_rows() -> pd.DataFrame:
    rows = []
    rows += _svm_rows("moco", "conv1", 20.0, {"cat": 1.0})
    rows += _svm_rows("moco", "res5", 70.0, {"cat": 2.0})
    # model "random": res5 first, conv1 later (column order is first appearance overall)
    rows += _svm_rows("random", "res5", 5.5, {"cat": 4.0}, not_converged=3)
    rows += _svm_rows("random", "conv1", 9.25, {"cat": 5.0})
    # a second task with its own metric
    rows.append({"model": "random", "task": "places205_linear", "dataset": "places205", "layer": "res4",
                 "metric": "top1", "class": "", "value": 12.5, **PROVENANCE})
    rows.append({"model": "random", "task": "places205_linear", "dataset": "places205", "layer": "res4",
                 "metric": "top5", "class": "", "value": 30.0, **PROVENANCE})  # not a headline metric
    return pd.DataFrame(rows)


def test_leaderboard_pivots_models_by_task_and_layer() -> None:
    table = leaderboard(_table_rows())
    expected = pd.DataFrame(
        [[20.0, 70.0, np.nan], [9.25, 5.5, 12.5]],
        index=pd.Index(["moco", "random"], name="model"),
        columns=pd.Index(["voc07_svm/conv1:mAP", "voc07_svm/res5:mAP", "places205_linear/res4:top1"]),
    )
    pd.testing.assert_frame_equal(table, expected)
    # a second row with the same keys is not averaged into the cell (it was once): an error naming both
    twice = pd.concat([_table_rows(), pd.DataFrame(_svm_rows("moco", "res5", 80.0, {"cat": 3.0}))], ignore_index=True)
    with pytest.raises(BenchmarkError, match=r"(?s)model='moco', column='voc07_svm/res5:mAP'.*value=70.0.*value=80.0"):
        leaderboard(twice)


def test_convergence_notes() -> None:
    notes = convergence_notes(_table_rows())
    assert notes == ["- random voc07_svm/res5: 3 of 79 SVM fits stopped at the iteration limit without reaching the "
                     "stopping tolerance"]
    df = _table_rows()
    df["not_converged"] = 0
    assert convergence_notes(df) == []


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "run")
    for model, layer, value, bad in [("moco", "conv1", 20.0, 0), ("moco", "res5", 70.0, 0),
                                     ("random", "conv1", 9.25, 0), ("random", "res5", 5.5, 2)]:
        store.write_unit(f"{model}/voc07_svm/{layer}",
                         _svm_rows(model, layer, value, {"cat": value - 1, "dog": value + 1}, not_converged=bad))
    return store.run_dir


def test_write_report_files(run_dir: Path) -> None:
    paths = write_report(run_dir)
    assert {k: p.name for k, p in paths.items()} == {
        "results": "results.csv", "csv": "leaderboard.csv", "md": "leaderboard.md", "png": "leaderboard.png",
        "best_layer_csv": "leaderboard_best_layer.csv", "html": "report.html"}
    best = pd.read_csv(paths["best_layer_csv"])  # each model's best layer: moco res5 (70 > 20), random conv1
    assert best[["model", "layer", "value"]].values.tolist() == [["moco", "res5", 70.0], ["random", "conv1", 9.25]]
    assert best["task_metric"].tolist() == ["voc07_svm: mAP"] * 2
    board = pd.read_csv(paths["csv"], index_col=0)
    assert board.index.tolist() == ["moco", "random"]
    assert board.columns.tolist() == ["voc07_svm/conv1:mAP", "voc07_svm/res5:mAP"]
    assert board.to_numpy().tolist() == [[20.0, 70.0], [9.25, 5.5]]
    png = paths["png"].read_bytes()
    assert len(png) > 1000 and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(pd.read_csv(paths["results"])) == 12
    assert not [p for p in run_dir.rglob(".*") if p.is_file()]  # no temporary files


def test_markdown_report_content(run_dir: Path) -> None:
    md = write_report(run_dir)["md"].read_text()
    assert md.startswith("# Leaderboard: run\n")
    assert "## voc07_svm" in md
    lines = md.splitlines()
    moco = next(line for line in lines if line.startswith("| moco"))
    random_ = next(line for line in lines if line.startswith("| random"))
    assert [c.strip() for c in moco.strip("|").split("|")] == ["moco", "20.00", "70.00"]
    assert [c.strip() for c in random_.strip("|").split("|")] == ["random", "9.25", "5.50"]
    header = next(line for line in lines if "conv1:mAP" in line)
    assert "res5:mAP" in header and "voc07_svm/" not in header
    assert "cost_list=reference" in md and "cost selection: 3-fold-cv-ap" in md
    assert "git abc1234" in md
    assert "## Convergence warnings" in md
    assert "- random voc07_svm/res5: 2 of 158 SVM fits stopped at the iteration limit" in md
    assert "moco voc07_svm" not in md.split("## Convergence warnings")[1]


def test_markdown_report_without_convergence_problems(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_unit("m/voc07_svm/res5", _svm_rows("m", "res5", 42.0, {"cat": 42.0}))
    md = write_report(tmp_path)["md"].read_text()
    assert "| m " in md and "42.00" in md
    assert "Convergence" not in md


def test_report_of_empty_run(tmp_path: Path) -> None:
    paths = write_report(tmp_path)
    assert "No finished results yet." in paths["md"].read_text()
    assert "png" not in paths
