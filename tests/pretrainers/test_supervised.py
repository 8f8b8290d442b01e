"""The supervised pretrainer: trains, saves a strict-loading checkpoint, resumes after a kill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import benchmark.training as training
import benchmark.training.loop as loop
import pretrainers.supervised as supervised
from benchmark.datasets.synth_voc import synth_voc07
from benchmark.plugin_api import RunContext
from benchmark.features import FeatureCache

pytestmark = pytest.mark.usefixtures("single_thread")
OPTIONS = {"arch": "resnet18", "image_size": 32, "epochs": 3, "batch_size": 16, "lr": 0.05}


def _ctx(tmp: Path, data: Path) -> RunContext:
    return RunContext(run_dir=tmp, data_root=data, cache=FeatureCache(tmp / "cache"), device=torch.device("cpu"),
                      num_workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sup")
    synth_voc07(root, n_images=48, seed=5)
    return root


def test_killed_training_resumes_to_the_uninterrupted_weights(data, tmp_path, monkeypatch) -> None:
    pretrainer = supervised.Supervised(**{**supervised.Supervised.options, **OPTIONS})
    whole = pretrainer.build(_ctx(tmp_path / "a", data), "sup")

    saves = []
    real_save = training.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 2:  # after the second epoch's checkpoint: the job is killed
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "atomic_torch_save", save_then_die)  # supervised.py imports it where it saves
    monkeypatch.setattr(loop, "atomic_torch_save", save_then_die)  # the training loop's checkpoints
    with pytest.raises(KeyboardInterrupt):
        pretrainer.build(_ctx(tmp_path / "b", data), "sup")
    partial = saves[-1]
    assert partial.name.endswith(".partial.pth") and torch.load(partial, weights_only=True)["epoch"] == 2
    monkeypatch.setattr(training, "atomic_torch_save", real_save)
    monkeypatch.setattr(loop, "atomic_torch_save", real_save)
    resumed = pretrainer.build(_ctx(tmp_path / "b", data), "sup")
    assert not partial.exists()
    assert resumed.weights == whole.weights  # bit-identical trunk
    assert resumed.info["loss_history"] == whole.info["loss_history"]
    assert len(whole.info["loss_history"]) == 3


def test_checkpoint_is_reused_not_retrained(data, tmp_path, monkeypatch) -> None:
    pretrainer = supervised.Supervised(**{**supervised.Supervised.options, **OPTIONS, "epochs": 1})
    first = pretrainer.build(_ctx(tmp_path, data), "sup")
    monkeypatch.setattr(supervised.Supervised, "train", lambda *a, **k: pytest.fail("trained again"))
    assert pretrainer.build(_ctx(tmp_path, data), "sup").weights == first.weights
