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

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from benchmark.config import config_hash
from benchmark.datasets.classification import ClassificationData, SplitPart, load_classification
from benchmark.datasets.transfer import TRANSFER_LAYOUTS, metric_function
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.diskspace import training_checkpoint_bytes
from benchmark.errors import ConfigError
from benchmark.metrics import top1_accuracy
from benchmark.options import Choice, Float, Int, ListOf, Str, declare
from benchmark.paths import atomic_write, inside
from tasks.classification.common import DATA_OPTIONS

from . import NAME
from .labels import (balanced_fraction, check_list_covered, image_name, list_digest, listed_positions,
                     read_label_list, subset)

if TYPE_CHECKING:
    from benchmark.datasets.images import ImageFileDataset
    from benchmark.models import Architecture
    from benchmark.training import Schedule

logger = logging.getLogger(__name__)

RECIPE = "simclr-b8-kornblith2019"
FINAL = "final"
# the paper's grid: 7 learning rates log-spaced over [1e-4, 0.1]; no weight decay and 7 values
# log-spaced over [1e-6, 1e-3] (each divided by the learning rate when used)
LEARNING_RATES = [float(f"{v:.6g}") for v in np.logspace(-4, -1, 7)]
WEIGHT_DECAYS = [0.0] + [float(f"{v:.6g}") for v in np.logspace(-6, -3, 7)]


def grid_unit(lr: float, wd: float) -> str:
    return f"lr{lr:g}-wd{wd:g}"


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
    import torch

    from benchmark.datasets.images import ImageFileDataset

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
        from benchmark.training import Schedule

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
        from benchmark.datasets.images import train_transform
        from tasks.linear.heads import eval_transform

        from .train import FinetuneSetup, bn_momentum, finetune

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
