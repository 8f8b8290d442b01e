"""The SVM tasks declare their SVM options once (tasks.common.SVM_OPTIONS), each at the same place
of its declaration, so names, defaults and checks cannot drift apart between them."""

from __future__ import annotations

import pytest

from benchmark.errors import ConfigError
from benchmark.options import declared, validate
from benchmark.registry import TASKS
from tasks.common import SVM_OPTIONS, SVMTask

SVM_TASKS = ("voc07_svm", "lowshot_voc07", "lowshot_places205")


def test_every_svm_task_declares_the_shared_svm_options() -> None:
    assert sorted(name for name in TASKS.names() if issubclass(TASKS.get(name), SVMTask)) == sorted(SVM_TASKS)
    assert list(SVM_OPTIONS) == ["costs", "folds", "n_jobs", "solver", "svm_device", "svm_precision"]
    for name in SVM_TASKS:
        spec = declared(TASKS.get(name).options)
        assert all(spec[key] is option for key, option in SVM_OPTIONS.items()), name
        keys = list(spec)  # one block, in the order the tasks declared them before they shared it
        start = keys.index("costs")
        assert keys[start:start + len(SVM_OPTIONS)] == list(SVM_OPTIONS), name


@pytest.mark.parametrize("name", SVM_TASKS)
def test_shared_defaults_and_checks(name) -> None:
    config = validate({}, TASKS.get(name).options, name)
    assert {key: config[key] for key in SVM_OPTIONS} == {"costs": "reference", "folds": 3, "n_jobs": 2,
                                                         "solver": "torch", "svm_device": "auto",
                                                         "svm_precision": "mixed"}
    for key, bad, expected in (("folds", 1, "an integer >= 2"), ("n_jobs", 0, "an integer >= 1 or one of -1"),
                               ("solver", "sklearn", "one of 'torch', 'liblinear'"),
                               ("costs[0]", [0.0], "a number > 0"), ("svm_device", "gpu", "")):
        with pytest.raises(ConfigError) as info:
            validate({key.split("[")[0]: bad}, TASKS.get(name).options, f"task {name}")
        assert str(info.value).startswith(f"task {name}.{key}: ") and expected in str(info.value)
