"""Every registered task knows the name it is registered and configured under."""

from __future__ import annotations

import importlib

import pytest

from benchmark.registry import TASKS

BUILT_IN = {
    "voc07_svm": "tasks.voc07_svm",
    "lowshot_voc07": "tasks.lowshot.voc07",
    "lowshot_places205": "tasks.lowshot.places205",
    "linear_places205": "tasks.linear.places205",
    "detection_voc07": "tasks.detection.voc07",
    "normals_nyuv2": "tasks.normals.nyuv2",
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_task_sets_its_name(name) -> None:
    task = TASKS.get(name)
    assert task.__module__ == BUILT_IN[name]
    assert "name" in vars(task) and task.name == name  # on the class itself, not left to the registry
    assert importlib.import_module(BUILT_IN[name]).NAME == name


def test_every_registered_task_has_its_registry_name() -> None:
    for name in TASKS.names():
        assert TASKS.get(name).name == name
