"""`finetune`: the whole network (trunk + a new linear classifier) fine-tuned on a classification
dataset, the transfer protocol of SimCLR (Chen et al. 2020, arXiv 2002.05709, appendix B.8) after
Kornblith et al. 2019 ("Do Better ImageNet Models Transfer Better?").

Protocol (docs/tasks/finetune.md quotes the source): SGD with Nesterov momentum 0.9, batch 256, a
fixed number of steps (20,000), BatchNorm statistics momentum max(1 - 10/s, 0.9) with s the steps
per epoch (TensorFlow's convention; torch's momentum is one minus it), random-resized-crop + flip
for training, resize 256/224 x size + centre crop for evaluation. The learning rate and weight
decay come from a grid (7 learning rates log-spaced in [1e-4, 0.1] x no weight decay and 7 values
log-spaced in [1e-6, 1e-3], each divided by the learning rate), chosen on the validation part; the
network is then trained again on train + validation with the chosen point and tested once.

Units: one per grid point (``lr<lr>-wd<wd>``: trains on train, scores validation, writes its
result to ``RUN/finetune/<instance>/<model>/grid/<unit>.json``) and ``final``, which reads every
grid result (refusing when one is missing or was made with another configuration), retrains with
the chosen point on train + validation and scores test. Only ``final`` reads the test part. Each
training is resumable at any step from its checkpoint (``benchmark.training.TrainingLoop``).

Semi-supervised fine-tuning (SimCLR Table 7): ``label_fraction`` keeps a class-balanced fraction of
the training images (and of the validation images for the final retraining) drawn from
``label_seed``; ``label_list`` keeps the images a file names (one file name per line, the format of
SimCLR's published 1 % / 10 % ImageNet lists). ViTs: ``layer_decay`` multiplies the learning rate of
block i of L by ``layer_decay ** (L + 1 - (i + 1))`` (embeddings: the power L + 1; head and final norm: 1).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchmark.config import config_hash
from benchmark.datasets.classification import ClassificationData, SplitPart, load_classification
from benchmark.datasets.images import ImageFileDataset, train_transform
from benchmark.datasets.transfer import TRANSFER_LAYOUTS, metric_function
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.diskspace import training_checkpoint_bytes
from benchmark.errors import ConfigError
from benchmark.metrics import top1_accuracy
from benchmark.models import Architecture, FrozenBackbone
from benchmark.options import Choice, Float, Int, ListOf, Str, declare
from benchmark.paths import atomic_write, inside
from benchmark.training import (CsvLog, Part, ResumableBatches, Schedule, TrainingLoop, atomic_torch_save, autocast,
                                build_optimizer, derived_seed, loader_batches, to_device)
from tasks.classification.common import DATA_OPTIONS
from tasks.linear.heads import SeededAugmentation, eval_transform

from . import NAME
from .labels import (balanced_fraction, check_list_covered, image_name, list_digest, listed_positions,
                     read_label_list, subset)

logger = logging.getLogger(__name__)

RECIPE = "simclr-b8-kornblith2019"
FINAL = "final"
CHECKPOINT_FORMAT = 1
# the paper's grid: 7 learning rates log-spaced over [1e-4, 0.1]; no weight decay and 7 values
# log-spaced over [1e-6, 1e-3] (each divided by the learning rate when used)
LEARNING_RATES = [float(f"{v:.6g}") for v in np.logspace(-4, -1, 7)]
WEIGHT_DECAYS = [0.0] + [float(f"{v:.6g}") for v in np.logspace(-6, -3, 7)]
_HEAD_TAG = 0xF17E


def grid_unit(lr: float, wd: float) -> str:
    return f"lr{lr:g}-wd{wd:g}"


def bn_momentum(steps_per_epoch: int) -> float:
    """torch's BatchNorm momentum for the paper's max(1 - 10/s, 0.9) (TF decay = 1 - torch momentum)."""
    return 1.0 - max(1.0 - 10.0 / steps_per_epoch, 0.9)


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_ids(names: list[str]) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, number of blocks L) of a timm ViT: block i is i + 1, what comes
    before the blocks (patch embedding, class token, position embedding) 0, the rest (final norm,
    head) L + 1. Refused for a network without ``blocks.N`` parameters."""
    blocks = {name: int(m.group(1)) for name in names if (m := _BLOCK.search(name))}
    if not blocks:
        raise ConfigError("finetune: layer_decay applies to ViTs whose parameters are named blocks.N... (timm); "
                          "this trunk has none: remove layer_decay")
    count = max(blocks.values()) + 1
    ids = {}
    for name in names:
        if name in blocks:
            ids[name] = blocks[name] + 1
        elif any(key in name for key in ("patch_embed", "cls_token", "pos_embed", "reg_token")):
            ids[name] = 0
        else:
            ids[name] = count + 1
    return ids, count


