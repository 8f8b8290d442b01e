"""Training and evaluation of the surface-normal network on a frozen trunk, resumable.

``train_normals`` trains res5 and the PSP decoder of a ``NormalsNet`` (tasks.normals.model)
with SGD (momentum 0.9) and the poly learning rate ``base_lr * (1 - it / iterations) ** 0.9``,
then evaluates on the test split with the streaming angular metrics.

Training data: every iteration takes the next ``batch_size`` images of a shuffled epoch order
(``epoch_order(seed, epoch)``; the last incomplete batch of an epoch is dropped) and resizes all of
them to one short side drawn uniformly from ``short_side`` (integers; a function of (seed,
iteration)), so a batch has one size without cropping (multi-scale training, no flip). Images are
resized bilinearly (antialiased), normals and masks by nearest neighbour. Dropout is seeded per
iteration from (seed, iteration) in a forked RNG, so nothing random depends on the process
history: a run killed at any point and restarted from its last checkpoint (written atomically
every ``checkpoint_every`` iterations and at the end: trainable weights, optimiser, iteration,
loss history, the CSV log's length) ends with exactly the weights and metrics of an uninterrupted
run (tests check it). Evaluation: the test images at their stored resolution.

Losses: ``codebook`` head: per-pixel cross-entropy over the codes (target: the nearest code of
the ground-truth normal; invalid pixels ignored); prediction: the probability-weighted code
normal, renormalised. ``regression`` head: three outputs per pixel, normalised; loss: mean of
1 - cos(prediction, ground truth) over valid pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError, DatasetError
from benchmark.training import (Part, ResumableBatches, RowsCsv, Schedule, TrainingLoop, autocast, build_optimizer,
                                channels_last, cpu_state, derived_seed, load_matching_checkpoint, load_matching_weights,
                                loader_batches, to_device)
from . import HEADS
from .codebook import assign, decode
from .metrics import AngularErrors
from .model import NormalsNet

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
_SCALE_TAG = 0x5CA1E
_DROPOUT_TAG = 0xD509


# what the checkpoints' fingerprints have always recorded of a normals schedule
RECORDED = ("name", "iterations", "batch_size", "base_lr", "weight_decay", "power", "momentum")


def NormalsSchedule(name: str, iterations: int, batch_size: int, base_lr: float, weight_decay: float,
                    power: float = 0.9, momentum: float = 0.9) -> Schedule:
    """SGD with the poly learning rate ``base_lr * (1 - it / iterations) ** power``, in iterations of
    ``batch_size`` images."""
    return Schedule(name, iterations, base_lr, batch_size, decay="poly", power=power, weight_decay=weight_decay,
                    momentum=momentum, recorded=RECORDED)


@dataclass
class NormalsSetup:
    """What a run needs besides the trunk and the data."""

    head: str  # codebook | regression
    schedule: Schedule
    short_side: tuple[int, int]  # training short side range, in pixels of the stored images
    codes: torch.Tensor | None = None  # (K, 3) for the codebook head
    decoder_channels: int = 512
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 0
    eval_batch_size: int = 8
    fingerprint: str = ""  # identity of everything that changes the result; another's checkpoint is ignored
    desc: str = "normals"

    @property
    def out_channels(self) -> int:
        return len(self.codes) if self.head == "codebook" else 3


def _to_tensors(image: np.ndarray, normals: np.ndarray, mask: np.ndarray):
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    normals = torch.from_numpy(np.ascontiguousarray(normals)).permute(2, 0, 1).float()
    return x, normals, torch.from_numpy(mask.astype(bool))


class NormalsData(Dataset):
    """Split item ``j`` -> (normalised image (3, H, W), normals (3, H, W), mask (H, W)) at the stored
    size; with ``resizable``, keys are ``(j, short_side)`` and items are resized to that short side."""

    def __init__(self, split, resizable: bool = False):
        self.split, self.resizable = split, resizable

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        j, short = key if self.resizable else (key, None)
        try:
            normals, mask = self.split.normals(j)
            x, n, m = _to_tensors(self.split.image(j), normals, mask)
        except DatasetError:
            raise
        except Exception as exc:  # h5py / numpy errors: name the file and the image
            raise DatasetError(f"NYUv2 image {int(self.split.indices[j]) + 1} of {self.split.files} cannot be "
                               f"read: {type(exc).__name__}: {exc}") from exc
        if short is not None:
            h, w = x.shape[-2:]
            size = [short, max(1, round(w * short / h))] if h <= w else [max(1, round(h * short / w)), short]
            if size != [h, w]:
                x = TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
                n = F.interpolate(n[None], size=size, mode="nearest-exact")[0]
                m = F.interpolate(m[None, None].float(), size=size, mode="nearest-exact")[0, 0] > 0.5
        return x, n, m


def short_side_at(seed: int, iteration: int, short_side: tuple[int, int]) -> int:
    low, high = short_side
    return int(np.random.default_rng(derived_seed(seed, _SCALE_TAG, iteration)).integers(low, high + 1))


def training_batches(n: int, schedule: Schedule, start: int, seed: int, short_side: tuple[int, int]):
    """Batches of ``(index, short_side)`` keys for iterations [start, iterations): the epoch orders
    of ``epoch_order(seed, epoch)``, one short side per iteration."""

    def keys(iteration: int, epoch: int, indices: list[int]) -> list:
        short = short_side_at(seed, iteration, short_side)
        return [(i, short) for i in indices]

    return ResumableBatches(n, schedule.batch_size, schedule.iterations, start, seed, keys=keys)


def predict(model: NormalsNet, images: torch.Tensor, setup: NormalsSetup) -> torch.Tensor:
    """(N, 3, H, W) unit normals."""
    out = model(images)
    if setup.head == "codebook":
        return decode(out.softmax(1), setup.codes.to(out.device))
    return F.normalize(out, dim=1)


def loss_of(out: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, setup: NormalsSetup) -> torch.Tensor:
    if setup.head == "codebook":
        target = assign(normals, setup.codes.to(out.device)).masked_fill(~mask, -1)
        return F.cross_entropy(out, target, ignore_index=-1)
    cosine = (F.normalize(out, dim=1) * normals).sum(1)
    return (1.0 - cosine)[mask].sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: NormalsNet, test_set: Dataset, setup: NormalsSetup, device: torch.device) -> dict[str, float]:
    """The angular metrics of ``model`` on ``test_set`` (stored resolution), streamed over batches."""
    was_training = model.training
    model.eval()
    metrics = AngularErrors()
    loader = DataLoader(test_set, batch_size=setup.eval_batch_size, num_workers=setup.num_workers,
                        pin_memory=device.type == "cuda")
    precision = autocast(device)
    for images, normals, mask in loader_batches(loader):
        with precision():
            pred = predict(model, images.to(device, non_blocking=True), setup)
        metrics.update(pred.float().cpu(), normals, mask)
    model.train(was_training)
    return {**metrics.result(), "valid_pixels": metrics.count}


def build_model(resnet: torch.nn.Module, setup: NormalsSetup) -> NormalsNet:
    """A NormalsNet on a deep copy of ``resnet`` (the benchmark's frozen copy is never modified)."""
    return NormalsNet(resnet, setup.out_channels, setup.decoder_channels, setup.seed)


def make_optimizer(model: NormalsNet, schedule: Schedule) -> torch.optim.SGD:
    return build_optimizer([p for p in model.parameters() if p.requires_grad], schedule)


def _log_row(iteration: int, loss: float, schedule: Schedule) -> list:
    return [iteration, f"{schedule.lr_at(iteration):.6g}", f"{loss:.6f}"]


def train_normals(resnet: torch.nn.Module, train_set, test_set, setup: NormalsSetup, out_dir: Path,
                  device: torch.device, on_iteration: Callable[[int], None] | None = None) -> dict:
    """Train on ``train_set`` (a split: ``normals``/``image`` per item), evaluate on ``test_set``;
    resume from ``out_dir/checkpoint.pt``. Returns the final checkpoint (``metrics``, ``losses``,
    ``model`` = the trainable weights, ...). ``on_iteration(done)`` runs after each iteration (tests
    use it to simulate a crash)."""
    if setup.head not in HEADS:
        raise ConfigError(f"unknown head {setup.head!r}; expected one of {', '.join(HEADS)}")
    if setup.head == "codebook" and setup.codes is None:
        raise ConfigError("the codebook head needs the codes")
    if setup.schedule.batch_size < 2:
        raise ConfigError("batch_size must be at least 2 (the decoder's BatchNorm needs two values per channel)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT_NAME
    schedule = setup.schedule
    state = load_matching_checkpoint(path, CHECKPOINT_FORMAT, setup.fingerprint, "normals")
    if state is not None and state["done"]:
        return state

    cuda = device.type == "cuda"
    model = channels_last(build_model(resnet, setup), device)
    optimizer = make_optimizer(model, schedule)
    losses = []
    loop = TrainingLoop(path, iterations=schedule.iterations, desc=setup.desc, optimizer=optimizer, schedule=schedule,
                        fingerprint=setup.fingerprint, fmt=CHECKPOINT_FORMAT, tag="normals",
                        checkpoint_every=setup.checkpoint_every,
                        log=RowsCsv(out_dir / LOG_NAME, ["iteration", "lr", "loss"], losses,
                                    lambda iteration, loss: _log_row(iteration, loss, schedule)),
                        parts={"model": Part(lambda: cpu_state(model.trainable_state()),
                                             lambda weights: load_matching_weights(model, weights, path,
                                                                                   ignore=("frozen.",))),
                               "optimizer": optimizer, "losses": lambda loop: losses,
                               "schedule": schedule.describe(), "metrics": None, "head": setup.head})
    if state is not None:
        loop.restore(state)
        losses.extend(state["losses"])

    sampler = training_batches(len(train_set), schedule, loop.start, setup.seed, setup.short_side)
    loader = DataLoader(NormalsData(train_set, resizable=True), batch_sampler=sampler, num_workers=setup.num_workers,
                        pin_memory=cuda, generator=torch.Generator())
    precision = autocast(device)

    def step(batch, iteration):
        images, normals, mask = batch
        images = to_device(images, device)
        normals, mask = normals.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        # dropout seeded per iteration, nothing drawn from the process's RNG (not checkpointed)
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.manual_seed(derived_seed(setup.seed, _DROPOUT_TAG, iteration))
            with precision():
                out = model(images)
            return loss_of(out.float(), normals, mask, setup), None

    def record(iteration, lr, loss, _):
        losses.append(float(loss.detach()))
        return {"loss": f"{losses[-1]:.3f}"}

    def diverged(value, iteration, lr):
        return f"normals training diverged at iteration {iteration} (loss {value}); lower base_lr"

    model.train()
    loop.run(loader, step, record=record, diverged=diverged, on_iteration=on_iteration,
             end=lambda: {"metrics": evaluate(model, NormalsData(test_set), setup, device)})
    return torch.load(path, map_location="cpu", weights_only=True)
