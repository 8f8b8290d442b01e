"""Places205 linear heads: head shapes, frozen trunk, one pass == separate heads, exact resume
after a crash (in process and SIGKILL), top-k, LR schedules, DDP on gloo, the CLI end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmark.errors import ConfigError
from tasks.linear.heads import (
    LinearSetup,
    MultiHead,
    SeededAugmentation,
    check_schedule_options,
    resolve_schedule,
    topk_accuracy,
    topk_correct,
    train_linear_heads,
)
from benchmark.models import FrozenBackbone, create_model
from benchmark.training import ResumableBatches
from benchmark.models.backbone import get_architecture
from tests.suites import RANDOM, suite_yaml

REPO = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every run in this module uses one intra-op thread (conftest's single_thread): faster on the
    shared cores, and the same thread count for the runs whose results are compared."""


class Toy(Dataset):
    """Random 32 px images with a class-dependent offset; random flip + noise as 'augmentation'
    (drawn from torch's global RNG, as torchvision transforms do)."""

    def __init__(self, n: int, classes: int, size: int = 32, augment: bool = True, seed: int = 1):
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % classes
        self.x = torch.randn(n, 3, size, size, generator=generator) + 0.5 * self.y.view(-1, 1, 1, 1).float()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = x + 0.1 * torch.randn(x.shape)
        return x, self.y[i]


def backbone(arch_name: str = "resnet18") -> FrozenBackbone:
    return FrozenBackbone(get_architecture(arch_name), create_model(arch_name, seed=0))


def setup_for(layers, *, epochs=2, batch=8, n=32, milestones=(1,), checkpoint_every=3, workers=0, **kw) -> LinearSetup:
    schedule = resolve_schedule("custom", "resnet18", n, epochs=epochs, milestones=list(milestones), batch_size=batch,
                                base_lr=0.5)
    return LinearSetup(layers=list(layers), num_classes=4, image_size=32, schedule=schedule, seed=3,
                       checkpoint_every=checkpoint_every, num_workers=workers, eval_batch_size=16, log_every=3, **kw)


# --- the preset ----------------------------------------------------------------------------------


def test_linear_places205_is_a_preset_of_linear() -> None:
    """One run() for both tasks: the preset overrides what it sets, never the run itself."""
    from tasks.linear.classification import RECIPES, LinearClassification, LinearHeadsTask
    from tasks.linear.places205 import LinearPlaces205

    for task_class in (LinearClassification, LinearPlaces205):
        assert issubclass(task_class, LinearHeadsTask) and "run" not in vars(task_class)
    task = LinearPlaces205()
    assert task.name == "linear_places205" and task.recipe is RECIPES["goyal"]
    assert task.recipe["batchnorm"] and task.recipe["nesterov"]


# --- top-k and schedules -------------------------------------------------------------------------


def test_topk_accuracy_hand_case() -> None:
    logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # target 1: ranked 1st -> top-1 hit, top-5 hit
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 5: ranked 6th (lowest) -> top-1 miss, top-5 miss
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 4: ranked 5th -> top-1 miss, top-5 hit
        [0.0, 0.0, 0.0, 3.0, 2.0, 1.0],  # target 5: ranked 3rd (3.0 > 2.0 > 1.0) -> miss, hit
    ])
    targets = torch.tensor([1, 5, 4, 5])
    # top-1: 1 of 4 rows = 0.25; top-2: row 0 only = 0.25; top-5: rows 0, 2, 3 = 0.75
    assert topk_accuracy(logits, targets, (1, 2, 5)) == {1: 0.25, 2: 0.25, 5: 0.75}
    assert topk_correct(logits, targets, (1, 5)).tolist() == [1, 3]
    # k above the number of classes counts every row (top-5 of a 2-class problem)
    assert topk_accuracy(logits[:2, :2], torch.tensor([0, 1]), (1, 5)) == {1: 0.0, 5: 1.0}


