"""finetune: the grid units never read test, the final unit chooses from the grid's files (and
refuses without them), resume after a crash equals an uninterrupted run, label subsets, layer
decay, the CLI end to end. Tiny: random ResNet-18 at 32 px, 4 classes, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import benchmark.datasets.images as images_module
from benchmark.datasets.synth_classification import synth_classification
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.errors import ConfigError, DatasetError
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture
from tasks.finetune.labels import balanced_fraction
from tasks.finetune.task import FINAL, LEARNING_RATES, WEIGHT_DECAYS, Finetune
from tasks.finetune.train import FinetuneNet, bn_momentum, layer_ids, parameter_groups
from tests.suites import RANDOM, suite_yaml

OPTIONS = {"image_size": 32, "learning_rates": [0.01, 0.1], "weight_decays": [0.0], "steps": 3, "batch_size": 8,
           "checkpoint_every": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """One intra-op thread: faster on the shared cores, and the same count for compared runs."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune_data")
    synth_classification(root, num_classes=4, per_split={"train": 10, "test": 3}, min_side=32, max_side=36)
    return root


def loaded_model() -> LoadedModel:
    arch = get_architecture("resnet18")
    return LoadedModel("random", arch, FrozenBackbone(arch, create_model("resnet18", seed=0)), "weights0")


def context(run_dir: Path, data_root: Path) -> RunContext:
    return RunContext(run_dir=run_dir, data_root=data_root, cache=None, device=torch.device("cpu"), batch_size=16,
                      num_workers=0)


def test_the_papers_grid_and_bn_momentum() -> None:
    assert LEARNING_RATES == pytest.approx([1e-4, 10 ** -3.5, 1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5, 0.1], rel=1e-5)
    assert WEIGHT_DECAYS[0] == 0.0 and WEIGHT_DECAYS[1:] == pytest.approx([10 ** (-6 + k / 2) for k in range(7)],
                                                                          rel=1e-5)
    assert bn_momentum(1000) == pytest.approx(0.01)  # max(1 - 10/1000, 0.9) = 0.99 in TF's convention
    assert bn_momentum(5) == pytest.approx(0.1)  # floored at 0.9


def test_grid_units_never_read_test_and_final_chooses_the_best(tmp_path, data_root, monkeypatch) -> None:
    opened: list[str] = []
    original = images_module.open_rgb
    monkeypatch.setattr(images_module, "open_rgb", lambda path: (opened.append(str(path)), original(path))[1])
    task = Finetune(**OPTIONS)
    model, ctx = loaded_model(), context(tmp_path, data_root)
    units = task.units(model.arch)
    assert units == ["lr0.01-wd0", "lr0.1-wd0", FINAL]
    with pytest.raises(ConfigError, match="missing: lr0.01-wd0, lr0.1-wd0"):
        task.run(ctx, model, FINAL)
    test_dir = str(data_root / "synth-classification" / "test")
    grid_rows = []
    for unit in units[:-1]:
        grid_rows += task.run(ctx, model, unit)
    assert opened and not any(p.startswith(test_dir) for p in opened)  # the grid read no test image
    opened.clear()
    final = task.run(ctx, model, FINAL)
    assert {p for p in opened if p.startswith(test_dir)} == {str(p) for p in (data_root / "synth-classification" /
                                                                              "test").rglob("*.jpg")}
    val = {r["lr"]: r["value"] for r in grid_rows if r["metric"] == "top1"}
    best_lr = max(val, key=lambda lr: (val[lr], -list(val).index(lr)))
    row = next(r for r in final if r["metric"] == "top1")
    assert row["lr"] == best_lr and row["chosen"] is True and row["selected_on"] == "val"
    assert row["selection_value"] == val[best_lr] and row["split"] == "test" and row["n_scored"] == 12
    assert row["n_trained"] == 40  # train + carved val: every labelled image
    # the value recomputed from the saved predictions
    state = torch.load(Path(row["checkpoint"]), weights_only=True)
    evaluation = state["evaluation"]
    assert row["value"] == pytest.approx(100 * (evaluation["top5"][:, 0] == evaluation["targets"]).float().mean())
    # a grid result of another configuration is refused
    changed = json.loads(Path(tmp_path / "finetune/finetune/random/grid/lr0.1-wd0.json").read_text())
    changed["protocol"] = "other"
    Path(tmp_path / "finetune/finetune/random/grid/lr0.1-wd0.json").write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match="another configuration or data: lr0.1-wd0"):
        task.run(ctx, model, FINAL)


