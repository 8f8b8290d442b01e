"""`linear`: linear heads on the frozen trunk, one per layer, trained from images (random-resized-crop +
flip) on any classification dataset ssl-bench reads, with the recipe of a paper (``recipe``):

- ``goyal``: Goyal et al. 2019 (fair_ssb), ``linear_places205``'s reference schedule;
- ``simclr``: SimCLR (arXiv 2002.05709) appendix B.6 with B.5;
- ``mocov2``: MoCo's ``main_lincls.py`` (facebookresearch/moco), which MoCo v2 uses;
- ``dino``: DINO's ``eval_linear.py`` (facebookresearch/dino).

docs/tasks/linear.md gives each recipe's values and source. The heads are trained by the engine of
``tasks.linear.heads`` (one trunk pass per batch trains every layer's head; resumable at any step):
the layer's protocol pooling, then BatchNorm without affine (goyal only) and a Linear layer, trained
by SGD with Nesterov momentum (goyal, simclr) or plain momentum (mocov2, dino), as each source does.

No hyper-parameter is chosen, so the heads train on train + validation and are scored once, at the
end, on the test part (top-1 / top-5 per layer).

``run`` is written once, in ``LinearHeadsTask``, for this task and its presets: ``linear`` and
``linear_places205`` derive from it and give what differs (their options, ``images``,
``schedule``, ``eval_every``, ``fingerprint``, ``out_dir``, ``rows``), so both train through the
same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.config import config_hash
from benchmark.datasets.classification import ClassificationData, load_classification
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, OneOf, declare
from benchmark.paths import inside
from tasks.classification.common import DATA_OPTIONS
from tasks.common import resolve_layers

if TYPE_CHECKING:  # torch is imported where a run trains: the options are read without it
    import torch

    from benchmark.models import Architecture
    from benchmark.training import Schedule

NAME = "linear"
UNIT = "all-layers"
# Each recipe as data: length in epochs (None: goyal's 140k iterations at batch 256), the LR at batch
# 256 (scaled by batch / 256), the batch, weight decay (None: 1e-4 ResNets / 5e-4 AlexNet), the
# decay and its milestones as fractions of the run
RECIPES: dict[str, dict] = {
    "goyal": {"epochs": None, "base_lr": 0.01, "batch_size": 256, "weight_decay": None, "decay": "step",
              "milestones": (40 / 140, 80 / 140, 120 / 140), "layers": "all", "batchnorm": True, "nesterov": True,
              "source": "Goyal et al. 2019 (fair_ssb): 140k iterations at batch 256, LR 0.01 x0.1 at 40k/80k/120k"},
    "simclr": {"epochs": 90, "base_lr": 0.1, "batch_size": 4096, "weight_decay": 0.0, "decay": "cosine",
               "milestones": (), "layers": "last", "batchnorm": False, "nesterov": True,
               "source": "SimCLR arXiv 2002.05709 B.6/B.5: 90 epochs, LR 0.1 x batch/256, batch 4096, no weight decay"},
    "mocov2": {"epochs": 100, "base_lr": 30.0, "batch_size": 256, "weight_decay": 0.0, "decay": "step",
               "milestones": (0.6, 0.8), "layers": "last", "batchnorm": False, "nesterov": False,
               "source": "facebookresearch/moco main_lincls.py: 100 epochs, LR 30, batch 256, x0.1 at 60/80, wd 0"},
    "dino": {"epochs": 100, "base_lr": 0.001, "batch_size": 1024, "weight_decay": 0.0, "decay": "cosine",
             "milestones": (), "layers": "last", "batchnorm": False, "nesterov": False,
             "source": "facebookresearch/dino eval_linear.py: 100 epochs, LR 0.001 x batch/256, cosine, wd 0"},
}


def recipe_schedule(recipe: str, arch_name: str, num_train: int, *, epochs=None, base_lr=None, batch_size=None,
                    weight_decay=None) -> Schedule:
    """The recipe's schedule for this data; ``epochs`` etc. override the recipe's values (tiny runs)."""
    from .heads import resolve_schedule

    spec = RECIPES[recipe]
    if recipe == "goyal" and epochs is None:
        schedule = resolve_schedule("reference", arch_name, num_train, base_lr=base_lr, batch_size=batch_size,
                                    weight_decay=weight_decay, where=NAME)
        return dataclasses.replace(schedule, name=recipe)
    length = epochs if epochs is not None else spec["epochs"]
    milestones = [m * length for m in spec["milestones"]]
    schedule = resolve_schedule("custom", arch_name, num_train, epochs=length, milestones=milestones,
                                base_lr=base_lr if base_lr is not None else spec["base_lr"],
                                batch_size=batch_size or spec["batch_size"],
                                weight_decay=weight_decay if weight_decay is not None else spec["weight_decay"],
                                where=NAME)
    return dataclasses.replace(schedule, name=recipe, decay=spec["decay"])


@dataclass
class LinearImages:
    """The labelled images a run trains on and is scored on; ``source``: what they were read from
    (the rows describe it)."""

    train_paths: list
    train_labels: torch.Tensor
    test_paths: list
    test_labels: torch.Tensor
    num_classes: int
    source: Any


@dataclass
class LinearRun:
    """What a run resolved before training: its identity (the fingerprint) and its rows read it."""

    model: LoadedModel
    layers: list[str]
    image_size: int
    images: LinearImages
    schedule: Schedule
    eval_every: int
    world_size: int
    out_dir: Path | None = None


class LinearHeadsTask(Task):
    """The run of linear heads from images, written once: `linear` and its presets (``linear_places205``)
    derive from it and give what differs between them, through the methods below; options read here
    (``image_size``, ``world_size``, ``checkpoint_every``, ``num_workers``) are declared by each."""

    @property
    def recipe(self) -> dict:
        """The recipe (an entry of ``RECIPES``) whose heads and optimiser the run uses."""
        raise NotImplementedError

    def layers(self, arch: Architecture) -> list[str]:
        raise NotImplementedError

    def images(self, ctx: RunContext) -> LinearImages:
        raise NotImplementedError

    def schedule(self, arch_name: str, num_train: int) -> Schedule:
        raise NotImplementedError

    def eval_every(self, schedule: Schedule) -> int:
        """Epochs between evaluations on the test images (one also ends the run)."""
        raise NotImplementedError

    def fingerprint(self, run: LinearRun, seed: int) -> str:
        """The identity of the run's result: its checkpoints and its folder."""
        raise NotImplementedError

    def out_dir(self, ctx: RunContext, model: LoadedModel, fingerprint: str) -> Path:
        raise NotImplementedError

    def rows(self, run: LinearRun, result: dict) -> list[dict]:
        raise NotImplementedError

    def units(self, arch: Architecture) -> list[str]:
        self.layers(arch)
        return [UNIT]

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        from benchmark.datasets.images import ImageFileDataset, train_transform
        from benchmark.training import resolve_world_size

        from .heads import LinearSetup, eval_transform, train_linear_heads

        if unit != UNIT:
            raise ConfigError(f"{self.name} has one unit, {UNIT!r}; got {unit!r}")
        c = self.config
        layers = self.layers(model.arch)
        size = c.image_size or model.arch.reference_input_size
        images = self.images(ctx)
        schedule = self.schedule(model.arch.name, len(images.train_paths))
        world_size = resolve_world_size(c.world_size, ctx.device)
        run = LinearRun(model=model, layers=layers, image_size=size, images=images, schedule=schedule,
                        eval_every=self.eval_every(schedule), world_size=world_size)
        fingerprint = self.fingerprint(run, ctx.seed)
        run.out_dir = self.out_dir(ctx, model, fingerprint)
        setup = LinearSetup(
            layers=layers, num_classes=images.num_classes, image_size=size, schedule=schedule, seed=ctx.seed,
            eval_every=run.eval_every, checkpoint_every=c.checkpoint_every,
            num_workers=ctx.num_workers if c.num_workers is None else c.num_workers,
            eval_batch_size=max(ctx.batch_size, schedule.batch_size // world_size), world_size=world_size,
            fingerprint=fingerprint, desc=f"{self.name} {model.name}",
            head_batchnorm=self.recipe["batchnorm"], nesterov=self.recipe["nesterov"])
        train_set = ImageFileDataset(images.train_paths, train_transform(size), images.train_labels)
        test_set = ImageFileDataset(images.test_paths, eval_transform(size), images.test_labels)
        result = train_linear_heads(model.backbone, train_set, test_set, setup, run.out_dir, ctx.device)
        return self.rows(run, result)


class LinearClassification(LinearHeadsTask):
    name = NAME
    dataset = "classification"
    needs_gpu = True
    options = declare({
        **DATA_OPTIONS,  # layers None: every layer (goyal), the last layer (the other recipes)
        "recipe": Choice(*RECIPES, default="goyal"),
        # override the recipe (tiny runs, other budgets); recorded in the rows
        "epochs": Float(None, min=0, min_open=True),
        "base_lr": Float(None, min=0),  # at batch 256
        "batch_size": Int(None, min=1),
        "weight_decay": Float(None, min=0),
        "eval_every": Int(None, min=1),  # epochs between evaluations on test for log.csv; None: only at the end
        "checkpoint_every": Int(1000, min=1),
        # processes (GPUs); auto = every visible GPU when the device is cuda
        "world_size": OneOf(Choice("auto"), Int(min=1), default="auto"),
        "num_workers": Int(None, min=0),
    })

    def data(self, ctx: RunContext) -> ClassificationData:
        c = self.config
        return load_classification(ctx.data_root, c.dataset, layout=c.layout, train_split=c.train_split,
                                   val_split=c.val_split, test_split=c.test_split, val_fraction=c.val_fraction,
                                   val_seed=c.val_seed, follow_symlinks=c.follow_symlinks)

    def layers(self, arch: Architecture) -> list[str]:
        if self.config.layers is None and RECIPES[self.config.recipe]["layers"] == "last":
            return [arch.layers[-1]]
        return resolve_layers(self.name, self.config.layers, arch)

    def check_data(self, ctx: RunContext) -> None:
        self.data(ctx)

    @property
    def recipe(self) -> dict:
        return RECIPES[self.config.recipe]

    def images(self, ctx: RunContext) -> LinearImages:
        """Train on train + validation (no hyper-parameter is chosen), score the test part."""
        import torch

        data = self.data(ctx)
        parts = [data.train, data.val]
        return LinearImages(
            train_paths=[part.split.image_paths[i] for part in parts for i in part.indices],
            train_labels=torch.as_tensor(np.concatenate([part.labels for part in parts]), dtype=torch.int64),
            test_paths=[data.test.split.image_paths[i] for i in data.test.indices],
            test_labels=torch.as_tensor(data.test.labels, dtype=torch.int64), num_classes=data.num_classes,
            source=data)

    def schedule(self, arch_name: str, num_train: int) -> Schedule:
        c = self.config
        return recipe_schedule(c.recipe, arch_name, num_train, epochs=c.epochs, base_lr=c.base_lr,
                               batch_size=c.batch_size, weight_decay=c.weight_decay)

    def eval_every(self, schedule: Schedule) -> int:
        """Epochs between evaluations; by default one past the run's length: only the final one."""
        ipe = schedule.iterations_per_epoch
        return self.config.eval_every if self.config.eval_every is not None else schedule.iterations // ipe + 1

    def fingerprint(self, run: LinearRun, seed: int) -> str:
        images, recipe = run.images, self.recipe
        return config_hash({
            "weights": run.model.weights, "arch": run.model.arch.name, "layers": run.layers,
            "image_size": run.image_size, "schedule": {**run.schedule.describe(), "decay": run.schedule.decay},
            "eval_every": run.eval_every, "seed": seed, "head_batchnorm": recipe["batchnorm"],
            "nesterov": recipe["nesterov"], "world_size": run.world_size,
            "train": config_hash([f"{p} {y}" for p, y in zip(map(str, images.train_paths),
                                                             images.train_labels.tolist())]),
            "test": config_hash([f"{p} {y}" for p, y in zip(map(str, images.test_paths),
                                                            images.test_labels.tolist())]),
        })

    def out_dir(self, ctx: RunContext, model: LoadedModel, fingerprint: str) -> Path:
        return inside(ctx.run_dir, NAME, self.instance_name or NAME, model.name, fingerprint)

    def rows(self, run: LinearRun, result: dict) -> list[dict]:
        """One row per layer and metric: the final evaluation on test."""
        from .heads import TOPK

        c, recipe, schedule, data = self.config, self.recipe, run.schedule, run.images.source
        final = result["final"]
        common = {
            **data.provenance(), "recipe": c.recipe, "recipe_source": recipe["source"],
            "schedule": schedule.decay, "batch_size": schedule.batch_size, "lr": schedule.lr,
            "base_lr": schedule.base_lr, "weight_decay": schedule.weight_decay, "iterations": schedule.iterations,
            "epochs": round(schedule.epochs, 3), "milestones": "/".join(str(m) for m in schedule.milestones),
            "image_size": run.image_size, "world_size": run.world_size,
            "trained_on": f"{data.train.description} + {data.val.description}",
            "n_trained": len(run.images.train_paths), "split": "test",
            "metric_step": 100.0 / len(run.images.test_paths),
            "head": "pool-bn(no affine)-linear" if recipe["batchnorm"] else "pool-linear",
            "optimizer": "sgd-nesterov-0.9" if recipe["nesterov"] else "sgd-momentum-0.9", "evaluation": "final",
            "log_csv": str(run.out_dir / "log.csv"), "checkpoint": str(run.out_dir / "checkpoint.pt"),
        }
        return [{**common, "layer": layer, "metric": f"top{k}", "value": float(final[f"top{k}/{layer}"]),
                 "iteration": int(final["iteration"]), "feature_dim": int(result["feature_dims"][layer])}
                for layer in run.layers for k in TOPK]