def test_reference_schedule_scaled_to_batch_32() -> None:
    s = resolve_schedule("reference", "resnet50", num_train=2_448_873, batch_size=32)
    # 140k iterations at batch 256 = 1.12M at batch 32 (same images seen); LR 0.01 * 32 / 256
    assert s.iterations == 1_120_000 and s.milestones == (320_000, 640_000, 960_000)
    assert s.lr == pytest.approx(0.00125) and s.weight_decay == 1e-4
    for iteration, lr in ((0, 0.00125), (319_999, 0.00125), (320_000, 0.000125), (639_999, 0.000125),
                          (640_000, 1.25e-5), (960_000, 1.25e-6), (1_119_999, 1.25e-6)):
        assert s.lr_at(iteration) == pytest.approx(lr, rel=1e-9), iteration
    full = resolve_schedule("reference", "resnet50", num_train=2_448_873)
    assert (full.iterations, full.milestones, full.lr, full.batch_size) == (
        140_000, (40_000, 80_000, 120_000), 0.01, 256)
    assert round(full.epochs, 1) == 14.6  # 140k x 256 / 2.45M images
    assert resolve_schedule("reference", "alexnet", num_train=1000, batch_size=32).weight_decay == 5e-4


def test_vissl_schedule_and_the_scheduler_agree() -> None:
    s = resolve_schedule("vissl", "resnet50", num_train=2_448_873)
    ipe = 2_448_873 // 256
    assert s.iterations_per_epoch == ipe and s.iterations == 14 * ipe
    assert s.milestones == (4 * ipe, 8 * ipe, 12 * ipe) and s.weight_decay == 5e-4 and s.lr == 0.01
    assert s.lr_at(4 * ipe - 1) == 0.01 and s.lr_at(4 * ipe) == pytest.approx(0.001)
    assert s.lr_at(12 * ipe) == pytest.approx(1e-5)
    # the real MultiStepLR stepped once per iteration, on a small data set (10 iterations / epoch)
    small = resolve_schedule("vissl", "resnet18", num_train=320, batch_size=32)
    assert (small.iterations, small.milestones, small.lr) == (140, (40, 80, 120), 0.00125)
    from tasks.linear.heads import LinearHead, make_optimizer
    from benchmark.models.resnet import RESNET_POOLS

    heads = MultiHead({"pool5": LinearHead(RESNET_POOLS["pool5"], 4, 2)})
    optimizer, scheduler = make_optimizer(heads, small)
    seen = []
    for iteration in range(small.iterations):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([small.lr_at(i) for i in range(small.iterations)], rel=1e-12)
    assert [optimizer.param_groups[i]["weight_decay"] for i in (0, 1)] == [5e-4, 0.0]  # weights, biases


def test_custom_schedule_and_errors() -> None:
    s = resolve_schedule("custom", "resnet18", 600, epochs=6, milestones=[4], batch_size=32, base_lr=0.1)
    assert (s.iterations_per_epoch, s.iterations, s.milestones) == (18, 108, (72,))
    assert s.lr == pytest.approx(0.1 * 32 / 256)
    s = resolve_schedule("custom", "resnet18", 600, iterations=50, milestones=[20, 40], batch_size=64)
    assert (s.iterations, s.milestones, s.lr) == (50, (20, 40), 0.0025)
    for bad, match in ((dict(schedule="nope"), "unknown schedule"),
                       (dict(schedule="custom", milestones=[1]), "exactly one of"),
                       (dict(schedule="custom", epochs=3), "needs 'milestones'"),
                       (dict(schedule="custom", epochs=3, milestones=[3]), "inside"),
                       (dict(schedule="reference", epochs=3), "only apply to schedule: custom"),
                       (dict(schedule="vissl", batch_size=0), "batch_size")):
        with pytest.raises(ConfigError, match=match):
            check_schedule_options(**bad)
    with pytest.raises(ConfigError, match="larger than"):
        resolve_schedule("vissl", "resnet18", 100)


