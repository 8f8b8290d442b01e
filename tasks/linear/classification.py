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
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from benchmark.config import config_hash
from benchmark.datasets.classification import ClassificationData, load_classification
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, OneOf, declare
from benchmark.paths import inside
from tasks.classification.common import DATA_OPTIONS
from tasks.common import resolve_layers

if TYPE_CHECKING:
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


class LinearClassification(Task):
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

    def units(self, arch: Architecture) -> list[str]:
        self.layers(arch)
        return [UNIT]

    def check_data(self, ctx: RunContext) -> None:
        self.data(ctx)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from benchmark.datasets.images import ImageFileDataset, train_transform
        from benchmark.training import resolve_world_size

        from .heads import LinearSetup, TOPK, eval_transform, train_linear_heads

        if unit != UNIT:
            raise ConfigError(f"{self.name} has one unit, {UNIT!r}; got {unit!r}")
        c = self.config
        recipe = RECIPES[c.recipe]
        data = self.data(ctx)
        layers = self.layers(model.arch)
        size = c.image_size or model.arch.reference_input_size
        parts = [data.train, data.val]
        paths = [part.split.image_paths[i] for part in parts for i in part.indices]
        labels = torch.as_tensor(np.concatenate([part.labels for part in parts]), dtype=torch.int64)
        test_paths = [data.test.split.image_paths[i] for i in data.test.indices]
        schedule = recipe_schedule(c.recipe, model.arch.name, len(paths), epochs=c.epochs, base_lr=c.base_lr,
                                   batch_size=c.batch_size, weight_decay=c.weight_decay)
        ipe = schedule.iterations_per_epoch
        world_size = resolve_world_size(c.world_size, ctx.device)
        eval_every = c.eval_every if c.eval_every is not None else schedule.iterations // ipe + 1
        fingerprint = config_hash({
            "weights": model.weights, "arch": model.arch.name, "layers": layers, "image_size": size,
            "schedule": {**schedule.describe(), "decay": schedule.decay}, "eval_every": eval_every, "seed": ctx.seed,
            "head_batchnorm": recipe["batchnorm"], "nesterov": recipe["nesterov"], "world_size": world_size,
            "train": config_hash([f"{p} {y}" for p, y in zip(map(str, paths), labels.tolist())]),
            "test": config_hash([f"{p} {y}" for p, y in zip(map(str, test_paths), data.test.labels.tolist())]),
        })
        out_dir = inside(ctx.run_dir, NAME, self.instance_name or NAME, model.name, fingerprint)
        setup = LinearSetup(
            layers=layers, num_classes=data.num_classes, image_size=size, schedule=schedule, seed=ctx.seed,
            eval_every=eval_every, checkpoint_every=c.checkpoint_every,
            num_workers=ctx.num_workers if c.num_workers is None else c.num_workers,
            eval_batch_size=max(ctx.batch_size, schedule.batch_size // world_size), world_size=world_size,
            fingerprint=fingerprint, desc=f"{self.name} {model.name}",
            head_batchnorm=recipe["batchnorm"], nesterov=recipe["nesterov"])
        train_set = ImageFileDataset(paths, train_transform(size), labels)
        test_set = ImageFileDataset(test_paths, eval_transform(size),
                                    torch.as_tensor(data.test.labels, dtype=torch.int64))
        result = train_linear_heads(model.backbone, train_set, test_set, setup, out_dir, ctx.device)
        final = result["final"]
        common = {
            **data.provenance(), "recipe": c.recipe, "recipe_source": recipe["source"],
            "schedule": schedule.decay, "batch_size": schedule.batch_size, "lr": schedule.lr,
            "base_lr": schedule.base_lr, "weight_decay": schedule.weight_decay, "iterations": schedule.iterations,
            "epochs": round(schedule.epochs, 3), "milestones": "/".join(str(m) for m in schedule.milestones),
            "image_size": size, "world_size": world_size,
            "trained_on": f"{data.train.description} + {data.val.description}",
            "n_trained": len(paths), "split": "test", "metric_step": 100.0 / len(test_paths),
            "head": "pool-bn(no affine)-linear" if recipe["batchnorm"] else "pool-linear",
            "optimizer": "sgd-nesterov-0.9" if recipe["nesterov"] else "sgd-momentum-0.9", "evaluation": "final",
            "log_csv": str(out_dir / "log.csv"), "checkpoint": str(out_dir / "checkpoint.pt"),
        }
        return [{**common, "layer": layer, "metric": f"top{k}", "value": float(final[f"top{k}/{layer}"]),
                 "iteration": int(final["iteration"]), "feature_dim": int(result["feature_dims"][layer])}
                for layer in layers for k in TOPK]
