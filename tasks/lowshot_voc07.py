"""`lowshot_voc07`: per-layer low-shot SVMs on VOC2007 (k positives + 19k negatives per class).

Samples come from files: drawn once from the suite seed and saved under
``RUN_DIR/lowshot_samples/<task>/seed<seed>/`` in the reference's format, or read from the
reference's own files (``sample_dir``). Every cost is trained on every sample and tested on the
full test set; rows are emitted for both cost selections (see benchmark.lowshot).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from benchmark import lowshot
from benchmark.datasets.voc import load_voc
from benchmark.engine import LoadedModel, RunContext, Task
from benchmark.metrics import voc_ap
from benchmark.models import Architecture
from benchmark.options import Name, Str, declare
from benchmark.paths import inside
from benchmark.results import ResultStore, atomic_write_bytes
from benchmark.svm import FitLog, l2_normalize, resolve_costs, span_coordinates, to_binary
from benchmark.svm_paths import cv_costs_torch, lowshot_sweep_torch

from .common import (COSTS, FOLDS, IMAGE_SIZE, K_SHOTS, LAYERS, N_JOBS, SAMPLES, SOLVER, SVM_DEVICE, BatchedSVMTask,
                     resolve_layers, split_features, split_needs)


def _class_sweep(c, Z_train, Z_test, train_labels, test_labels, samples, costs, folds, fallback_cost, seed):
    """One class over all (k, sample): test AP per cost, and the validation-selected cost index."""
    keep = test_labels != -1
    y_test = test_labels[keep] == 1
    aps = np.full((len(samples), len(costs)), np.nan)
    chosen = np.zeros(len(samples), dtype=int)
    sources = []
    log = FitLog()
    for i, sample in enumerate(samples):
        rows = np.flatnonzero(sample != -1)
        y = np.where(sample[rows] == 1, 1, -1)
        # a second exact change of basis: the sample's own span is smaller still (20k rows)
        Z_sample, Z_eval = span_coordinates(Z_train[rows], Z_test[keep])
        scores = lowshot.decision_values_all_costs(Z_sample, y, Z_eval, costs, seed, log)
        aps[i] = [voc_ap(y_test, scores[:, j]) for j in range(len(costs))]
        cost = lowshot.cv_cost(Z_sample, y, costs, folds, seed, log)
        if cost is None:
            cost, source = fallback_cost(c), "full-data-cv"
        else:
            source = f"{folds}-fold-cv-on-sample"
        # -1: fewer positives than folds even in the full training set, so no validation choice
        chosen[i] = -1 if cost is None else costs.index(cost)
        sources.append(source if cost is not None else "none(too-few-positives)")
    return aps, chosen, sources, log


def _sweep_torch(X_train, X_test, test_labels, samples, costs, folds, fallback_cost, device):
    """Every (k, sample) with all classes batched: the arrays of the liblinear path."""
    num_classes = test_labels.shape[1]
    aps = np.full((len(samples), len(costs), num_classes), np.nan)
    chosen = np.zeros((len(samples), num_classes), dtype=int)
    sources, logs = [], [FitLog() for _ in range(num_classes)]
    keep = test_labels != -1  # difficult-only rows are removed per class
    for i, sample in enumerate(samples):
        Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
        sweep = lowshot_sweep_torch(X_train, Y, X_test, costs, folds, device=device)
        row_sources = []
        for c in range(num_classes):
            y_test = test_labels[keep[:, c], c] == 1
            aps[i, :, c] = [voc_ap(y_test, sweep.scores[keep[:, c], c, j]) for j in range(len(costs))]
            if not np.isnan(sweep.cv_ap[c]).all():
                cost, source = costs[int(np.argmax(sweep.cv_ap[c]))], f"{folds}-fold-cv-on-sample"
            else:
                cost, source = fallback_cost(c), "full-data-cv"
            chosen[i, c] = -1 if cost is None else costs.index(cost)
            row_sources.append(source if cost is not None else "none(too-few-positives)")
            logs[c].merge(sweep.logs[c])
        sources.append(row_sources)
    return aps, chosen, sources, logs


class LowShotVOC07(BatchedSVMTask, Task):
    name = "lowshot_voc07"
    dataset = "voc07"
    options = declare({
        "layers": LAYERS,  # default: all five protocol layers; VISSL evaluates [res4, res5]
        "image_size": IMAGE_SIZE,
        "k_values": K_SHOTS,
        "num_samples": SAMPLES,
        "costs": COSTS,
        "folds": FOLDS,
        "n_jobs": N_JOBS,
        "solver": SOLVER,
        "svm_device": SVM_DEVICE,
        "sample_dir": Str(None),  # the reference's train_targets_sample{s}_k{k}.npy files, for exact comparison
        "train_split": Name("trainval"),
        "test_split": Name("test"),
    })

    def units(self, arch: Architecture) -> list[str]:
        return resolve_layers("lowshot_voc07", self.config["layers"], arch)

    def check_data(self, ctx: RunContext) -> None:
        for split in (self.config["train_split"], self.config["test_split"]):
            load_voc(ctx.data_root, split)

    def samples(self, ctx: RunContext, train, k: int) -> list[np.ndarray]:
        labels = train.labels
        n, num_classes = labels.shape
        numbers = range(1, self.config["num_samples"] + 1)
        if self.config["sample_dir"]:
            directory = Path(self.config["sample_dir"])
            return [lowshot.check_voc_sample(lowshot.load_reference_voc_sample(directory, s, k, n, num_classes),
                                             labels, lowshot.reference_sample_file(directory, s, k))
                    for s in numbers]
        directory = lowshot.sample_directory(ctx.run_dir, "lowshot_voc07", train, ctx.seed)
        out = []
        for s in numbers:
            path = lowshot.reference_sample_file(directory, s, k)
            matrix = lowshot.load_or_draw(
                path, lambda s=s: lowshot.sample_voc07(labels, k, lowshot.sample_rng(ctx.seed, k, s)))
            out.append(lowshot.check_voc_sample(matrix, labels, path))
        return out

    def full_data_costs(self, ctx, model, layer, Z_train, labels, costs, seed, device=None):
        """Per-class cost of the full-data VOC07 sweep of this layer: from the voc07_svm results of
        this run when they exist for the same weights and costs, else computed here (CV only)."""
        df = ResultStore(ctx.run_dir).load(damaged="skip")  # a damaged unit's costs are computed here
        needed = {"weights_sha256", "cost_selection", "cost", "dataset"}
        if not df.empty and needed <= set(df.columns):
            rows = df[(df.metric == "AP") & (df.layer == layer) & (df.dataset == "voc07")
                      & (df.cost_selection == f"{self.config['folds']}-fold-cv-ap")
                      & (df.weights_sha256 == model.weights[:16])
                      & (df.get("image_size", pd.Series("", index=df.index)).astype(str) == str(self.image_size(model)))
                      & (df.get("train_split", pd.Series("", index=df.index)).astype(str) == self.config["train_split"])]
            found = rows.cost.astype(float)
            if len(rows) == labels.shape[1] and found.notna().all() and set(found) <= set(costs):
                return dict(enumerate(found.tolist()))
        Y = np.stack([to_binary(labels[:, c]) for c in range(labels.shape[1])], axis=1)
        if device is not None:  # the batched engine
            return cv_costs_torch(Z_train, Y, costs, self.config["folds"], device)
        log = FitLog()
        return {c: lowshot.cv_cost(Z_train, Y[:, c], costs, self.config["folds"], seed, log)
                for c in range(labels.shape[1])}

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        layers = resolve_layers("lowshot_voc07", self.config["layers"], model.arch)
        for split in (self.config["train_split"], self.config["test_split"]):
            split_features(ctx, model, load_voc(ctx.data_root, split), "voc07", split, layers,
                           self.config["image_size"])

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        splits = {split: load_voc(ctx.data_root, split) for split in (self.config["train_split"], self.config["test_split"])}
        return split_needs(arch, "voc07", splits, resolve_layers("lowshot_voc07", self.config["layers"], arch),
                           self.config["image_size"])

    def image_size(self, model: LoadedModel) -> int:
        return self.config["image_size"] or model.arch.reference_input_size

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer = unit
        cost_list, costs = resolve_costs(self.config["costs"], "lowshot_voc07")
        costs = list(costs)
        layers = resolve_layers("lowshot_voc07", self.config["layers"], model.arch)
        train = load_voc(ctx.data_root, self.config["train_split"])
        test = load_voc(ctx.data_root, self.config["test_split"])
        X_train = l2_normalize(split_features(ctx, model, train, "voc07", train.split, layers, self.config["image_size"])[layer])
        X_test = l2_normalize(split_features(ctx, model, test, "voc07", test.split, layers, self.config["image_size"])[layer])
        device = self.engine_device("lowshot_voc07")
        if device is None:
            # every sample is a subset of trainval: one exact change of basis serves all of them
            X_train, X_test = span_coordinates(X_train, X_test) if len(X_train) < X_train.shape[1] else (X_train, X_test)

        max_k = lowshot.voc07_max_k(train.labels)
        ks = [k for k in self.config["k_values"] if k <= max_k]
        skipped = [k for k in self.config["k_values"] if k > max_k]
        samples = {k: self.samples(ctx, train, k) for k in ks}
        flat = [(k, s) for k in ks for s in range(len(samples[k]))]
        flat_samples = [samples[k][s] for k, s in flat]
        fallback = {}
        if any(k < self.config["folds"] for k in ks):
            fallback = self.full_data_costs(ctx, model, layer, X_train, train.labels, costs, ctx.seed, device)

        if device is None:
            results = Parallel(n_jobs=self.config["n_jobs"])(
                delayed(_class_sweep)(c, X_train, X_test, train.labels[:, c], test.labels[:, c],
                                      [m[:, c] for m in flat_samples], costs, self.config["folds"],
                                      fallback.get, ctx.seed)
                for c in range(train.labels.shape[1])
            )
            logs = [r[3] for r in results]
            aps = np.stack([r[0] for r in results], axis=-1)  # (k*sample, costs, classes)
            chosen = np.stack([r[1] for r in results], axis=-1)  # (k*sample, classes)
            sources = [[r[2][i] for r in results] for i in range(len(flat))]  # (k*sample) x classes
            solver_name = "liblinear+span"
        else:
            aps, chosen, sources, logs = _sweep_torch(X_train, X_test, test.labels, flat_samples, costs,
                                                      self.config["folds"], fallback.get, device)
            solver_name = self.engine_name(device)
        not_converged = sum(log.not_converged for log in logs)
        fits = sum(log.fits for log in logs)
        self.save_arrays(ctx, model, layer, ks, costs, aps)

        common = {"dataset": "voc07", "layer": layer, "cost_list": cost_list, "solver": solver_name,
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
        np.savez(buffer, k=np.repeat(ks, self.config["num_samples"]), costs=np.array(costs), ap=aps)
        path = inside(ctx.run_dir, "lowshot", model.name, self.instance_name or "lowshot_voc07", f"{layer}_ap.npz")
        atomic_write_bytes(path, buffer.getvalue())