def test_image_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path) -> None:
    """The protocol's random resized crop + flip on real files, through SeededAugmentation."""
    from benchmark.datasets.images import ImageFileDataset, train_transform
    from benchmark.datasets.places import load_places205
    from benchmark.datasets.synth_places import synth_places205

    train = load_places205(synth_places205(tmp_path, num_classes=2, train_per_class=2, val_per_class=1), "train")
    data = SeededAugmentation(ImageFileDataset(train.image_paths, train_transform(32)), seed=5)
    torch.manual_seed(0)
    first = data[(1, 0)][0]
    torch.rand(10)  # the global RNG's state does not matter, and is left as it was
    state = torch.get_rng_state()
    assert torch.equal(first, data[(1, 0)][0]) and torch.equal(state, torch.get_rng_state())
    assert not torch.equal(first, data[(1, 1)][0])  # another epoch, another crop
    assert not torch.equal(first, SeededAugmentation(data.dataset, seed=6)[(1, 0)][0])


# --- heads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch_name,size,dims", [
    ("resnet18", 64, {"conv1": 64 * 144, "res2": 64 * 36, "res3": 128 * 16, "res4": 256 * 9, "res5": 512 * 4,
                      "pool5": 512}),
    # the protocol's AlexNet dimensions at 227 px
    ("alexnet", 227, {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}),
])
def test_head_shapes_per_layer(arch_name, size, dims) -> None:
    trunk = backbone(arch_name)
    layers = list(trunk.arch.layers)
    heads = MultiHead.build(trunk, layers, num_classes=7, image_size=size, seed=0)
    with torch.no_grad():
        logits = heads(trunk.feature_maps(torch.randn(3, 3, size, size), layers))
    assert list(logits) == layers
    for layer in layers:
        head = heads.heads[layer]
        assert logits[layer].shape == (3, 7)
        assert head.fc.in_features == dims[layer] and head.bn.num_features == dims[layer]
        assert head.bn.weight is None and head.bn.bias is None  # BatchNorm without affine
        assert head.fc.bias.abs().sum() == 0
        assert 0.008 < head.fc.weight.std().item() < 0.012  # N(0, 0.01)


def test_trunk_stays_frozen(tmp_path) -> None:
    trunk = backbone()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    setup = setup_for(["res2", "pool5"], epochs=1, n=16, milestones=())
    result = train_linear_heads(trunk, Toy(16, 4), Toy(8, 4, augment=False), setup, tmp_path, CPU)
    assert all(p.grad is None and not p.requires_grad for p in trunk.parameters())
    after = trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not trunk.training
    start = MultiHead.build(trunk, ["res2", "pool5"], 4, 32, seed=3).state_dict()
    assert not torch.equal(start["heads.pool5.fc.weight"], result["heads"]["heads.pool5.fc.weight"])
    assert result["heads"]["heads.res2.bn.num_batches_tracked"].item() == setup.schedule.iterations


