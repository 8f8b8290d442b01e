"""The report's task hook: each task family present in the results contributes its own figures,
found through the registry (the engine names no task); the low-shot curves' data."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.plugin_api import ReportItem, Task
from benchmark.registry import TASKS
from benchmark.report import detail_tables, task_families, task_report_items


class _Toy(Task):
    calls: list = []

    @classmethod
    def report_figures(cls, rows, out_dir):
        cls.calls.append(sorted(set(rows["task"])))
        return [ReportItem(caption="toy", path=out_dir / "toy.png")]


@pytest.fixture
def toy_registered():
    TASKS.names()  # load the entry points first, so the toy is added to the loaded registry
    TASKS._add("toy_report_family", _Toy)
    _Toy.calls.clear()
    yield
    TASKS._items.pop("toy_report_family", None)


def _rows(tasks):
    return pd.DataFrame({"model": "m", "task": tasks, "layer": "res5", "metric": "mAP", "value": 1.0})


def test_instances_are_mapped_to_their_family_through_suite_yaml(tmp_path, toy_registered):
    (tmp_path / "suite.yaml").write_text("tasks:\n  mine_a: {task: toy_report_family}\n"
                                         "  mine_b: {task: toy_report_family}\n  voc07_svm: {task: voc07_svm}\n")
    df = _rows(["mine_a", "voc07_svm", "mine_b", "unknown_plugin"])
    assert task_families(df, tmp_path) == {"toy_report_family": ["mine_a", "mine_b"], "voc07_svm": ["voc07_svm"],
                                           "unknown_plugin": ["unknown_plugin"]}
    items = task_report_items(df, tmp_path, task_families(df, tmp_path))
    # one call per family, with the rows of all its instances; an uninstalled family is skipped
    assert _Toy.calls == [["mine_a", "mine_b"]]
    assert [item.caption for item in items] == ["toy"]


def test_without_suite_yaml_an_instance_named_like_a_task_is_that_task(tmp_path, toy_registered):
    df = _rows(["toy_report_family"])
    task_report_items(df, tmp_path, task_families(df, tmp_path))
    assert _Toy.calls == [["toy_report_family"]]


def test_base_task_adds_nothing(tmp_path):
    assert Task.report_figures(_rows(["x"]), tmp_path) == []


def test_lowshot_curve_data_and_figure(tmp_path):
    from tasks.lowshot.report import LowShotReport, lowshot_curves

    rows = []
    for k, mean, half in ((4, 30.0, 2.5), (1, 10.0, 1.0), (2, 20.0, None)):
        rows.append({"model": "m", "task": "lowshot_voc07", "layer": "res5", "metric": "mAP_mean", "k": str(k),
                     "value": mean, "cost_selection": "cv"})
        if half is not None:
            rows.append({"model": "m", "task": "lowshot_voc07", "layer": "res5", "metric": "mAP_ci95", "k": str(k),
                         "value": half, "cost_selection": "cv"})
        rows.append({"model": "m", "task": "lowshot_voc07", "layer": "res5", "metric": "mAP", "k": str(k),
                     "sample": "1", "value": mean + 1, "cost_selection": "cv"})
    df = pd.DataFrame(rows)
    curves = lowshot_curves(df)
    assert curves["k"].tolist() == [1, 2, 4]  # sorted by k, per-sample rows left out
    assert curves["value"].tolist() == [10.0, 20.0, 30.0]
    assert curves["ci95"].tolist() == [1.0, 0.0, 2.5]  # no interval recorded: drawn without one
    items = LowShotReport.report_figures(df, tmp_path)
    assert [item.path.name for item in items] == ["lowshot_voc07.png"] and items[0].path.stat().st_size > 0


class _ToyDetail(Task):
    detail_title = "Toy detail (test set)"
    evaluator_checks = ("known_answer",)


@pytest.fixture
def toy_detail_registered():
    TASKS.names()
    TASKS._add("toy_detail_family", _ToyDetail)
    yield
    TASKS._items.pop("toy_detail_family", None)


def test_detail_tables_come_from_the_task_class(tmp_path, toy_detail_registered):
    """A task's ``detail_title`` gives its instances a detail table; its ``evaluator_checks`` are put
    after the model's numbers and named in the title; other evaluations are the model's own."""
    rows = pd.DataFrame({
        "model": "m", "task": ["mine"] * 4 + ["other"], "layer": "head",
        "metric": ["err", "err", "err", "acc", "mAP"],
        "evaluation": ["known_answer", "", "final", "", ""], "value": [1.5, 2.5, 3.5, 4.5, 5.5]})
    (tmp_path / "suite.yaml").write_text("tasks:\n  mine: {task: toy_detail_family}\n  other: {task: voc07_svm}\n")
    [(title, table)] = detail_tables(rows, task_families(rows, tmp_path))
    assert title == ("Toy detail (test set): mine (columns marked (known_answer) are the evaluator's own checks, "
                     "not the model's numbers)")
    assert list(table.columns) == ["head:err", "head:err (final)", "head:acc", "head:err (known_answer)"]
    assert table.loc["m"].tolist() == [2.5, 3.5, 4.5, 1.5]
    # a task without a detail title (voc07_svm) or not installed here gets none
    assert detail_tables(rows[rows["task"] == "other"]) == []
    assert detail_tables(rows.assign(task="not_installed")) == []
