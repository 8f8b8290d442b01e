"""`lowshot_voc07`: per-layer low-shot SVMs on VOC2007 (k positives + 19k negatives per class).

Samples come from files: drawn once from the suite seed and saved under
``RUN_DIR/lowshot_samples/<task>/seed<seed>/`` in the reference's format, or read from the
reference's own files (``sample_dir``). Every cost is trained on every sample and tested on the
full test set; rows are emitted for both cost selections (see tasks.lowshot.protocol).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from benchmark.datasets.voc import load_voc
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.options import Name, Str, declare
from benchmark.paths import atomic_write, inside
from benchmark.results import ResultStore
from benchmark.svm.protocol import l2_normalize, resolve_costs, to_binary

from ..common import IMAGE_SIZE, LAYERS, SVM_OPTIONS, SVMTask, resolve_layers, split_features, split_needs
from . import protocol as lowshot
from .protocol import K_SHOTS, SAMPLES
from .report import LowShotReport

if TYPE_CHECKING:
    from benchmark.models import Architecture
    from benchmark.svm.solvers import Solver

NAME = "lowshot_voc07"  # the name the task is registered and configured under


class LowShotVOC07(LowShotReport, SVMTask, Task):
    name = NAME
    dataset = "voc07"
    options = declare({
        "layers": LAYERS,  # default: all five protocol layers; VISSL evaluates [res4, res5]
        "image_size": IMAGE_SIZE,
        "k_values": K_SHOTS,
        "num_samples": SAMPLES,
        **SVM_OPTIONS,  # costs, folds, n_jobs, solver, svm_device
        "sample_dir": Str(None),  # the reference's train_targets_sample{s}_k{k}.npy files, for exact comparison
        "train_split": Name("trainval"),
        "test_split": Name("test"),
    })

    def units(self, arch: Architecture) -> list[str]:
        return resolve_layers(self.name, self.config.layers, arch)

    def check_data(self, ctx: RunContext) -> None:
        for split in (self.config.train_split, self.config.test_split):
            load_voc(ctx.data_root, split)

    def samples(self, ctx: RunContext, train, k: int) -> list[np.ndarray]:
        labels = train.labels
        n, num_classes = labels.shape
        numbers = range(1, self.config.num_samples + 1)
        if self.config.sample_dir:
            directory = Path(self.config.sample_dir)
            return [lowshot.check_voc_sample(lowshot.load_reference_voc_sample(directory, s, k, n, num_classes),
                                             labels, lowshot.reference_sample_file(directory, s, k))
                    for s in numbers]
        directory = lowshot.sample_directory(ctx.run_dir, self.name, train, ctx.seed)
        out = []
        for s in numbers:
            path = lowshot.reference_sample_file(directory, s, k)
            matrix = lowshot.load_or_draw(
                path, lambda s=s: lowshot.sample_voc07(labels, k, lowshot.sample_rng(ctx.seed, k, s)))
            out.append(lowshot.check_voc_sample(matrix, labels, path))
        return out

    def full_data_costs(self, ctx, model, layer, Z_train, labels, costs, solver: Solver):
        """Per-class cost of the full-data VOC07 sweep of this layer: from the voc07_svm results of
        this run when they exist for the same weights and costs, else computed here (CV only)."""
        df = ResultStore(ctx.run_dir).load(damaged="skip")  # a damaged unit's costs are computed here
        needed = {"weights_sha256", "cost_selection", "cost", "dataset"}
        if not df.empty and needed <= set(df.columns):
            rows = df[(df.metric == "AP") & (df.layer == layer) & (df.dataset == "voc07")
                      & (df.cost_selection == f"{self.config.folds}-fold-cv-ap")
                      & (df.weights_sha256 == model.weights[:16])
                      & (df.get("image_size", pd.Series("", index=df.index)).astype(str) == str(self.image_size(model)))
                      & (df.get("train_split", pd.Series("", index=df.index)).astype(str) == self.config.train_split)]
            found = rows.cost.astype(float)
            if len(rows) == labels.shape[1] and found.notna().all() and set(found) <= set(costs):
                return dict(enumerate(found.tolist()))
        Y = np.stack([to_binary(labels[:, c]) for c in range(labels.shape[1])], axis=1)
        return solver.cv_costs(Z_train, Y, costs, self.config.folds)

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        layers = resolve_layers(self.name, self.config.layers, model.arch)
        for split in (self.config.train_split, self.config.test_split):
            split_features(ctx, model, load_voc(ctx.data_root, split), "voc07", split, layers,
                           self.config.image_size)

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        splits = {split: load_voc(ctx.data_root, split) for split in (self.config.train_split, self.config.test_split)}
        return split_needs(arch, "voc07", splits, resolve_layers(self.name, self.config.layers, arch),
                           self.config.image_size)

    def image_size(self, model: LoadedModel) -> int:
        return self.config.image_size or model.arch.reference_input_size

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer = unit
        cost_list, costs = resolve_costs(self.config.costs, self.name)
        costs = list(costs)
        layers = resolve_layers(self.name, self.config.layers, model.arch)
        train = load_voc(ctx.data_root, self.config.train_split)
        test = load_voc(ctx.data_root, self.config.test_split)
        image_size = self.config.image_size  # None: the architecture's reference size
        X_train = l2_normalize(split_features(ctx, model, train, "voc07", train.split, layers, image_size)[layer])
        X_test = l2_normalize(split_features(ctx, model, test, "voc07", test.split, layers, image_size)[layer])
        solver = self.solver(ctx)
        X_train, X_test = solver.shared_coordinates(X_train, X_test)  # every sample is a subset of trainval

        max_k = lowshot.voc07_max_k(train.labels)
        ks = [k for k in self.config.k_values if k <= max_k]
        skipped = [k for k in self.config.k_values if k > max_k]
        samples = {k: self.samples(ctx, train, k) for k in ks}
        flat = [(k, s) for k in ks for s in range(len(samples[k]))]
        flat_samples = [samples[k][s] for k, s in flat]
        fallback = {}
        if any(k < self.config.folds for k in ks):
            fallback = self.full_data_costs(ctx, model, layer, X_train, train.labels, costs, solver)

        # (k*sample, costs, classes), (k*sample, classes), (k*sample) x classes, one FitLog per class
        aps, chosen, sources, logs = solver.lowshot_voc07(X_train, X_test, test.labels, flat_samples, costs,
                                                          self.config.folds, fallback.get)
        not_converged = sum(log.not_converged for log in logs)
        fits = sum(log.fits for log in logs)
        self.save_arrays(ctx, model, layer, ks, costs, aps)

        common = {"dataset": "voc07", "layer": layer, "cost_list": cost_list, "solver": solver.name,
                  "image_size": self.image_size(model), "train_split": train.split,
                  "n_train": len(train.labels), "n_test": len(test.labels), "fits": fits,
                  "not_converged": not_converged}
        rows = []
        for k in ks:
            idx = [i for i, (kk, _) in enumerate(flat) if kk == k]
            map_per_cost = np.nanmean(aps[idx], axis=2) * 100  # (samples, costs)
            best = lowshot.reference_selection(map_per_cost)
            reference = map_per_cost[:, best]
            per_class = np.take_along_axis(aps[idx], np.maximum(chosen[idx], 0)[:, None, :], axis=1)[:, 0, :]
            per_class[chosen[idx] < 0] = np.nan  # left out of the validation mean, and said so in the row
            validation = np.nanmean(per_class, axis=1) * 100
            rows += lowshot.lowshot_rows(common, k, reference, lowshot.TEST_SELECTED, costs[best], "mAP")
            used = sorted({src for i in idx for src in sources[i]})
            rows += lowshot.lowshot_rows(common, k, validation, "validation", "per-class:" + "+".join(used), "mAP")
        for k in skipped:
            rows.append({**common, "metric": "skipped", "k": k, "value": float("nan"),
                         "note": f"k={k} skipped: some class has fewer than {k} positives or {19 * k} "
                                 f"negatives in {train.split}"})
        return rows

    def save_arrays(self, ctx, model, layer, ks, costs, aps) -> None:
        """Test AP per (k x sample, cost, class), for analyses beyond the report."""
        buffer = io.BytesIO()
        np.savez(buffer, k=np.repeat(ks, self.config.num_samples), costs=np.array(costs), ap=aps)
        path = inside(ctx.run_dir, "lowshot", model.name, self.instance_name or self.name, f"{layer}_ap.npz")
        atomic_write(path, buffer.getvalue())
