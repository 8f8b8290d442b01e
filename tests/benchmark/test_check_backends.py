"""``ssl-bench check`` keys detection rows on their backend: a detectron2 number is not the
torchvision number of the same model, layer and metric. References and rows without a backend
column join as they always did."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmark.check import JOIN, compare, read_reference, write_reference
from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.results import ResultStore


def _detection(backend: str, ap50: float = 41.5, ap: float = 20.25) -> list[dict]:
    common = {"model": "random", "task": "detection_voc07", "dataset": "voc07", "layer": "frozen",
              "determinism": "exact", "backend": backend}
    return [{**common, "metric": "AP50", "value": ap50}, {**common, "metric": "AP", "value": ap}]


SVM = [{"model": "random", "task": "voc07_svm", "dataset": "voc07", "layer": "res5", "metric": "mAP",
        "value": 30.5, "determinism": "exact"}]  # a task whose rows carry no backend column


def _run(root: Path, backend: str, **values) -> Path:
    """A run directory holding two finished units, written through the store as a run writes them."""
    store = ResultStore(root)
    store.write_unit("random/detection_voc07/frozen", _detection(backend, **values))
    store.write_unit("random/voc07_svm/res5", SVM)
    return root


def _check(capsys, run: Path, reference: Path, *extra: str) -> tuple[int, str]:
    code = main(["check", str(run), "--against", str(reference), *extra])
    return code, capsys.readouterr().out


@pytest.fixture()
def torchvision_reference(tmp_path, capsys) -> Path:
    reference = tmp_path / "reference.csv"
    assert main(["check", str(_run(tmp_path / "tv", "torchvision")), "--against", str(reference), "--update"]) == 0
    capsys.readouterr()
    return reference


def test_a_reference_records_the_backend_and_the_same_backend_passes(tmp_path, torchvision_reference, capsys) -> None:
    ref, _ = read_reference(torchvision_reference)
    assert list(ref.columns[:len(JOIN) + 2]) == JOIN + ["backend", "value"]
    assert sorted(ref["backend"]) == ["", "torchvision", "torchvision"]  # '' for the SVM row
    code, out = _check(capsys, _run(tmp_path / "again", "torchvision"), torchvision_reference, "--tolerance", "0")
    assert code == 0 and "3 metrics compared" in out and "0 missing, 0 not covered" in out and "RESULT: OK" in out
    assert "records no backend" not in out and "were made with backend" not in out  # nothing to say
    per_row = pd.read_csv(tmp_path / "again" / "check.csv", keep_default_na=False)
    assert sorted(per_row["backend"]) == ["", "torchvision", "torchvision"]


def test_a_detectron2_run_is_not_covered_by_a_torchvision_reference(tmp_path, torchvision_reference, capsys) -> None:
    # the very same numbers: joined without the backend they would pass
    code, out = _check(capsys, _run(tmp_path / "d2", "detectron2"), torchvision_reference)
    assert code == 1 and "RESULT: FAIL" in out
    assert "1 metrics compared" in out and "2 missing, 2 not covered by the reference" in out
    assert "2 metric(s) of the run were made with backend 'detectron2' and are held by the reference with " \
           "backend 'torchvision'" in out
    missing = out.split("### missing from the run")[1].split("###")[0]
    uncovered = out.split("### not covered by the reference")[1].split("\n\n")[1]  # its table
    assert missing.count("torchvision") == 2 and "detectron2" not in missing
    assert uncovered.count("detectron2") == 2 and "torchvision" not in uncovered
    # --allow-new lets new rows through, never missing ones: still a failure
    assert _check(capsys, tmp_path / "d2", torchvision_reference, "--allow-new")[0] == 1
    # the comparison itself: only the SVM row (no backend on either side) is compared
    run = ResultStore(tmp_path / "d2").load()
    ref, _ = read_reference(torchvision_reference)
    result = compare(run, ref, tolerance=0)
    assert result["compared"]["task"].tolist() == ["voc07_svm"]
    assert sorted(result["new"]["backend"]) == ["detectron2"] * 2


def test_an_older_reference_without_backend_joins_as_before(tmp_path, torchvision_reference, capsys) -> None:
    ref, _ = read_reference(torchvision_reference)
    older = tmp_path / "older.csv"
    write_reference(ref.drop(columns=["backend"]), older)
    assert "backend" not in older.read_text().splitlines()[1].split(",")
    for backend in ("torchvision", "detectron2"):
        code, out = _check(capsys, _run(tmp_path / backend, backend), older, "--tolerance", "0")
        assert code == 0 and "3 metrics compared" in out and "0 moved beyond tolerance, 0 missing, 0 not covered" in out
        assert "records no backend" in out and f"made with backend {backend}." in out
    # a moved number still moves, whatever the backend
    code, out = _check(capsys, _run(tmp_path / "moved", "detectron2", ap50=41.75), older, "--tolerance", "0")
    assert code == 1 and "1 moved beyond tolerance" in out


def test_rows_without_a_backend_column_join_as_before(tmp_path, torchvision_reference) -> None:
    """A run whose rows carry no backend (an older run, or tasks without one) against a reference
    that has the column: the backend is no key, exactly the join of before."""
    run = pd.DataFrame([{**row, "backend": None} for row in _detection("")] + SVM).drop(columns=["backend"])
    ref, _ = read_reference(torchvision_reference)
    result = compare(run, ref, tolerance=0)
    assert len(result["compared"]) == 3 and len(result["missing"]) == len(result["new"]) == 0
    assert "backend" not in result["compared"]


def test_both_backends_of_one_metric_are_two_reference_rows(tmp_path, torchvision_reference) -> None:
    ref, _ = read_reference(torchvision_reference)
    d2 = ref[ref["backend"] == "torchvision"].assign(backend="detectron2", value=[50.0, 25.0])
    both = tmp_path / "both.csv"
    write_reference(pd.concat([ref, d2], ignore_index=True), both)
    ref_both, _ = read_reference(both)  # not duplicated keys: the backend tells them apart
    assert len(ref_both) == 5
    run = ResultStore(_run(tmp_path / "d2", "detectron2", ap50=50.0, ap=25.0)).load()
    result = compare(run, ref_both, tolerance=0)
    compared = result["compared"].set_index("metric")
    assert len(compared) == 3 and compared.loc["AP50", "value_reference"] == 50.0
    assert sorted(result["missing"]["backend"]) == ["torchvision"] * 2 and result["new"].empty
    # the same backend twice is a duplicate, as any repeated key
    write_reference(pd.concat([ref, ref[ref["backend"] == "torchvision"]], ignore_index=True), both)
    with pytest.raises(BenchmarkError, match=r"duplicated keys \(.*evaluation, backend\)"):
        read_reference(both)