def test_one_pass_equals_each_head_trained_alone(tmp_path) -> None:
    """All heads from one trunk pass == each head with its own trunk pass and its own optimiser."""
    trunk = backbone()
    layers = ["conv1", "res3", "res5", "pool5"]
    setup = setup_for(layers, epochs=2, checkpoint_every=100)
    train, val = Toy(32, 4), Toy(16, 4, augment=False)
    together = train_linear_heads(trunk, train, val, setup, tmp_path, CPU)["heads"]

    schedule = setup.schedule
    data = SeededAugmentation(train, setup.seed)
    order = ResumableBatches(len(train), schedule.batch_size, schedule.iterations, 0, setup.seed)
    batches = [[data[key] for key in keys] for keys in order]
    for layer in layers:
        head = MultiHead.build(trunk, [layer], 4, 32, seed=setup.seed).heads[layer]
        optimizer = torch.optim.SGD([{"params": [head.fc.weight], "weight_decay": schedule.weight_decay},
                                     {"params": [head.fc.bias], "weight_decay": 0.0}],
                                    lr=schedule.lr, momentum=0.9, nesterov=True)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), gamma=0.1)
        head.train()
        for batch in batches:
            images = torch.stack([image for image, _ in batch])
            targets = torch.stack([label for _, label in batch])
            with torch.no_grad():
                fmap = trunk.feature_maps(images, [layer])[layer]  # the trunk stops at this layer
            loss = F.cross_entropy(head(fmap), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        for name, value in head.state_dict().items():
            assert torch.equal(value, together[f"heads.{layer}.{name}"]), (layer, name)


# --- resume ----------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def _crash_at(n):
    def hook(iteration):
        if iteration == n:
            raise Crash(f"simulated crash after iteration {n}")
    return hook


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    setup = setup_for(["res2", "res4", "pool5"], epochs=3)  # 4 iterations / epoch, 12 in all
    result = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, out, CPU)
    return setup, result, (out / "log.csv").read_text()


def _same_result(a: dict, b: dict) -> None:
    assert a["heads"].keys() == b["heads"].keys()
    for key in a["heads"]:
        assert torch.equal(a["heads"][key], b["heads"][key]), key
    for key in ("evaluations", "best", "final", "iteration"):
        assert a[key] == b[key], key
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])


@pytest.mark.parametrize("crash_at", [4, 7])  # right after an evaluation; mid-epoch
def test_resume_after_crash_equals_uninterrupted(uninterrupted, tmp_path, crash_at) -> None:
    setup, reference, reference_log = uninterrupted
    with pytest.raises(Crash):
        train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, tmp_path, CPU,
                           on_iteration=_crash_at(crash_at))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 * (crash_at // 3) and not state["done"]
    # resumed with a DataLoader worker: the per-sample seeding makes the worker count irrelevant
    resumed_setup = LinearSetup(**{**setup.__dict__, "num_workers": 1})
    resumed = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), resumed_setup, tmp_path, CPU)
    _same_result(reference, resumed)
    assert (tmp_path / "log.csv").read_text() == reference_log  # the log is cut back to the checkpoint
    assert len(resumed["evaluations"]) == 3
    # a finished run is not trained again
    again = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, tmp_path, CPU,
                               on_iteration=_crash_at(1))
    _same_result(reference, again)


def test_checkpoint_of_another_configuration_is_not_resumed(uninterrupted, tmp_path) -> None:
    setup, reference, _ = uninterrupted
    with pytest.raises(Crash):
        train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False),
                           LinearSetup(**{**setup.__dict__, "fingerprint": "other"}), tmp_path, CPU,
                           on_iteration=_crash_at(7))
    resumed = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, tmp_path, CPU)
    _same_result(reference, resumed)


KILL_SCRIPT = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from tests.tasks.linear.test_linear_places205 import Toy, backbone, setup_for
from tasks.linear.heads import train_linear_heads
setup = setup_for(["res2", "res4", "pool5"], epochs=3, checkpoint_every=2)
train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, Path(sys.argv[1]),
                   torch.device("cpu"), on_iteration=lambda i: time.sleep(0.3))
