"""`linear` on any classification dataset: each recipe's schedule as its source gives it, the task end to
end on generated data (tiny), its top-1 recomputed from the saved heads, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.datasets.images import ImageFileDataset
from benchmark.datasets.synth_classification import synth_classification
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture
from tasks.linear.classification import LinearClassification, recipe_schedule
from tasks.linear.heads import MultiHead, eval_transform
from tests.suites import RANDOM, suite_yaml


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """One intra-op thread on the shared cores."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("linear_data")
    synth_classification(root, num_classes=4, per_split={"train": 8, "test": 3}, min_side=32, max_side=36)
    return root


def test_recipes_follow_their_sources() -> None:
    n = 1_281_167  # ImageNet's training images
    simclr = recipe_schedule("simclr", "resnet50", n)
    assert simclr.lr == pytest.approx(1.6) and simclr.batch_size == 4096 and simclr.decay == "cosine"
    assert simclr.weight_decay == 0.0 and simclr.iterations == 90 * (n // 4096)
    moco = recipe_schedule("mocov2", "resnet50", n)
    assert moco.lr == 30.0 and moco.batch_size == 256 and moco.weight_decay == 0.0 and moco.decay == "step"
    assert moco.milestones == (60 * (n // 256), 80 * (n // 256)) and moco.iterations == 100 * (n // 256)
    dino = recipe_schedule("dino", "resnet50", n)
    assert dino.lr == pytest.approx(0.004) and dino.decay == "cosine" and dino.iterations == 100 * (n // 1024)
    goyal = recipe_schedule("goyal", "resnet50", n)
    assert goyal.lr == 0.01 and goyal.iterations == 140_000 and goyal.milestones == (40_000, 80_000, 120_000)
    assert goyal.weight_decay == 1e-4 and goyal.decay == "step"
    # overrides for tiny runs keep the recipe's shape: MoCo's drops at 60 % and 80 % of the run
    tiny = recipe_schedule("mocov2", "resnet18", 40, epochs=5, batch_size=8, base_lr=1.0)
    assert tiny.iterations == 25 and tiny.milestones == (15, 20) and tiny.lr == pytest.approx(1.0 * 8 / 256)


def test_linear_end_to_end_and_recomputed_top1(tmp_path, data_root) -> None:
    arch = get_architecture("resnet18")
    model = LoadedModel("random", arch, FrozenBackbone(arch, create_model("resnet18", seed=0)), "w0")
    ctx = RunContext(run_dir=tmp_path, data_root=data_root, cache=None, device=torch.device("cpu"), batch_size=16,
                     num_workers=0)
    task = LinearClassification(recipe="dino", image_size=32, epochs=2, batch_size=8, base_lr=0.5,
                                layers=["res5", "pool5"])
    rows = task.run(ctx, model, "all-layers")
    assert [(r["layer"], r["metric"]) for r in rows] == [("res5", "top1"), ("res5", "top5"), ("pool5", "top1"),
                                                         ("pool5", "top5")]
    assert all(r["recipe"] == "dino" and r["schedule"] == "cosine" and r["split"] == "test" for r in rows)
    assert rows[0]["head"] == "pool-linear" and rows[0]["optimizer"] == "sgd-momentum-0.9"  # DINO's: no BN
    assert rows[0]["n_trained"] == 32 and rows[0]["iterations"] == 8  # train + carved val, 4 batches x 2 epochs
    state = torch.load(Path(rows[0]["checkpoint"]), weights_only=True)
    assert state["optimizer"]["param_groups"][0]["nesterov"] is False and "bn.running_mean" not in str(state["heads"])
    heads = MultiHead.build(model.backbone, ["res5", "pool5"], 4, 32, 0, batchnorm=False)
    heads.load_state_dict(state["heads"])
    heads.eval()
    test = sorted((data_root / "synth-classification" / "test").rglob("*.jpg"))
    labels = torch.tensor([int(p.parent.name[-2:]) for p in test])
    images = torch.stack([ImageFileDataset(test, eval_transform(32))[i][0] for i in range(len(test))])
    with torch.no_grad():
        logits = heads(model.backbone.feature_maps(images, ["res5", "pool5"]))
    for row in rows:
        if row["metric"] == "top1":
            expected = 100.0 * float((logits[row["layer"]].argmax(1) == labels).float().mean())
            assert row["value"] == pytest.approx(expected)
    assert np.isfinite([r["value"] for r in rows]).all()


@pytest.mark.slow
def test_two_processes_on_gloo(tmp_path, data_root) -> None:
    arch = get_architecture("resnet18")
    model = LoadedModel("random", arch, FrozenBackbone(arch, create_model("resnet18", seed=0)), "w0")
    ctx = RunContext(run_dir=tmp_path, data_root=data_root, cache=None, device=torch.device("cpu"), batch_size=16,
                     num_workers=0)
    rows = LinearClassification(recipe="simclr", image_size=32, epochs=1, batch_size=8, base_lr=0.5,
                                world_size=2).run(ctx, model, "all-layers")
    assert rows[0]["world_size"] == 2 and rows[0]["iterations"] == 4
    state = torch.load(Path(rows[0]["checkpoint"]), weights_only=True)
    assert state["done"] and state["rank_divergence"] == 0.0  # both ranks hold the same head


@pytest.mark.slow
def test_cli(tmp_path, data_root) -> None:
    from benchmark.cli import main

    config = tmp_path / "bench.yaml"
    options = {"recipe": "mocov2", "image_size": 32, "epochs": 1, "batch_size": 8, "base_lr": 1.0}
    config.write_text(suite_yaml(data_root, {"random": RANDOM}, {"linear": options}))
    out = tmp_path / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    df = pd.read_csv(out / "tiny" / "results.csv", keep_default_na=False)
    df = df[df.task == "linear"]
    assert sorted(df.metric) == ["top1", "top5"] and set(df.layer) == {"pool5"} and (df.recipe == "mocov2").all()