def test_resume_after_crash_equals_uninterrupted(tmp_path, data_root) -> None:
    task = Finetune(**{**OPTIONS, "steps": 5, "checkpoint_every": 2})
    model = loaded_model()
    clean = task.run(context(tmp_path / "a", data_root), model, "lr0.1-wd0")

    class Crash(Exception):
        pass

    def crash(done: int) -> None:
        if done == 3:
            raise Crash

    ctx = context(tmp_path / "b", data_root)
    with pytest.raises(Crash):
        task.run(ctx, model, "lr0.1-wd0", on_iteration=crash)
    resumed = task.run(ctx, model, "lr0.1-wd0")
    assert [r["value"] for r in resumed] == [r["value"] for r in clean]
    a = torch.load(tmp_path / "a/finetune/finetune/random/lr0.1-wd0/checkpoint.pt", weights_only=True)["net"]
    b = torch.load(tmp_path / "b/finetune/finetune/random/lr0.1-wd0/checkpoint.pt", weights_only=True)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = pd.read_csv(tmp_path / "b/finetune/finetune/random/lr0.1-wd0/log.csv")
    assert list(logged.iteration) == list(range(5))  # the crashed run's extra rows were cut at the checkpoint


def test_trunk_is_trained_and_bn_statistics_move(tmp_path, data_root) -> None:
    model = loaded_model()
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    Finetune(**OPTIONS).run(context(tmp_path, data_root), model, "lr0.1-wd0")
    after = torch.load(tmp_path / "finetune/finetune/random/lr0.1-wd0/checkpoint.pt", weights_only=True)["net"]
    assert not torch.equal(after["trunk.model.conv1.weight"], before["conv1.weight"])
    assert not torch.equal(after["trunk.model.bn1.running_mean"], before["bn1.running_mean"])
    # the model being evaluated is left untouched
    assert all(torch.equal(v, model.backbone.model.state_dict()[k]) for k, v in before.items())


def test_balanced_fraction_is_class_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(5), 40)
    picked = balanced_fraction(labels, 0.1, seed=3)
    assert np.bincount(labels[picked]).tolist() == [4] * 5
    assert np.array_equal(picked, balanced_fraction(labels, 0.1, seed=3))
    assert not np.array_equal(picked, balanced_fraction(labels, 0.1, seed=4))
    assert np.bincount(labels[balanced_fraction(labels, 0.001, seed=0)]).tolist() == [1] * 5  # at least one


def test_label_fraction_and_label_list(tmp_path, data_root) -> None:
    ctx = context(tmp_path, data_root)
    data = Finetune().data(ctx)
    train, val, columns = Finetune(label_fraction=0.5, label_seed=1).labelled(ctx, data)
    assert np.bincount(train.labels).tolist() == [4] * 4 and columns["label_seed"] == 1  # 9 train per class
    assert np.bincount(val.labels).tolist() == [1] * 4  # 1 val image per class: at least one is kept
    names = [data.train.split.image_paths[i] for i in data.train.indices[:3]]
    listing = tmp_path / "labels.txt"
    listing.write_text("".join(f"{p.name}\n" for p in names[:1]) + "\n")
    train, val, columns = Finetune(label_list=str(listing)).labelled(ctx, data)
    # file names repeat across class folders: every image of that name is labelled
    expected = [i for i in data.train.indices if data.train.split.image_paths[i].name == names[0].name]
    assert train.indices.tolist() == expected and columns["label_list"] == str(listing)
    listing.write_text("not_an_image.jpg\n")
    with pytest.raises(DatasetError, match="not in the training or validation part"):
        Finetune(label_list=str(listing)).labelled(ctx, data)
    with pytest.raises(ConfigError, match="set one"):
        Finetune(label_list=str(listing), label_fraction=0.1).labelled(ctx, data)


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.norm = nn.LayerNorm(4)


def test_layer_decay_groups() -> None:
    names = [n for n, _ in TinyViT().named_parameters()]
    ids, count = layer_ids(names)
    assert count == 3 and ids["patch_embed.weight"] == 0 and ids["blocks.2.bias"] == 3 and ids["norm.weight"] == 4
    with pytest.raises(ConfigError, match="layer_decay"):
        layer_ids(["conv1.weight", "fc.weight"])
    net = FinetuneNet(loaded_model().backbone, "pool5", 4, 32, 0)
    groups = parameter_groups(net, 1e-4, None)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


