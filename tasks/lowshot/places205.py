"""`lowshot_places205`: per-layer low-shot one-vs-rest SVMs on Places205 (k images per class).

Each (k, sample) draws k training images per class (indices saved under
``RUN_DIR/lowshot_samples/<task>/seed<seed>/train_sample{s}_k{k}.npy``), trains one SVM per class
and cost on those 205k images, and scores the full val set: mAP over the classes (the reference's
metric) and top-1 (argmax over the class SVMs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.datasets.places import load_places205
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Str, declare
from benchmark.row_schema import STEP_COLUMN
from benchmark.svm.protocol import FitLog, l2_normalize, resolve_costs

from ..common import IMAGE_SIZE, LAYERS, SVM_OPTIONS, SVMTask, resolve_layers, split_features, split_needs
from . import protocol as lowshot
from .protocol import K_SHOTS, SAMPLES
from .report import LowShotReport

if TYPE_CHECKING:
    from benchmark.models import Architecture
    from benchmark.svm.solvers import Solver

NAME = "lowshot_places205"  # the name the task is registered and configured under


class LowShotPlaces205(LowShotReport, SVMTask, Task):
    name = NAME
    dataset = "places205"
    options = declare({
        "layers": LAYERS,
        "image_size": IMAGE_SIZE,
        "data_dir": Str("Places205"),  # relative to the data root, or absolute
        "k_values": K_SHOTS,
        "num_samples": SAMPLES,
        # solver torch: all classes of a sample share its rows, so every class x cost x fold is batched
        **SVM_OPTIONS,  # costs, folds, n_jobs, solver, svm_device
    })

    def root(self, ctx: RunContext) -> Path:
        return ctx.data_root / self.config.data_dir

    def units(self, arch: Architecture) -> list[str]:
        return resolve_layers(self.name, self.config.layers, arch)

    def check_data(self, ctx: RunContext) -> None:
        load_places205(self.root(ctx), "train")
        load_places205(self.root(ctx), "val")
        if not any(k >= self.config.folds for k in self.config.k_values):
            raise ConfigError(f"{self.name}: the validation cost selection needs at least one k >= "
                              f"folds ({self.config.folds}); k_values are {self.config.k_values}")

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        layers = resolve_layers(self.name, self.config.layers, model.arch)
        for split in ("train", "val"):
            data = load_places205(self.root(ctx), split)
            split_features(ctx, model, data, "places205", split, layers, self.config.image_size)

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        splits = {split: load_places205(self.root(ctx), split) for split in ("train", "val")}
        return split_needs(arch, "places205", splits, resolve_layers(self.name, self.config.layers, arch),
                           self.config.image_size)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer = unit
        cost_list, costs = resolve_costs(self.config.costs, self.name)
        costs = list(costs)
        folds = self.config.folds
        layers = resolve_layers(self.name, self.config.layers, model.arch)
        train, val = load_places205(self.root(ctx), "train"), load_places205(self.root(ctx), "val")
        feats = {split.split: split_features(ctx, model, split, "places205", split.split, layers,
                                             self.config.image_size)[layer] for split in (train, val)}
        X_train, X_val = l2_normalize(feats["train"]), l2_normalize(feats["val"])

        smallest = int(train.class_counts().min())
        ks = [k for k in self.config.k_values if k <= smallest]
        skipped = [k for k in self.config.k_values if k > smallest]
        fallback_k = min((k for k in ks if k >= folds), default=None)
        if any(k < folds for k in ks) and fallback_k is None:
            raise ConfigError(f"{self.name}: no k >= {folds} fits the smallest class ({smallest} images), "
                              f"so the validation selection has no cost for k < {folds}")
        solver = self.solver(ctx)
        directory = lowshot.sample_directory(ctx.run_dir, self.name, train, ctx.seed)
        per = {}  # (k, sample) -> per-run results; the val scores are dropped once used (GBs at full size)
        log = FitLog()
        # the k whose CV choices the smaller k borrow comes first, so no run's scores wait for it
        order = ([fallback_k] if fallback_k is not None else []) + [k for k in ks if k != fallback_k]
        for k in order:
            for s in range(1, self.config.num_samples + 1):
                path = directory / f"train_sample{s}_k{k}.npy"
                idx = lowshot.load_or_draw(
                    path, lambda k=k, s=s: lowshot.sample_places(train.labels, train.num_classes, k,
                                                                 lowshot.sample_rng(ctx.seed, k, s)))
                lowshot.check_places_sample(idx, train.labels, train.num_classes, k, path)
                run = self.sweep(X_train[idx], train.labels[idx], X_val, val.labels, train.num_classes,
                                 costs, folds, log, solver)
                run["chosen"] = run["cv"] if k >= folds else per[fallback_k, s]["cv"]
                run["val_map"] = run["ap"][np.arange(len(run["chosen"])), run["chosen"]].mean()
                run["val_top1"] = self.top1_at(run.pop("scores"), run["chosen"], val.labels)
                per[k, s] = run

        common = {"dataset": "places205", "layer": layer, "cost_list": cost_list, "solver": solver.name,
                  "n_train": len(train.labels), "n_test": len(val.labels), "fits": log.fits,
                  "not_converged": log.not_converged}
        rows = []
        for k in ks:
            runs = [per[k, s] for s in range(1, self.config.num_samples + 1)]
            map_per_cost = np.stack([r["ap"].mean(axis=0) for r in runs]) * 100  # (samples, costs)
            best = lowshot.reference_selection(map_per_cost)
            top1_ref = np.array([r["top1"][best] for r in runs]) * 100
            val_map = np.array([r["val_map"] for r in runs]) * 100
            val_top1 = np.array([r["val_top1"] for r in runs]) * 100
            source = f"{folds}-fold-cv-on-sample" if k >= folds else f"{folds}-fold-cv-on-k{fallback_k}-sample"
            for metric, reference, validation in (("mAP", map_per_cost[:, best], val_map),
                                                  ("top1", top1_ref, val_top1)):
                # top-1 counts val images (an AP has no such step)
                counted = {**common, STEP_COLUMN: 100.0 / len(val.labels)} if metric == "top1" else common
                rows += lowshot.lowshot_rows(counted, k, reference, lowshot.TEST_SELECTED, costs[best], metric)
                rows += lowshot.lowshot_rows(counted, k, validation, "validation", f"per-class:{source}", metric)
        for k in skipped:
            rows.append({**common, "metric": "skipped", "k": k, "value": float("nan"),
                         "note": f"k={k} skipped: the smallest Places205 class has {smallest} training images"})
        return rows

    def sweep(self, X, y, X_val, val_labels, num_classes, costs, folds, log: FitLog, solver: Solver) -> dict:
        """All classes x costs on one sample; the scores are kept for top-1 at any cost choice."""
        scores, aps, cv = solver.lowshot_places(X, y, X_val, val_labels, num_classes, costs, folds, log)
        return {
            "scores": scores,  # (classes, n_val, costs)
            "ap": aps,  # (classes, costs)
            "cv": cv,
            "top1": (scores.argmax(axis=0) == val_labels[:, None]).mean(axis=0),  # per cost
        }

    @staticmethod
    def top1_at(scores: np.ndarray, cost_index: np.ndarray, labels: np.ndarray) -> float:
        """Top-1 when class c uses its own cost: argmax over classes of scores[c, :, cost_index[c]]."""
        chosen = scores[np.arange(len(cost_index)), :, cost_index]  # (classes, n_val)
        return float((chosen.argmax(axis=0) == labels).mean())
