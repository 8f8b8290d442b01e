"""`linear_places205`: a preset of `linear` (tasks.linear.classification, whose run it shares
through ``LinearHeadsTask``): one linear head per
layer on the frozen trunk, trained on Places205 train, top-1 / top-5 on Places205 val (Goyal et al.
2019, "image classification": Places205 linear), with the goyal recipe's heads and optimiser.

What the preset sets: the data (Places205 in its official layout; the val list is the test set,
training reads train only), the schedule options of the Places205 protocol (``reference``,
``vissl`` or ``custom``), an evaluation on val every ``eval_every`` epochs, and rows with both the
best evaluation during training (what the reference reports) and the final one (column
``evaluation``). The run itself is `linear`'s. The run lives in
``RUN_DIR/linear_places205/<model>/<fingerprint>/`` (checkpoint.pt, log.csv); a unit interrupted at
any point resumes from its checkpoint when rerun and reaches the same heads and metrics.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.config import config_hash
from benchmark.datasets.places import PlacesSplit, load_places205
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, Layers, ListOf, OneOf, Str, declare
from benchmark.paths import inside

from . import NAME, SCHEDULE_NAMES
from .classification import RECIPES, LinearHeadsTask, LinearImages, LinearRun

if TYPE_CHECKING:  # torch is imported where a run trains: the options are read without it
    from benchmark.models import Architecture
    from benchmark.training import Schedule

SCHEDULE_KEYS = ("epochs", "iterations", "milestones", "base_lr", "batch_size", "weight_decay")
RECIPE = "goyal"


def _list_identity(split: PlacesSplit) -> str:
    """Cheap identity of a split: its listed paths and labels (no file is opened or stat'ed)."""
    digest = hashlib.sha256()
    for path, label in zip(split.image_paths, split.labels.tolist()):
        digest.update(f"{path.relative_to(split.root).as_posix()} {label}\n".encode())
    return digest.hexdigest()[:16]


class LinearPlaces205(LinearHeadsTask):
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

    @property
    def recipe(self) -> dict:
        return RECIPES[RECIPE]

    def root(self, ctx: RunContext) -> Path:
        return ctx.data_root / self.config.data_dir

    def layers(self, arch: Architecture) -> list[str]:
        requested = self.config.layers or arch.layers
        unknown = [layer for layer in requested if layer not in arch.layers]
        if unknown:
            raise ConfigError(f"{self.name}: {arch.name} has no layer(s) {unknown}; it has {list(arch.layers)}")
        return list(requested)

    def check_data(self, ctx: RunContext) -> None:
        from .heads import check_schedule_options

        cfg = self.config
        check_schedule_options(cfg.schedule, **{k: cfg[k] for k in SCHEDULE_KEYS})  # how they fit together
        load_places205(self.root(ctx), "train")
        load_places205(self.root(ctx), "val")

    def images(self, ctx: RunContext) -> LinearImages:
        """Train on train only; the val list is the test set."""
        import torch

        train, val = load_places205(self.root(ctx), "train"), load_places205(self.root(ctx), "val")
        if train.num_classes != val.num_classes:  # load_places205 makes them agree; be explicit
            raise ConfigError(f"{self.name}: train and val disagree on the number of classes")
        return LinearImages(train_paths=list(train.image_paths),
                            train_labels=torch.as_tensor(train.labels, dtype=torch.int64),
                            test_paths=list(val.image_paths),
                            test_labels=torch.as_tensor(val.labels, dtype=torch.int64),
                            num_classes=train.num_classes, source=(train, val))

    def schedule(self, arch_name: str, num_train: int) -> Schedule:
        from .heads import resolve_schedule

        cfg = self.config
        return resolve_schedule(cfg.schedule, arch_name, num_train, **{k: cfg[k] for k in SCHEDULE_KEYS})

    def eval_every(self, schedule: Schedule) -> int:
        return self.config.eval_every

    def fingerprint(self, run: LinearRun, seed: int) -> str:
        train, val = run.images.source
        return config_hash({
            "weights": run.model.weights, "arch": run.model.arch.name, "layers": run.layers,
            "image_size": run.image_size, "schedule": run.schedule.describe(), "eval_every": run.eval_every,
            "seed": seed, "world_size": run.world_size, "train": _list_identity(train), "val": _list_identity(val),
            "num_classes": train.num_classes,
        })

    def out_dir(self, ctx: RunContext, model: LoadedModel, fingerprint: str) -> Path:
        return inside(ctx.run_dir, self.name, model.name, fingerprint)

    def rows(self, run: LinearRun, result: dict) -> list[dict]:
        """Per layer and metric, the best evaluation during training and the final one."""
        from .heads import TOPK

        schedule, out_dir = run.schedule, run.out_dir
        ipe = schedule.iterations_per_epoch
        common = {
            "dataset": "places205", "schedule": schedule.name, "batch_size": schedule.batch_size,
            "lr": schedule.lr, "base_lr": schedule.base_lr, "weight_decay": schedule.weight_decay,
            "iterations": schedule.iterations, "epochs": round(schedule.epochs, 3),
            "milestones": "/".join(str(m) for m in schedule.milestones), "image_size": run.image_size,
            "world_size": run.world_size, "n_train": len(run.images.train_paths),
            "n_test": len(run.images.test_paths), "num_classes": run.images.num_classes,
            "evaluations": len(result["evaluations"]),
            "head": "avgpool-bn(no affine)-linear", "optimizer": "sgd-nesterov-0.9",
            "log_csv": str(out_dir / "log.csv"), "checkpoint": str(out_dir / "checkpoint.pt"),
        }
        final = result["final"]
        rows = []
        for layer in run.layers:
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
