"""Integer settings stay integers in the CSV files a run writes: a column that some rows lack
(detection's `iterations`, `batch_size`, `freeze_at` beside per-class rows) is float64 with NaN
inside pandas, and must still be printed `300`, not `300.0`."""

from __future__ import annotations

import csv
import io

import pandas as pd

from benchmark.results import ResultStore, csv_text

DETECTION_ROWS = [
    {"model": "supervised", "task": "detection_voc07", "layer": "res5", "metric": "mAP", "value": 43.82,
     "iterations": 300, "batch_size": 2, "freeze_at": 4, "base_lr": 0.02},
    {"model": "supervised", "task": "detection_voc07", "layer": "res5", "metric": "AP", "class": "cat",
     "value": 40.0},
]
SVM_ROWS = [{"model": "random", "task": "lowshot_voc07", "layer": "res5", "metric": "mAP", "k": "4",
             "value": 12.5, "positives": 40, "cost": 1.0}]


def cells(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_unit_file_keeps_integer_settings_beside_rows_that_lack_them(tmp_path) -> None:
    store = ResultStore(tmp_path)
    text = store.write_unit("supervised/detection_voc07/frozen", DETECTION_ROWS).read_text()
    head, per_class = cells(text)
    assert (head["iterations"], head["batch_size"], head["freeze_at"]) == ("300", "2", "4")
    assert (per_class["iterations"], per_class["batch_size"], per_class["freeze_at"]) == ("", "", "")
    assert "300.0" not in text
    # floats stay floats, integral or not: a metric value of 40.0 and a learning rate
    assert per_class["value"] == "40.0" and head["base_lr"] == "0.02"


def test_results_csv_keeps_integer_columns_across_units(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.write_unit("supervised/detection_voc07/frozen", DETECTION_ROWS)
    store.write_unit("random/lowshot_voc07/res5", SVM_ROWS)
    rows = cells(store.gather().read_text())
    by_metric = {(r["task"], r["metric"]): r for r in rows}
    assert by_metric["detection_voc07", "mAP"]["iterations"] == "300"
    assert by_metric["lowshot_voc07", "mAP"]["positives"] == "40"
    assert by_metric["lowshot_voc07", "mAP"]["iterations"] == ""
    assert by_metric["lowshot_voc07", "mAP"]["cost"] == "1.0"  # written as a float: stays one
    # the numbers read back are the numbers written
    loaded = store.load()
    assert loaded["iterations"].dropna().tolist() == [300.0]
    assert sorted(loaded["value"].tolist()) == [12.5, 40.0, 43.82]


def test_a_column_written_as_floats_in_one_unit_stays_float(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.write_unit("a", [{"model": "a", "task": "t", "metric": "m", "value": 1.0, "iterations": 300}])
    store.write_unit("b", [{"model": "b", "task": "t", "metric": "m", "value": 1.0, "iterations": 300.5}])
    rows = cells(store.gather().read_text())
    assert [r["iterations"] for r in rows] == ["300.0", "300.5"]


def test_csv_text_changes_no_number() -> None:
    frame = pd.DataFrame({"iterations": [300.0, float("nan")], "value": [1.5, 2.0]})
    text = csv_text(frame, {"iterations"}, index=False)
    assert text.splitlines() == ["iterations,value", "300,1.5", ",2.0"]
    back = pd.read_csv(io.StringIO(text))
    pd.testing.assert_frame_equal(back, frame)