@pytest.mark.slow
def test_cli_end_to_end_and_no_unit_repeats(tmp_path, data_root) -> None:
    from benchmark.cli import main

    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(data_root, {"random": RANDOM}, {"finetune": {**OPTIONS, "steps": 2}}))
    out = tmp_path / "runs"
    command = ["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]
    assert main(command) == 0
    df = pd.read_csv(out / "tiny" / "results.csv", keep_default_na=False)
    df = df[df.task == "finetune"]
    assert set(df.unit_id) == {"random/finetune/lr0.01-wd0", "random/finetune/lr0.1-wd0", "random/finetune/final"}
    final = df[df.evaluation == "test"]
    assert sorted(final.metric) == ["top1", "top5"] and (final.recipe == "simclr-b8-kornblith2019").all()
    checkpoints = sorted((out / "tiny" / "finetune").rglob("checkpoint.pt"))
    assert len(checkpoints) == 3
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    assert main(command) == 0  # every unit done: nothing trains again
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == stamps


VIT = "timm/vit_tiny_patch16_224[img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2]"


def test_vit_with_layer_decay(tmp_path, data_root) -> None:
    arch = get_architecture(VIT)
    model = LoadedModel("vit", arch, FrozenBackbone(arch, arch.build()), "vit0")
    task = Finetune(**{**OPTIONS, "steps": 2, "layer_decay": 0.5})
    assert task.layer(arch) == "block1"
    net = FinetuneNet(model.backbone, "block1", 4, 32, 0)
    groups = parameter_groups(net, 1e-4, 0.5)
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    params = dict(net.trunk.model.named_parameters())
    assert mult[id(params["patch_embed.proj.weight"])] == 0.5 ** 3  # L = 2 blocks: embeddings at 0.5^(L+1)
    assert mult[id(params["blocks.0.attn.qkv.weight"])] == 0.25 and mult[id(params["blocks.1.mlp.fc1.bias"])] == 0.5
    assert mult[id(net.fc.weight)] == 1.0
    rows = task.run(context(tmp_path, data_root), model, "lr0.01-wd0")
    assert {r["metric"] for r in rows} == {"top1", "top5"} and rows[0]["layer_decay"] == 0.5
    with pytest.raises(ConfigError, match="layer_decay is for ViTs"):
        Finetune(layer_decay=0.5).units(get_architecture("resnet18"))


def test_scores_protocol_metric() -> None:
    from benchmark.metrics import mean_per_class_accuracy
    from tasks.finetune.task import scores

    targets = torch.tensor([0, 0, 0, 1])
    top5 = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])
    values = scores({"targets": targets, "top5": top5}, "mean_per_class_accuracy", mean_per_class_accuracy)
    # class 0: 2 of 3 right, class 1: 0 of 1 -> mean 1/3; top-1 2/4; top-2 every row
    assert values == pytest.approx({"mean_per_class_accuracy": 100 / 3, "top1": 50.0, "top5": 100.0})


def test_a_diverging_point_scores_zero_and_is_not_retrained(tmp_path, data_root, monkeypatch) -> None:
    import torch.nn.functional as F

    original = F.cross_entropy
    calls = []

    def explode(logits, targets):
        calls.append(1)
        return original(logits, targets) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(F, "cross_entropy", explode)
    task, model, ctx = Finetune(**OPTIONS), loaded_model(), context(tmp_path, data_root)
    rows = task.run(ctx, model, "lr0.1-wd0")
    assert rows[0]["diverged_at"] == 1 and {r["value"] for r in rows} == {0.0}
    calls.clear()
    assert task.run(ctx, model, "lr0.1-wd0") == rows and not calls  # a finished point: not trained again
    monkeypatch.setattr(F, "cross_entropy", original)
    task.run(ctx, model, "lr0.01-wd0")
    final = task.run(ctx, model, FINAL)
    assert final[0]["lr"] == 0.01 and final[0]["grid_points"] == 1  # the diverged point is never chosen


def test_transfer_dataset_uses_its_protocol_metric(tmp_path) -> None:
    from benchmark.datasets.synth_transfer import synth_transfer

    root = synth_transfer(tmp_path / "data", "fgvc_aircraft")
    task = Finetune(**{**OPTIONS, "dataset": root.name, "layout": "fgvc_aircraft", "learning_rates": [0.01],
                       "steps": 2})
    model, ctx = loaded_model(), context(tmp_path / "run", tmp_path / "data")
    grid = task.run(ctx, model, "lr0.01-wd0")
    final = task.run(ctx, model, FINAL)
    assert [r["metric"] for r in grid] == ["mean_per_class_accuracy", "top1", "top5"]
    assert final[0]["selection_metric"] == "mean_per_class_accuracy" and final[0]["metric"] == "mean_per_class_accuracy"
    assert "carved" not in grid[0]["val_split"]  # Aircraft has its own validation split, not a carve-out