class FinetuneNet(nn.Module):
    """A trainable copy of the trunk up to ``layer``, its pooling, and a Linear classifier."""

    def __init__(self, backbone: FrozenBackbone, layer: str, num_classes: int, image_size: int, seed: int):
        super().__init__()
        self.layer = layer
        self.pool = backbone.arch.pools[layer]
        self.trunk = FrozenBackbone(backbone.arch, copy.deepcopy(backbone.model), backbone.input_stats)
        self.trunk.requires_grad_(True)
        with torch.no_grad():
            dim = self.features(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.fc = nn.Linear(dim, num_classes)
        generator = torch.Generator().manual_seed(derived_seed(seed, _HEAD_TAG))
        with torch.no_grad():
            self.fc.weight.normal_(0.0, 0.01, generator=generator)
            self.fc.bias.zero_()

    def train(self, mode: bool = True) -> "FinetuneNet":
        # FrozenBackbone.train keeps its modules in eval mode; fine-tuning updates the BatchNorm
        # statistics as the protocol does, so the trunk's modules follow ``mode`` here
        self.training = mode
        nn.Module.train(self.trunk, mode)
        self.fc.train(mode)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool.pool(self.trunk.feature_maps(x, [self.layer])[self.layer].float()).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def parameter_groups(net: FinetuneNet, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """Weight decay on weight matrices and kernels (ndim > 1), none on biases and norms; with
    ``layer_decay`` one group per (layer, decay) whose ``lr_mult`` the schedule applies."""
    named = [(f"trunk.{n}", p) for n, p in net.trunk.model.named_parameters()] + \
            [(f"fc.{n}", p) for n, p in net.fc.named_parameters()]
    if layer_decay is None:
        return [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": weight_decay},
                {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0}]
    ids, count = layer_ids([n.removeprefix("trunk.") for n, _ in named if n.startswith("trunk.")])
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        layer = ids[name.removeprefix("trunk.")] if name.startswith("trunk.") else count + 1
        decayed = param.ndim > 1
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr_mult": layer_decay ** (count + 1 - layer)})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


@dataclass
class FinetuneSetup:
    layer: str
    num_classes: int
    image_size: int
    schedule: Schedule
    layer_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 0
    eval_batch_size: int = 64
    fingerprint: str = ""
    desc: str = NAME
    log_every: int = 20


class _Diverged(Exception):
    """The loss of a grid point became non-finite (too large a learning rate for this model)."""

    def __init__(self, iteration: int, value: float):
        super().__init__(f"loss {value} at step {iteration}")
        self.iteration, self.value = iteration, value


class _LossLog:
    """log.csv: iteration, lr, loss; buffered (one device sync per flush), flushed before checkpoints."""

    def __init__(self, path: Path, resume_bytes: int | None):
        self.csv = CsvLog(path, ["iteration", "lr", "loss"], resume_bytes)
        self.pending: list[tuple[int, float, torch.Tensor]] = []

    def add(self, iteration: int, lr: float, loss: torch.Tensor) -> None:
        self.pending.append((iteration, lr, loss.detach()))

    def flush(self) -> None:
        if self.pending:
            losses = torch.stack([row[2] for row in self.pending]).float().cpu().tolist()
            for (iteration, lr, _), value in zip(self.pending, losses):
                self.csv.row([iteration, f"{lr:.6g}", f"{value:.5f}"])
            self.pending = []

    def sync(self) -> int:
        self.flush()
        return self.csv.sync()

    def close(self) -> None:
        self.csv.close()


def finetune(backbone: FrozenBackbone, train_set, eval_set, setup: FinetuneSetup, out_dir: Path,
             device: torch.device, on_iteration: Callable[[int], None] | None = None) -> dict:
    """Fine-tune on ``train_set`` (index -> (augmented image, label)), then score ``eval_set``
    (index -> (image, label)) once; resumes from ``out_dir/checkpoint.pt``. Returns the final
    checkpoint: ``evaluation`` holds ``targets`` and ``top5`` (the 5 highest classes, best first),
    or is None with ``diverged_at`` the step whose loss was not finite (a finished, failed point:
    the grid goes on without it, as in the papers' grids, instead of stopping the run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = setup.schedule
    net = FinetuneNet(backbone, setup.layer, setup.num_classes, setup.image_size, setup.seed)
    for module in net.trunk.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = bn_momentum(schedule.iterations_per_epoch)
    net = net.to(device)
    optimizer = build_optimizer(parameter_groups(net, schedule.weight_decay, setup.layer_decay), schedule,
                                nesterov=True)
    path = out_dir / "checkpoint.pt"
    ipe = schedule.iterations_per_epoch
    loop = TrainingLoop(
        path, iterations=schedule.iterations, desc=setup.desc, optimizer=optimizer, schedule=schedule,
        fingerprint=setup.fingerprint, fmt=CHECKPOINT_FORMAT, tag=NAME, checkpoint_every=setup.checkpoint_every,
        epoch_length=ipe,
        parts={"epoch": lambda loop: loop.iteration // ipe,
               "epoch_order": lambda loop: torch.empty(0, dtype=torch.int32) if loop.done else
               sampler.order(loop.iteration // ipe).to(torch.int32),
               "net": Part.weights(net), "optimizer": optimizer, "rng": Part.rng(),
               "log_bytes": lambda loop: loop.log_bytes, "schedule": schedule.describe(),
               "evaluation": None})
    state = loop.resume()
    if state is not None and state["done"]:
        return state
    known_orders = {}
    if state is not None:
        loop.restore(state)
        known_orders = {state["epoch"]: state["epoch_order"].long()}
    loop.log = log = _LossLog(out_dir / "log.csv", state["log_bytes"] if state is not None else None)
    sampler = ResumableBatches(len(train_set), schedule.batch_size, schedule.iterations, loop.start, setup.seed,
                               iterations_per_epoch=ipe, known_orders=known_orders)
    cuda = device.type == "cuda"
    loader = DataLoader(SeededAugmentation(train_set, setup.seed), batch_sampler=sampler,
                        num_workers=setup.num_workers, pin_memory=cuda)
    precision = autocast(device)

    def step(batch, iteration):
        images, targets = to_device(batch[0], device), batch[1].to(device, non_blocking=True)
        with precision():
            logits = net(images)
        loss = F.cross_entropy(logits.float(), targets)
        if not torch.isfinite(loss):
            raise _Diverged(iteration, float(loss.detach()))
        return loss, None

    def record(iteration, lr, loss, _):
        log.add(iteration, lr, loss)
        if (iteration + 1) % setup.log_every == 0:
            log.flush()
        return None

    def end():
        net.eval()
        evaluation = evaluate(net, eval_set, setup, device, precision)
        net.train()
        return {"evaluation": evaluation}

    net.train()
    try:
        loop.run(loader, step, record=record, end=end, on_iteration=on_iteration)
    except _Diverged as exc:
        logger.warning(f"[{NAME}] {setup.desc}: {exc}; this point scores 0")
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "fingerprint": setup.fingerprint, "done": True,
                           "iteration": exc.iteration, "diverged_at": exc.iteration, "evaluation": None}, path)
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def evaluate(net: FinetuneNet, eval_set, setup: FinetuneSetup, device, precision) -> dict:
    targets, top = [], []
    loader = DataLoader(eval_set, batch_size=setup.eval_batch_size, num_workers=setup.num_workers)
    for images, labels in loader_batches(loader):
        with precision():
            logits = net(to_device(images, device)).float()
        top.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
        targets.append(labels)
    return {"targets": torch.cat(targets).long(), "top5": torch.cat(top).long()}


def scores(evaluation: dict, metric: str, metric_fn) -> dict[str, float]:
    """{metric: percent}: the protocol metric, top-1 and top-5 (deduplicated)."""
    y = evaluation["targets"].numpy()
    top = evaluation["top5"].numpy()
    predicted = top[:, 0]
    out = {metric: 100.0 * float(metric_fn(y, predicted)),
           "top1": 100.0 * float(top1_accuracy(y, predicted)),
           "top5": 100.0 * float((top == y[:, None]).any(axis=1).mean())}
    return out


def _images(parts: list[SplitPart], transform) -> ImageFileDataset:
    paths = [part.split.image_paths[i] for part in parts for i in part.indices]
    labels = np.concatenate([part.labels for part in parts])
    return ImageFileDataset(paths, transform, torch.as_tensor(labels, dtype=torch.int64))


def _identity(parts: list[SplitPart]) -> str:
    """What the images and labels of ``parts`` are, cheaply (names and labels; no file is stat'ed)."""
    rows = [f"{image_name(part.split.image_paths[i])} {part.split.labels[i]}" for part in parts for i in part.indices]
    return config_hash(rows)


class Finetune(Task):
    name = NAME
    dataset = "classification"
    needs_gpu = True
    options = declare({
        **{key: option for key, option in DATA_OPTIONS.items() if key != "layers"},
        "learning_rates": ListOf(Float(min=0, min_open=True), LEARNING_RATES, min_length=1, unique=True),
        "weight_decays": ListOf(Float(min=0), WEIGHT_DECAYS, min_length=1, unique=True),  # divided by the lr
        "steps": Int(20_000, min=1),
        "batch_size": Int(256, min=1),
        # the source states no learning-rate schedule: cosine to 0 is ssl-bench's default (docs/tasks/finetune.md)
        "lr_schedule": Choice("cosine", "constant", default="cosine"),
        "crop_scale": ListOf(Float(min=0, max=1, min_open=True), [0.08, 1.0], length=2),
        "label_fraction": Float(None, min=0, max=1, min_open=True),  # class-balanced; None: every label
        "label_list": Str(None),  # file of image names (relative: to the data root)
        "label_seed": Int(0, min=0),
        "layer_decay": Float(None, min=0, max=1, min_open=True),  # ViTs only; None: no decay
        # the layer the classifier reads, with its protocol pooling; None: pool5 (ResNets), the last block (ViTs)
        "layer": Str(None),
        "checkpoint_every": Int(500, min=1),
        "num_workers": Int(None, min=0),  # DataLoader workers; None = the suite's num_workers
    })

    # --- data ---------------------------------------------------------------------------------

    def data(self, ctx: RunContext) -> ClassificationData:
        c = self.config
        return load_classification(ctx.data_root, c.dataset, layout=c.layout, train_split=c.train_split,
                                   val_split=c.val_split, test_split=c.test_split, val_fraction=c.val_fraction,
                                   val_seed=c.val_seed, follow_symlinks=c.follow_symlinks)

    def label_list_path(self, ctx: RunContext) -> Path:
        path = Path(self.config.label_list).expanduser()
        return path if path.is_absolute() else ctx.data_root / path

    def labelled(self, ctx: RunContext, data: ClassificationData) -> tuple[SplitPart, SplitPart, dict]:
        """(labelled training part, labelled validation part for the final retraining, row columns)."""
        c = self.config
        if c.label_fraction is not None and c.label_list is not None:
            raise ConfigError(f"{self.name}: label_fraction and label_list both choose the labelled images; set one")
        if c.label_fraction is not None:
            how = f"{100 * c.label_fraction:g} % of labels per class, seed {c.label_seed}"
            parts = [subset(part, balanced_fraction(part.labels, c.label_fraction, c.label_seed), how)
                     for part in (data.train, data.val)]
            return parts[0], parts[1], {"label_fraction": c.label_fraction, "label_seed": c.label_seed}
        if c.label_list is not None:
            path = self.label_list_path(ctx)
            names = read_label_list(path)
            check_list_covered([data.train, data.val], names, path)
            parts = [subset(part, listed_positions(part, names), f"images of {path.name}")
                     for part in (data.train, data.val)]
            if not len(parts[0]):
                raise ConfigError(f"{self.name}: label_list {path} names no image of the training part")
            return parts[0], parts[1], {"label_list": str(path), "label_list_sha": list_digest(names)}
        return data.train, data.val, {}

    def check_data(self, ctx: RunContext) -> None:
        self.labelled(ctx, self.data(ctx))

    def metric(self, data: ClassificationData) -> tuple[str, Callable]:
        return metric_function(data.layout) if data.layout in TRANSFER_LAYOUTS else ("top1", top1_accuracy)

    # --- units --------------------------------------------------------------------------------

    def grid(self) -> list[tuple[str, float, float]]:
        points = [(grid_unit(lr, wd), lr, wd) for lr in self.config.learning_rates for wd in self.config.weight_decays]
        names = [name for name, _, _ in points]
        if len(set(names)) != len(names):  # values equal to 6 significant digits would share a unit and its files
            raise ConfigError(f"{self.name}: learning_rates / weight_decays hold values that differ only beyond 6 "
                              f"significant digits ({sorted({n for n in names if names.count(n) > 1})}); drop one")
        return points

    def layer(self, arch: Architecture) -> str:
        """The classifier's input: the ``layer`` option, else the deepest layer that is one layer's output
        (a ViT's ``lastN_cls`` concatenates several blocks: its last block is used instead)."""
        if self.config.layer is not None:
            if self.config.layer not in arch.layers:
                raise ConfigError(f"{self.name}: layer {self.config.layer!r} is not a layer of {arch.name}; its layers "
                                  f"are {list(arch.layers)}")
            return self.config.layer
        blocks = [layer for layer in arch.layers if layer.startswith("block")]
        return blocks[-1] if blocks else arch.layers[-1]

    def units(self, arch: Architecture) -> list[str]:
        self.layer(arch)
        if self.config.layer_decay is not None and not arch.name.startswith("timm/"):
            raise ConfigError(f"{self.name}: layer_decay is for ViTs (timm/...); {arch.name} has no blocks to decay "
                              f"over: remove layer_decay")
        return [unit for unit, _, _ in self.grid()] + [FINAL]

    def checkpoint_bytes(self, arch: Architecture) -> int:
        return training_checkpoint_bytes(arch.name)  # the trunk's weights and their momentum (the classifier is small)

    def folder(self, ctx: RunContext, model: LoadedModel, *parts: str) -> Path:
        return inside(ctx.run_dir, NAME, self.instance_name or NAME, model.name, *parts)

    def schedule(self, lr: float, wd: float, num_train: int) -> Schedule:
        c = self.config
        if c.batch_size > num_train:
            raise ConfigError(f"{self.name}: batch_size {c.batch_size} is larger than the {num_train} labelled "
                              f"training images; lower batch_size")
        return Schedule(name=f"finetune-{c.lr_schedule}", iterations=c.steps, base_lr=lr, batch_size=c.batch_size,
                        decay="cosine" if c.lr_schedule == "cosine" else "step", milestones=(),
                        weight_decay=wd / lr, momentum=0.9, iterations_per_epoch=num_train // c.batch_size)

    def protocol(self, ctx: RunContext, model: LoadedModel, data: ClassificationData, train: SplitPart) -> dict:
        """Everything a grid point's result depends on besides (lr, wd): the final unit accepts only
        grid results made with exactly this."""
        c = self.config
        return {"weights": model.weights, "arch": model.arch.name, "seed": ctx.seed,
                "image_size": c.image_size or model.arch.reference_input_size, "steps": c.steps,
                "batch_size": c.batch_size, "lr_schedule": c.lr_schedule, "crop_scale": list(c.crop_scale),
                "layer_decay": c.layer_decay, "layer": self.layer(model.arch),
                "train": _identity([train]), "val": _identity([data.val])}

    def run(self, ctx: RunContext, model: LoadedModel, unit: str, on_iteration=None) -> list[dict]:
        grid = {name: (lr, wd) for name, lr, wd in self.grid()}
        if unit != FINAL and unit not in grid:
            raise ConfigError(f"{self.name}: unknown unit {unit!r}; expected one of {[*grid, FINAL]}")
        c = self.config
        data = self.data(ctx)
        train, val_labelled, label_columns = self.labelled(ctx, data)
        protocol = self.protocol(ctx, model, data, train)
        protocol_hash = config_hash(protocol)
        size = protocol["image_size"]
        metric, metric_fn = self.metric(data)
        if unit == FINAL:
            (lr, wd), chosen, grid_results = self.choose(ctx, model, protocol_hash, metric)
            train_parts, eval_part, split = [train, val_labelled], data.test, "test"  # the only read of test
        else:
            lr, wd = grid[unit]
            train_parts, eval_part, split = [train], data.val, "val"
        n_train = sum(len(p) for p in train_parts)
        schedule = self.schedule(lr, wd, n_train)
        fingerprint = config_hash({**protocol, "lr": lr, "weight_decay": wd, "trained_on": _identity(train_parts),
                                   "evaluated_on": _identity([eval_part])})
        layer = self.layer(model.arch)
        setup = FinetuneSetup(layer=layer, num_classes=data.num_classes, image_size=size, schedule=schedule,
                              layer_decay=c.layer_decay, seed=ctx.seed, checkpoint_every=c.checkpoint_every,
                              num_workers=ctx.num_workers if c.num_workers is None else c.num_workers,
                              eval_batch_size=ctx.batch_size, fingerprint=fingerprint,
                              desc=f"{self.name} {model.name} {unit}")
        out_dir = self.folder(ctx, model, unit)
        state = finetune(model.backbone, _images(train_parts, train_transform(size, tuple(c.crop_scale))),
                         _images([eval_part], eval_transform(size)), setup, out_dir, ctx.device, on_iteration)
        diverged = state.get("diverged_at")
        if diverged is not None and unit == FINAL:
            raise ConfigError(f"{self.name}: retraining with the chosen point (lr {lr:g}, weight decay {wd:g}) on "
                              f"train + validation diverged at step {diverged}; remove that point from the grid "
                              f"(learning_rates / weight_decays) and run again")
        values = ({name: 0.0 for name in dict.fromkeys((metric, "top1", "top5"))} if diverged is not None
                  else scores(state["evaluation"], metric, metric_fn))
        common = {
            **data.provenance(), **label_columns, "recipe": RECIPE, "layer": layer, "lr": lr, "weight_decay": wd,
            "sgd_weight_decay": schedule.weight_decay, "steps": c.steps, "batch_size": c.batch_size,
            "lr_schedule": c.lr_schedule, "layer_decay": "" if c.layer_decay is None else c.layer_decay,
            "image_size": size, "optimizer": "sgd-nesterov-0.9",
            "bn_momentum": bn_momentum(schedule.iterations_per_epoch),
            "trained_on": " + ".join(p.description for p in train_parts), "n_trained": n_train,
            "split": split, "n_scored": len(eval_part), "metric_step": 100.0 / len(eval_part),
            "diverged_at": "" if diverged is None else diverged,
            "log_csv": str(out_dir / "log.csv"), "checkpoint": str(out_dir / "checkpoint.pt"),
        }
        if unit == FINAL:
            common.update({"evaluation": "test", "chosen": True, "selected_on": "val", "selection_metric": metric,
                           "selection_value": chosen, "grid_points": len(grid_results)})
        else:
            common.update({"evaluation": f"val {unit}", "chosen": "", "selected_on": ""})
            self.write_grid_result(ctx, model, unit, protocol_hash, lr, wd, metric, values, diverged is not None)
        return [{**common, "metric": name, "value": value} for name, value in values.items()]

    # --- the grid's results -------------------------------------------------------------------

    def write_grid_result(self, ctx, model, unit, protocol_hash, lr, wd, metric, values, diverged) -> None:
        result = {"unit": unit, "protocol": protocol_hash, "lr": lr, "weight_decay": wd, "metric": metric,
                  "value": values[metric], "scores": values, "diverged": diverged}
        atomic_write(self.folder(ctx, model, "grid", f"{unit}.json"), json.dumps(result, indent=1))

    def choose(self, ctx, model, protocol_hash: str, metric: str) -> tuple[tuple[float, float], float, list]:
        """The grid point with the best validation ``metric`` (ties: the first in grid order); a point
        whose training diverged is never chosen."""
        results, missing, stale = [], [], []
        for unit, lr, wd in self.grid():
            path = self.folder(ctx, model, "grid", f"{unit}.json")
            if not path.is_file():
                missing.append(unit)
                continue
            result = json.loads(path.read_text())
            if result.get("protocol") != protocol_hash or result.get("metric") != metric:
                stale.append(unit)
                continue
            if not result.get("diverged"):
                results.append((result["value"], lr, wd))
        if missing or stale:
            where = f"{model.name}/{self.instance_name or self.name}/<unit>"
            problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
                       ([f"made with another configuration or data: {', '.join(stale)}"] if stale else [])
            raise ConfigError(f"{self.name}: the final unit chooses among every grid point's validation result, and "
                              f"{'; '.join(problems)} (units {where}); run those units first (ssl-bench run runs "
                              f"them before 'final'), then run 'final' again")
        if not results:
            raise ConfigError(f"{self.name}: every grid point diverged for {model.name}; lower learning_rates")
        best = max(value for value, _, _ in results)
        _, lr, wd = next(r for r in results if r[0] == best)
        logger.info(f"[{self.name}] {model.name}: chose lr {lr:g}, weight decay {wd:g} ({metric} {best:.2f} on val)")
        return (lr, wd), best, results
