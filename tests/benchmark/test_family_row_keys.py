"""An architecture family declares which of its model's info entries go on every result row
(``FamilyInfo.row_keys``); the engine carries them without naming any family's keys itself."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmark.config import load_suite
from benchmark.plugin_api import LoadedModel, Task
from benchmark.models import FamilyInfo
from benchmark.models.backbone import get_architecture
from benchmark.run import UnitRunner, plan_run
from benchmark.run.units import RunSummary, family_provenance
from tests.suites import RANDOM, suite_yaml, voc07_svm
from tests.paths import REPO

ROOT = REPO


class ToyFamily(FamilyInfo):
    row_keys = ("toy_scale", "toy_means")


class RowsTask(Task):
    """Stands in for the suite's task: one row, and nothing of the model's info."""

    dataset = "toy"

    def units(self, arch):
        return ["res5"]

    def run(self, ctx, model, unit):
        return [{"layer": unit, "metric": "mAP", "value": 0.5}]


def _model(family: FamilyInfo | None, info: dict) -> LoadedModel:
    arch = replace(get_architecture("resnet18"), family_info=family)
    return LoadedModel("random", arch, backbone=None, weights="ab" * 32, info=info)


def _rows(tmp_path: Path, model: LoadedModel) -> pd.DataFrame:
    """The rows the runner writes for one unit of ``model``: provenance made by the engine itself."""
    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(tmp_path / "data", {"random": RANDOM}, {"voc07_svm": voc07_svm(layers=["res5"])}))
    plan = plan_run(load_suite("tiny", config), tmp_path / "run", tmp_path / "cache", device="cpu")
    runner = UnitRunner(plan, log=lambda _: None)
    runner.models["random"] = model
    runner.tasks["voc07_svm"] = RowsTask()
    summary = RunSummary(plan.run_dir)
    runner.run(plan.units[0], summary)
    assert summary.done == [plan.units[0].unit_id], summary.failed
    return pd.read_csv(runner.store.unit_path(plan.units[0].unit_id), keep_default_na=False)


INFO = {"toy_means": [0.25, 0.5], "other": "kept out", "toy_scale": 3, "timm_model": "not this family's"}


def test_a_family_declared_row_key_reaches_the_rows_in_info_order(tmp_path) -> None:
    rows = _rows(tmp_path, _model(ToyFamily(), INFO))
    assert rows.loc[0, "toy_means"] == "0.25 0.5" and rows.loc[0, "toy_scale"] == 3
    columns = list(rows.columns)
    assert columns.index("toy_means") < columns.index("toy_scale")  # the info's order, as before
    # undeclared info entries stay off the rows, whatever another family calls its keys
    assert "other" not in columns and "timm_model" not in columns


def test_the_base_family_and_no_family_add_no_columns(tmp_path) -> None:
    assert FamilyInfo.row_keys == () and FamilyInfo().provenance() == {}
    for family in (FamilyInfo(), None):
        model = _model(family, INFO)
        assert model.row_keys() == () and family_provenance(model) == {}
    rows = _rows(tmp_path, _model(None, INFO))
    assert not {"toy_means", "toy_scale", "other", "timm_model"} & set(rows.columns)


def test_timm_family_declares_its_row_keys_and_the_engine_names_none() -> None:
    from benchmark.models.timm_family import TimmInfo

    assert TimmInfo.row_keys == ("timm_model", "native_input_size", "pretrained_cfg_mean", "pretrained_cfg_std",
                                 "input_stats_source", "input_mean", "input_std")
    # the engine's runner holds no family's keys: no string constant in units.py is one of them
    tree = ast.parse((ROOT / "benchmark" / "run" / "units.py").read_text())
    constants = {node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not constants & set(TimmInfo.row_keys)
