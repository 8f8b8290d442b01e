"""The `finetune` task's training: the network (trunk + a new linear classifier), its parameter
groups (layer decay for ViTs), one resumable training run and its evaluation. Apart from the task
(task.py), whose options and report hooks are then read without importing torch."""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchmark.errors import ConfigError
from benchmark.models import FrozenBackbone
from benchmark.training import (CsvLog, Part, ResumableBatches, Schedule, TrainingLoop, atomic_torch_save, autocast,
                                build_optimizer, derived_seed, loader_batches, to_device)
from tasks.linear.heads import SeededAugmentation

from . import NAME

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_HEAD_TAG = 0xF17E


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