"""


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, tmp_path) -> None:
    """A training process killed with SIGKILL once it has written a checkpoint; resumed here."""
    setup, reference, reference_log = uninterrupted
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(tests=str(REPO)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(killed_dir)], env=env)
    checkpoint = killed_dir / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    state = torch.load(checkpoint, weights_only=True)
    assert not state["done"] and 2 <= state["iteration"] < 12
    resumed = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, killed_dir, CPU)
    _same_result(reference, resumed)
    assert (killed_dir / "log.csv").read_text() == reference_log


# --- several processes ----------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_on_gloo_two_processes_keeps_ranks_identical(tmp_path) -> None:
    setup = setup_for(["res3", "pool5"], epochs=2, world_size=2)
    result = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, tmp_path, CPU)
    assert result["done"] and result["iteration"] == setup.schedule.iterations == 8
    assert result["rank_divergence"] == 0.0  # every head value equal on both ranks, BN statistics included
    assert len(result["evaluations"]) == 2
    assert all(0 <= v[0] <= 100 for v in result["best"].values())
    log = pd.read_csv(tmp_path / "log.csv")
    assert (log.phase == "train").sum() == 8 and (log.phase == "eval").sum() == 2
    started = time.time()  # finished: read back without starting processes
    again = train_linear_heads(backbone(), Toy(32, 4), Toy(16, 4, augment=False), setup, tmp_path, CPU)
    assert time.time() - started < 2 and all(torch.equal(again["heads"][k], v) for k, v in result["heads"].items())


# --- the task through the CLI ----------------------------------------------------------------

LINEAR = {"image_size": 32, "schedule": "custom", "epochs": 2, "milestones": [1], "batch_size": 8,
          "checkpoint_every": 3}


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys) -> None:
    from benchmark.cli import main
    from benchmark.datasets.synth_places import synth_places205

    synth_places205(tmp_path / "data", num_classes=4, train_per_class=8, val_per_class=4)
    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(tmp_path / "data", {"random": RANDOM}, {"linear_places205": LINEAR}))
    out = tmp_path / "runs"
    command = ["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]
    assert main(command) == 0
    run_dir = out / "tiny"
    df = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    df = df[df.task == "linear_places205"]
    layers = ["conv1", "res2", "res3", "res4", "res5", "pool5"]
    assert sorted(set(df.layer)) == sorted(layers)
    assert len(df) == len(layers) * 4  # top1/top5 x best/final
    for layer in layers:
        sub = df[df.layer == layer]
        assert sorted(zip(sub.metric, sub.evaluation)) == [("top1", "best"), ("top1", "final"),
                                                           ("top5", "best"), ("top5", "final")]
    assert (df.dataset == "places205").all() and (df.schedule == "custom").all() and (df.batch_size == 8).all()
    assert set(df.unit_id) == {"random/linear_places205/all-layers"}
    final = df[df.evaluation == "final"]
    assert (final.iteration == 8).all()  # 32 images / batch 8 = 4 iterations per epoch, 2 epochs
    best, final_top1 = df[(df.evaluation == "best") & (df.metric == "top1")], final[final.metric == "top1"]
    assert (best.set_index("layer").value >= final_top1.set_index("layer").value).all()
    assert (df[df.metric == "top5"].value == 100.0).all()  # 4 classes: the top 5 hold every class
    assert "top1" in (run_dir / "leaderboard.md").read_text()
    log_path, checkpoint = Path(df.log_csv.iloc[0]), Path(df.checkpoint.iloc[0])
    assert log_path.parent.parent == run_dir / "linear_places205" / "random"
    assert checkpoint.exists() and log_path.exists()
    log = pd.read_csv(log_path)
    assert (log.phase == "train").sum() == 8 and (log.phase == "eval").sum() == 2

    # a second run skips the finished unit
    unit_files = sorted((run_dir / "units").glob("*linear_places205*.csv"))
    stamps = {p: p.stat().st_mtime_ns for p in unit_files + [checkpoint]}
    assert main(command) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # with its result file gone, the unit reruns from the final checkpoint: no training, same rows
    for path in unit_files:
        path.unlink()
    assert main(command) == 0
    again = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    again = again[again.task == "linear_places205"]
    key = ["layer", "metric", "evaluation"]
    merged = df.merge(again, on=key, suffixes=("", "_again"))
    assert len(merged) == len(df) and (merged.value == merged.value_again).all()
    assert checkpoint.stat().st_mtime_ns == stamps[checkpoint]
