"""Linear heads on a frozen trunk, all layers trained together (the Places205 linear protocol).

One forward pass of the frozen trunk per batch feeds one head per layer: the layer's protocol
average pooling -> flatten -> BatchNorm1d without affine -> Linear (N(0, 0.01) weights, zero
bias). The heads share nothing, so training them together gives the same heads as training each
on its own with the same batches (tests/tasks/linear/test_linear_places205.py checks it bit for bit), at the
cost of one trunk pass instead of one per layer.

Reproducible and resumable by construction:

- the order of epoch ``e`` is ``randperm`` seeded from (seed, e); the augmentation of image ``i``
  in epoch ``e`` is seeded from (seed, e, i) inside the dataset, so neither the DataLoader worker
  count nor an interruption changes what a batch contains;
- a checkpoint (atomic write) every ``checkpoint_every`` iterations and at the end holds the
  heads, optimiser, scheduler, iteration / epoch / position, the epoch's order, the RNG states,
  the evaluations so far and the byte length of the CSV log; a run killed at any point and
  restarted reaches exactly the heads and metrics of an uninterrupted run.

Several GPUs: one process per GPU (``torch.multiprocessing.spawn``, NCCL; gloo on CPU for
tests), only the heads wrapped in DDP, each global batch split into equal per-rank slices, the
heads' BatchNorm running statistics averaged over ranks after every step so all ranks hold the
same heads.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError
from benchmark.models.backbone import FrozenBackbone, LayerPool, get_architecture
from benchmark.training import (CsvLog, Part, ResumableBatches, Schedule, TrainingLoop, all_reduce, autocast,
                                average_buffers, barrier, build_optimizer, channels_last, derived_seed, free_port,
                                load_matching_checkpoint, loader_batches, process_group, rank_divergence,
                                resolve_world_size, to_device)

from . import NAME, SCHEDULE_NAMES, SCHEDULES

REFERENCE_BATCH = 256  # the batch size the reference learning rates are given for
CHECKPOINT_FORMAT = 1
TOPK = (1, 5)

# --- schedules ----------------------------------------------------------------------------------


def reference_weight_decay(arch_name: str) -> float:
    """1e-4 for ResNets, 5e-4 for AlexNet (the reference's values)."""
    return 5e-4 if "alexnet" in arch_name.lower() else 1e-4


# what the checkpoints' fingerprints have always recorded of a linear schedule
RECORDED = ("name", "iterations", "milestones", "base_lr", "batch_size", "weight_decay", "iterations_per_epoch",
            "gamma", "lr")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_schedule_options(schedule: str, *, epochs=None, iterations=None, milestones=None, base_lr=None,
                           batch_size=None, weight_decay=None, where: str = NAME) -> None:
    """The arch- and data-independent checks, so a bad config fails before any model is built."""
    if schedule not in SCHEDULE_NAMES:
        raise ConfigError(f"{where}: unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    if schedule == "custom":
        if (epochs is None) == (iterations is None):
            raise ConfigError(f"{where}: the custom schedule needs exactly one of 'epochs' or 'iterations' "
                              f"(got epochs={epochs!r}, iterations={iterations!r})")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
            raise ConfigError(f"{where}: epochs must be a positive number, got {epochs!r}")
        if iterations is not None:
            _positive_int(iterations, f"{where}: iterations")
        if milestones is None or not isinstance(milestones, (list, tuple)):
            raise ConfigError(f"{where}: the custom schedule needs 'milestones' (a list, possibly empty, in "
                              f"{'epochs' if epochs is not None else 'iterations'}), got {milestones!r}")
        total = epochs if epochs is not None else iterations
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) for m in milestones) or \
                list(milestones) != sorted(set(milestones)) or any(not 0 < m < total for m in milestones):
            raise ConfigError(f"{where}: milestones must increase strictly and lie inside (0, {total}); "
                              f"got {milestones!r}")
    else:
        given = {k: v for k, v in (("epochs", epochs), ("iterations", iterations), ("milestones", milestones))
                 if v is not None}
        if given:
            raise ConfigError(f"{where}: {', '.join(given)} only apply to schedule: custom; the {schedule!r} "
                              f"schedule fixes them (set schedule: custom to choose your own)")
    if batch_size is not None:
        _positive_int(batch_size, f"{where}: batch_size")
    for value, what in ((base_lr, "base_lr"), (weight_decay, "weight_decay")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{where}: {what} must be a non-negative number, got {value!r}")


def resolve_schedule(schedule: str, arch_name: str, num_train: int, *, epochs=None, iterations=None,
                     milestones=None, base_lr=None, batch_size=None, weight_decay=None,
                     where: str = NAME) -> Schedule:
    """Iterations and milestones of a named or custom schedule for this data and batch size.

    ``reference`` is defined in iterations at batch 256: at another batch size its iterations and
    milestones scale by 256 / batch_size (same number of images seen) and the LR by
    batch_size / 256. ``vissl`` and custom ``epochs`` are in epochs of ``num_train // batch_size``
    iterations (the last incomplete batch of an epoch is dropped). Custom ``iterations`` are taken
    as given.
    """
    check_schedule_options(schedule, epochs=epochs, iterations=iterations, milestones=milestones,
                           base_lr=base_lr, batch_size=batch_size, weight_decay=weight_decay, where=where)
    if schedule == "custom":
        spec = {"unit": "epochs" if epochs is not None else "iterations",
                "length": epochs if epochs is not None else iterations, "milestones": tuple(milestones),
                "base_lr": 0.01, "batch_size": REFERENCE_BATCH, "weight_decay": None, "scales": False}
    else:
        spec = {**SCHEDULES[schedule], "scales": True}
    batch = batch_size or spec["batch_size"]
    ipe = num_train // batch
    if ipe < 1:
        raise ConfigError(f"{where}: batch_size {batch} is larger than the {num_train} training images")
    if spec["unit"] == "epochs":
        total = round(spec["length"] * ipe)
        steps = tuple(round(m * ipe) for m in spec["milestones"])
    else:
        factor = spec["batch_size"] / batch if spec["scales"] else 1.0
        total = round(spec["length"] * factor)
        steps = tuple(round(m * factor) for m in spec["milestones"])
    wd = weight_decay if weight_decay is not None else spec["weight_decay"]
    return Schedule(
        name=schedule, iterations=max(total, 1), milestones=steps, decay="step", gamma=0.1,
        base_lr=float(base_lr if base_lr is not None else spec["base_lr"]), batch_size=batch,
        reference_batch=REFERENCE_BATCH,
        weight_decay=float(wd if wd is not None else reference_weight_decay(arch_name)),
        momentum=0.9, iterations_per_epoch=ipe, recorded=RECORDED,
    )


# --- transforms and top-k -------------------------------------------------------------------


def eval_transform(size: int = 224) -> T.Compose:
    """Shorter side to 256/224*size, centre crop size (the reference's 256 -> 224 at 224 px)."""
    return T.Compose([
        T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = TOPK) -> torch.Tensor:
    """Number of rows whose target is among the k highest logits, for each k (k is capped at the
    number of classes: top-5 of a 4-class problem counts every row)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (n, k_max), best first
    hit = top.eq(targets.view(-1, 1))
    return torch.stack([hit[:, :min(k, k_max)].any(dim=1).sum() for k in ks])


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = TOPK) -> dict[int, float]:
    """{k: fraction of rows whose target is in the top k}."""
    counts = topk_correct(logits, targets, ks)
    return {k: float(c) / len(targets) for k, c in zip(ks, counts.tolist())}


# --- heads ------------------------------------------------------------------------------------


def _layer_key(layer: str) -> int:
    return zlib.crc32(layer.encode())


class LinearHead(nn.Module):
    """avg pool (the layer's protocol pooling) -> flatten -> BatchNorm1d(affine=False) -> Linear;
    ``batchnorm`` False: no BatchNorm (the heads of MoCo's and DINO's linear evaluation)."""

    def __init__(self, pool: LayerPool, dim: int, num_classes: int, generator: torch.Generator | None = None,
                 batchnorm: bool = True):
        super().__init__()
        self.pool = pool
        self.bn = nn.BatchNorm1d(dim, affine=False) if batchnorm else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.fc.weight.normal_(0.0, 0.01, generator=generator)
            self.fc.bias.zero_()

    def features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool.pool(fmap.float()).flatten(1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.features(fmap)))


class MultiHead(nn.Module):
    """{layer: LinearHead}; ``forward(feature_maps) -> {layer: logits}``."""

    def __init__(self, heads: dict[str, LinearHead]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    @property
    def layers(self) -> list[str]:
        return list(self.heads)

    def forward(self, feature_maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {layer: head(feature_maps[layer]) for layer, head in self.heads.items()}

    @classmethod
    def build(cls, backbone: FrozenBackbone, layers: Sequence[str], num_classes: int, image_size: int,
              seed: int = 0, batchnorm: bool = True) -> "MultiHead":
        """One head per layer, dimensions probed at ``image_size``. Each head's initialisation
        depends on (seed, layer) only, so it is the same whichever other layers are trained."""
        dims = feature_dims(backbone, layers, image_size)
        heads = {}
        for layer in layers:
            generator = torch.Generator().manual_seed(derived_seed(seed, _layer_key(layer)))
            heads[layer] = LinearHead(backbone.arch.pools[layer], dims[layer], num_classes, generator, batchnorm)
        return cls(heads)


def feature_dims(backbone: FrozenBackbone, layers: Sequence[str], image_size: int) -> dict[str, int]:
    device = next(backbone.parameters()).device
    with torch.no_grad():
        maps = backbone.feature_maps(torch.zeros(1, 3, image_size, image_size, device=device), layers)
    return {layer: backbone.arch.pools[layer].pool(maps[layer]).flatten(1).shape[1] for layer in layers}


def make_optimizer(heads: MultiHead, schedule: Schedule, nesterov: bool = True):
    """Nesterov SGD (momentum 0.9; plain momentum when not ``nesterov``), weight decay on the Linear
    weights only; the schedule's scheduler (MultiStepLR x0.1) stepped once per iteration."""
    modules = list(heads.heads.values())
    optimizer = build_optimizer([{"params": [h.fc.weight for h in modules], "weight_decay": schedule.weight_decay},
                                 {"params": [h.fc.bias for h in modules], "weight_decay": 0.0}], schedule,
                                nesterov=nesterov)
    return optimizer, schedule.scheduler(optimizer)


# --- data order and seeded augmentation --------------------------------------------------------

class SeededAugmentation(Dataset):
    """Wraps an index dataset with random transforms: item ``(index, epoch)`` runs the wrapped
    ``dataset[index]`` with torch's CPU generator seeded from (seed, epoch, index) and restored
    afterwards, so an image's augmentation does not depend on worker, batch or resumption."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derived_seed(self.seed, epoch, index))
            return self.dataset[index]


# --- the training run -----------------------------------------------------------------------


@dataclass
class LinearSetup:
    """What a run of linear heads needs besides the trunk and the data."""

    layers: list[str]
    num_classes: int
    image_size: int
    schedule: Schedule
    seed: int = 0
    eval_every: int = 1  # epochs; an evaluation also ends the run
    checkpoint_every: int = 1000  # iterations; a checkpoint also ends the run
    num_workers: int = 0
    eval_batch_size: int = 256
    world_size: int | str = "auto"
    fingerprint: str = ""  # identity of everything that changes the result; a checkpoint of another is ignored
    desc: str = "linear heads"
    log_every: int = 20  # iterations between CSV flushes / progress-bar loss updates
    head_batchnorm: bool = True  # BatchNorm1d (no affine) before each head's Linear layer
    nesterov: bool = True  # Nesterov momentum, else plain momentum


CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"


def train_linear_heads(backbone: FrozenBackbone, train_set: Dataset, val_set: Dataset, setup: LinearSetup,
                       out_dir: Path, device: torch.device,
                       on_iteration: Callable[[int], None] | None = None) -> dict:
    """Train one linear head per layer on ``train_set`` (index -> (augmented image, label)),
    evaluate on ``val_set`` (index -> (image, label)); resume from ``out_dir/checkpoint.pt``.

    Returns the final checkpoint's summary: ``best`` and ``final`` {layer: {"top1": (value,
    iteration), "top5": ...}} in percent, ``evaluations`` (one dict per evaluation), ``heads``
    (state dict), ``feature_dims`` and ``rank_divergence`` (largest difference of any head value
    between ranks, 0.0 unless trained on several processes). ``on_iteration(done)`` is called in
    the single-process path after each iteration (tests use it to simulate a crash).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world_size = resolve_world_size(setup.world_size, device)
    if setup.schedule.batch_size % world_size:
        raise ConfigError(f"batch_size {setup.schedule.batch_size} is not divisible by world_size {world_size}")
    if world_size == 1:
        return _train(0, 1, backbone, train_set, val_set, setup, out_dir, device, on_iteration)
    path = out_dir / CHECKPOINT_NAME
    state = load_matching_checkpoint(path, CHECKPOINT_FORMAT, setup.fingerprint, NAME, verbose=False)
    if state is not None and state.get("done"):  # a finished run: no processes to start
        return state
    import torch.multiprocessing as mp

    port = free_port()
    arch_name = backbone.arch.name
    trunk = {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}
    mp.spawn(_ddp_entry, nprocs=world_size, join=True,
             args=(world_size, port, arch_name, trunk, train_set, val_set, setup, out_dir, device.type))
    return load_checkpoint(path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _ddp_entry(rank, world_size, port, arch_name, trunk, train_set, val_set, setup, out_dir, device_type):
    with process_group(rank, world_size, port, device_type) as device:
        arch = get_architecture(arch_name)
        model = arch.build()
        model.load_state_dict(trunk)
        backbone = FrozenBackbone(arch, model)
        _train(rank, world_size, backbone, train_set, val_set, setup, out_dir, device, None)


class _Log:
    """The CSV log: one row per iteration (LR, loss per head) and per evaluation (top-1/top-5 per
    head). Rows are buffered and flushed every ``log_every`` iterations and before a checkpoint,
    whose ``log_bytes`` is the file length it matches: a resumed run truncates the file there."""

    def __init__(self, path: Path, layers: Sequence[str], resume_bytes: int | None, enabled: bool):
        columns = ["phase", "iteration", "epoch", "lr"] + [f"loss/{layer}" for layer in layers] + \
                  [f"top{k}/{layer}" for layer in layers for k in TOPK]
        self.csv = CsvLog(path, columns, resume_bytes, enabled)
        self.pending: list[tuple] = []

    def train(self, iteration: int, epoch: int, lr: float, losses: torch.Tensor) -> None:
        self.pending.append(("train", iteration, epoch, lr, losses))

    def evaluation(self, iteration: int, epoch: int, accuracy: dict[str, dict[int, float]]) -> None:
        self.flush()
        values = [f"{accuracy[layer][k]:.4f}" for layer in accuracy for k in TOPK]
        self.csv.row(["eval", iteration, epoch, ""] + [""] * len(accuracy) + values)

    def flush(self) -> list[float]:
        """Writes the buffered iteration rows; returns the last one's losses (for the progress bar)."""
        if not self.pending:
            return []
        losses = torch.stack([row[4] for row in self.pending]).cpu().tolist()  # one device sync
        for (phase, iteration, epoch, lr, _), values in zip(self.pending, losses):
            self.csv.row([phase, iteration, epoch, f"{lr:.6g}"] + [f"{v:.5f}" for v in values]
                         + [""] * (2 * len(values)))
        self.pending = []
        return losses[-1]

    def sync(self) -> int:
        """Flush to disk; the byte length a checkpoint records."""
        self.flush()
        return self.csv.sync()

    def close(self) -> None:
        self.csv.close()


def _train(rank: int, world_size: int, backbone: FrozenBackbone, train_set: Dataset, val_set: Dataset,
           setup: LinearSetup, out_dir: Path, device: torch.device,
           on_iteration: Callable[[int], None] | None) -> dict:
    distributed = world_size > 1
    main = rank == 0
    schedule, layers = setup.schedule, list(setup.layers)
    # as in feature extraction: channels-last trunk, bf16 autocast on CUDA; heads in float32
    backbone = channels_last(backbone, device).eval()
    cuda = device.type == "cuda"
    heads = MultiHead.build(backbone, layers, setup.num_classes, setup.image_size, setup.seed,
                            setup.head_batchnorm).to(device)
    optimizer, scheduler = make_optimizer(heads, schedule, setup.nesterov)
    path = out_dir / CHECKPOINT_NAME

    state = load_matching_checkpoint(path, CHECKPOINT_FORMAT, setup.fingerprint, "linear", verbose=main)
    if state is not None and state["done"]:
        return state
    ipe = schedule.iterations_per_epoch
    evaluations: list[dict] = []
    best: dict = {}
    known_orders = {}
    loop = TrainingLoop(
        path, iterations=schedule.iterations, desc=setup.desc, optimizer=optimizer, scheduler=scheduler,
        fingerprint=setup.fingerprint, fmt=CHECKPOINT_FORMAT, tag="linear", writes=main, verbose=main,
        checkpoint_every=setup.checkpoint_every, epoch_length=ipe,
        parts={"epoch": lambda loop: loop.iteration // ipe, "position": lambda loop: loop.iteration % ipe,
               # the order of the epoch under way (drawn again if the loader has not reached it yet)
               "epoch_order": lambda loop: torch.empty(0, dtype=torch.int32) if loop.done else
               sampler.order(loop.iteration // ipe).to(torch.int32),
               "heads": Part.weights(heads), "optimizer": optimizer, "scheduler": Part.scheduler(scheduler),
               "rng": Part.rng(), "evaluations": lambda loop: evaluations, "best": lambda loop: best,
               "final": lambda loop: evaluations[-1] if loop.done else None,
               "log_bytes": lambda loop: loop.log_bytes, "schedule": schedule.describe(), "layers": layers,
               "feature_dims": {layer: h.fc.in_features for layer, h in heads.heads.items()}})
    if state is not None:
        loop.restore(state)
        evaluations, best = state["evaluations"], state["best"]
        known_orders = {state["epoch"]: state["epoch_order"].long()}
    if distributed:
        # the checkpoint was loaded by every rank; fresh heads are identical by their seeded init
        ddp_heads = nn.parallel.DistributedDataParallel(heads, device_ids=[device.index] if device.type == "cuda"
                                                        else None, broadcast_buffers=False)
    else:
        ddp_heads = heads
    loop.log = log = _Log(out_dir / LOG_NAME, layers, state["log_bytes"] if state is not None else None,
                          enabled=main)

    sampler = ResumableBatches(len(train_set), schedule.batch_size, schedule.iterations, loop.start, setup.seed,
                               iterations_per_epoch=ipe, rank=rank, world_size=world_size,
                               known_orders=known_orders)
    loader = DataLoader(SeededAugmentation(train_set, setup.seed), batch_sampler=sampler,
                        num_workers=setup.num_workers, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=4 if setup.num_workers else None)
    val_part = Subset(val_set, range(rank, len(val_set), world_size)) if distributed else val_set
    precision = autocast(device)

    def evaluate(iteration: int) -> None:
        heads.eval()
        counts, n = _evaluate(backbone, heads, val_part, layers, device, setup, precision)
        heads.train()
        if distributed:
            all_reduce(counts, n)
        accuracy = {layer: {k: 100.0 * float(c) / float(n) for k, c in zip(TOPK, counts[i].tolist())}
                    for i, layer in enumerate(layers)}
        evaluations.append({"iteration": iteration, "epoch": iteration / ipe,
                            **{f"top{k}/{layer}": accuracy[layer][k] for layer in layers for k in TOPK}})
        for layer in layers:
            for k in TOPK:
                key = f"top{k}/{layer}"
                if key not in best or accuracy[layer][k] > best[key][0]:
                    best[key] = (accuracy[layer][k], iteration)
        log.evaluation(iteration, iteration // ipe, accuracy)

    def step(batch, iteration):
        images, targets = to_device(batch[0], device), batch[1].to(device, non_blocking=True)
        with torch.no_grad(), precision():
            maps = backbone.feature_maps(images, layers)
        logits = ddp_heads(maps)
        losses = torch.stack([F.cross_entropy(logits[layer].float(), targets) for layer in layers])
        return losses.sum(), losses.detach()

    def record(iteration, lr, loss, losses):
        log.train(iteration, iteration // ipe, lr, losses)
        if (iteration + 1) % setup.log_every == 0:
            last = log.flush()
            if last:
                return {"loss": f"{sum(last) / len(last):.3f}", "lr": f"{lr:.2g}"}
        return None

    def epoch_end(iteration):
        if iteration != schedule.iterations and (iteration // ipe) % setup.eval_every == 0:
            evaluate(iteration)

    def end():
        evaluate(schedule.iterations)
        return {"rank_divergence": rank_divergence(heads) if distributed else 0.0}

    heads.train()
    loop.run(loader, step, record=record, epoch_end=epoch_end, end=end,
             after_step=(lambda: average_buffers(heads, world_size)) if distributed else None,
             on_iteration=on_iteration)
    if distributed:
        barrier()
    return load_checkpoint(path) if main else {}


@torch.no_grad()
def _evaluate(backbone, heads: MultiHead, val_set: Dataset, layers, device, setup: LinearSetup, precision):
    """(layers, len(TOPK)) correct counts and the number of images, on this rank's part."""
    counts = torch.zeros(len(layers), len(TOPK), dtype=torch.int64, device=device)
    n = torch.zeros((), dtype=torch.int64, device=device)
    loader = DataLoader(val_set, batch_size=setup.eval_batch_size, num_workers=setup.num_workers,
                        pin_memory=device.type == "cuda")
    for images, targets in loader_batches(loader):
        images, targets = to_device(images, device), targets.to(device, non_blocking=True)
        with precision():
            maps = backbone.feature_maps(images, layers)
        logits = heads(maps)
        counts += torch.stack([topk_correct(logits[layer].float(), targets, TOPK) for layer in layers])
        n += len(targets)
    return counts, n
