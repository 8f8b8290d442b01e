"""`linear_places205`: one linear head per layer on the frozen trunk, trained on Places205 train,
top-1 / top-5 on Places205 val (Goyal et al. 2019, "image classification": Places205 linear).

All layers are one unit: their heads train together from a single trunk pass per batch
(tasks.linear.heads). The run lives in ``RUN_DIR/linear_places205/<model>/<fingerprint>/``
(checkpoint.pt, log.csv); a unit interrupted at any point resumes from its checkpoint when rerun
and reaches the same heads and metrics. The reference reports the best evaluation during
training; both the best and the final evaluation are reported (column ``evaluation``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.config import config_hash
from benchmark.datasets.places import PlacesSplit, load_places205
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, Layers, ListOf, OneOf, Str, declare
from benchmark.paths import inside

from . import NAME, SCHEDULE_NAMES

if TYPE_CHECKING:
    from benchmark.models import Architecture

UNIT = "all-layers"
SCHEDULE_KEYS = ("epochs", "iterations", "milestones", "base_lr", "batch_size", "weight_decay")


def _list_identity(split: PlacesSplit) -> str:
    """Cheap identity of a split: its listed paths and labels (no file is opened or stat'ed)."""
    digest = hashlib.sha256()
    for path, label in zip(split.image_paths, split.labels.tolist()):
        digest.update(f"{path.relative_to(split.root).as_posix()} {label}\n".encode())
    return digest.hexdigest()[:16]


class LinearPlaces205(Task):
    name = NAME
    dataset = "places205"
    needs_gpu = True  # trains heads on the trunk's outputs: no feature cache, an accelerator helps
    options = declare({
        "layers": Layers(None),  # default: every layer of the architecture (ResNet: conv1..res5 and pool5)
        "image_size": Int(None, min=16),  # default: the architecture's reference input (224 / 227)
        "data_dir": Str("Places205"),  # relative to the data root, or absolute
        # reference (fair_ssb: 140k it at batch 256) | vissl (14 epochs) | custom
        "schedule": Choice(*SCHEDULE_NAMES, default="reference"),
        # custom schedule: exactly one of epochs / iterations, milestones in the same unit
        "epochs": Float(None, min=0, min_open=True),
        "iterations": Int(None, min=1),
        "milestones": ListOf(Float(min=0, min_open=True), None, increasing=True),
        # override the schedule's values (None: the schedule's; weight decay per architecture)
        "base_lr": Float(None, min=0),  # at batch 256; the LR used is base_lr * batch_size / 256
        "batch_size": Int(None, min=1),  # global batch; the reference schedule's iterations scale by 256 / batch_size
        "weight_decay": Float(None, min=0),
        "eval_every": Int(1, min=1),  # epochs between evaluations on val (and one at the end)
        "checkpoint_every": Int(1000, min=1),  # iterations between checkpoints (and one at the end)
        # processes (GPUs); auto = every visible GPU when the device is cuda
        "world_size": OneOf(Choice("auto"), Int(min=1), default="auto"),
        "num_workers": Int(None, min=0),  # DataLoader workers; None = the suite's num_workers
    })

    def root(self, ctx: RunContext) -> Path:
        return ctx.data_root / self.config.data_dir

    def layers(self, arch: Architecture) -> list[str]:
        requested = self.config.layers or arch.layers
        unknown = [layer for layer in requested if layer not in arch.layers]
        if unknown:
            raise ConfigError(f"{self.name}: {arch.name} has no layer(s) {unknown}; it has {list(arch.layers)}")
        return list(requested)

    def units(self, arch: Architecture) -> list[str]:
        self.layers(arch)
        return [UNIT]

    def check_data(self, ctx: RunContext) -> None:
        from .heads import check_schedule_options

        cfg = self.config
        check_schedule_options(cfg.schedule, **{k: cfg[k] for k in SCHEDULE_KEYS})  # how they fit together
        load_places205(self.root(ctx), "train")
        load_places205(self.root(ctx), "val")

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from benchmark.datasets.images import ImageFileDataset, train_transform
        from benchmark.training import resolve_world_size

        from .heads import LinearSetup, TOPK, eval_transform, resolve_schedule, train_linear_heads

        if unit != UNIT:
            raise ConfigError(f"{self.name} has one unit, {UNIT!r}; got {unit!r}")
        cfg = self.config
        layers = self.layers(model.arch)
        size = cfg.image_size or model.arch.reference_input_size
        train, val = load_places205(self.root(ctx), "train"), load_places205(self.root(ctx), "val")
        if train.num_classes != val.num_classes:  # load_places205 makes them agree; be explicit
            raise ConfigError(f"{self.name}: train and val disagree on the number of classes")
        schedule = resolve_schedule(cfg.schedule, model.arch.name, len(train.labels),
                                    **{k: cfg[k] for k in SCHEDULE_KEYS})
        world_size = resolve_world_size(cfg.world_size, ctx.device)
        fingerprint = config_hash({
            "weights": model.weights, "arch": model.arch.name, "layers": layers, "image_size": size,
            "schedule": schedule.describe(), "eval_every": cfg.eval_every, "seed": ctx.seed,
            "world_size": world_size, "train": _list_identity(train), "val": _list_identity(val),
            "num_classes": train.num_classes,
        })
        out_dir = inside(ctx.run_dir, self.name, model.name, fingerprint)
        setup = LinearSetup(
            layers=layers, num_classes=train.num_classes, image_size=size, schedule=schedule, seed=ctx.seed,
            eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
            num_workers=ctx.num_workers if cfg.num_workers is None else cfg.num_workers,
            eval_batch_size=max(ctx.batch_size, schedule.batch_size // world_size),
            world_size=world_size, fingerprint=fingerprint, desc=f"{self.name} {model.name}",
        )
        train_set = ImageFileDataset(train.image_paths, train_transform(size),
                                     torch.as_tensor(train.labels, dtype=torch.int64))
        val_set = ImageFileDataset(val.image_paths, eval_transform(size),
                                   torch.as_tensor(val.labels, dtype=torch.int64))
        result = train_linear_heads(model.backbone, train_set, val_set, setup, out_dir, ctx.device)

        ipe = schedule.iterations_per_epoch
        common = {
            "dataset": "places205", "schedule": schedule.name, "batch_size": schedule.batch_size,
            "lr": schedule.lr, "base_lr": schedule.base_lr, "weight_decay": schedule.weight_decay,
            "iterations": schedule.iterations, "epochs": round(schedule.epochs, 3),
            "milestones": "/".join(str(m) for m in schedule.milestones), "image_size": size,
            "world_size": world_size, "n_train": len(train.labels), "n_test": len(val.labels),
            "num_classes": train.num_classes, "evaluations": len(result["evaluations"]),
            "head": "avgpool-bn(no affine)-linear", "optimizer": "sgd-nesterov-0.9",
            "log_csv": str(out_dir / "log.csv"), "checkpoint": str(out_dir / "checkpoint.pt"),
        }
        final = result["final"]
        rows = []
        for layer in layers:
            for k in TOPK:
                key = f"top{k}/{layer}"
                best_value, best_iteration = result["best"][key]
                for evaluation, value, iteration in (("best", best_value, best_iteration),
                                                     ("final", final[key], final["iteration"])):
                    rows.append({**common, "layer": layer, "metric": f"top{k}", "value": float(value),
                                 "evaluation": evaluation, "iteration": int(iteration),
                                 "epoch": round(iteration / ipe, 3),
                                 "feature_dim": int(result["feature_dims"][layer])})
        return rows
