"""The suite files of end-to-end tests, built from the few model and task blocks they share."""

from __future__ import annotations

from pathlib import Path

import yaml

RANDOM = {"pretrainer": "random", "arch": "resnet18"}
RANDOM_SEED1 = {**RANDOM, "seed": 1}
SUPERVISED_1_EPOCH = {"pretrainer": "supervised", "arch": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 16}


def voc07_svm(layers=("res4", "res5"), **options) -> dict:
    """The voc07_svm block of tiny runs: 32 px images, two costs, one process."""
    return {"layers": list(layers), "image_size": 32, "costs": [0.1, 1.0], "n_jobs": 1, **options}


def suite(data: Path | str, models: dict, tasks: dict, **settings) -> dict:
    """One suite: no DataLoader workers and batches of 16, the tiny runs' settings, unless given."""
    return {"data_root": str(data), "num_workers": 0, "batch_size": 16, **settings, "models": models, "tasks": tasks}


def suite_yaml(data: Path | str, models: dict, tasks: dict, *, name: str = "tiny", **settings) -> str:
    return suites_yaml({name: suite(data, models, tasks, **settings)})


def suites_yaml(suites: dict[str, dict]) -> str:
    return yaml.safe_dump({"suites": suites}, sort_keys=False, default_flow_style=None)
