"""`voc07_svm`: per-layer linear SVMs on VOC2007 (Goyal et al. 2019, section "image classification").

Features of trainval and test are extracted once for all layers (one forward pass, cached);
each layer is one unit of work: 20 one-vs-rest SVMs, costs chosen per class by 3-fold CV on
trainval, refit, all-point AP on test with difficult-only images removed per class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmark.datasets.voc import VOC_CLASSES, load_voc
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.options import Bool, Name, declare
from benchmark.svm.protocol import resolve_costs

from .common import IMAGE_SIZE, LAYERS, SVM_OPTIONS, SVMTask, resolve_layers, split_features, split_needs

if TYPE_CHECKING:
    from benchmark.models import Architecture

NAME = "voc07_svm"  # the name the task is registered and configured under


class VOC07SVM(SVMTask, Task):
    name = NAME
    dataset = "voc07"
    options = declare({
        "layers": LAYERS,
        "image_size": IMAGE_SIZE,
        **SVM_OPTIONS,  # costs, folds, n_jobs, solver, svm_device
        # liblinear only: exact speed-up for n < d (see benchmark.svm.liblinear.span_coordinates)
        "span_coordinates": Bool(True),
        "train_split": Name("trainval"),
        "test_split": Name("test"),
    })

    def layers(self, arch: Architecture) -> list[str]:
        return resolve_layers(self.name, self.config.layers, arch)

    def span_coordinates(self) -> bool:
        return self.config.span_coordinates

    def units(self, arch: Architecture) -> list[str]:
        return self.layers(arch)

    def check_data(self, ctx: RunContext) -> None:
        for split in (self.config.train_split, self.config.test_split):
            load_voc(ctx.data_root, split)

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        for split in (self.config.train_split, self.config.test_split):
            self.features(ctx, model, split)

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        splits = {split: load_voc(ctx.data_root, split) for split in (self.config.train_split, self.config.test_split)}
        return split_needs(arch, "voc07", splits, self.layers(arch), self.config.image_size)

    def features(self, ctx: RunContext, model: LoadedModel, split: str):
        data = load_voc(ctx.data_root, split)
        feats = split_features(ctx, model, data, "voc07", split, self.layers(model.arch), self.config.image_size)
        return feats, data.labels

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer = unit
        cost_list, costs = resolve_costs(self.config.costs, self.name)
        train_feats, train_labels = self.features(ctx, model, self.config.train_split)
        test_feats, test_labels = self.features(ctx, model, self.config.test_split)
        solver = self.solver(ctx)
        results = solver.voc07(train_feats[layer], train_labels, test_feats[layer], test_labels, costs=costs,
                               folds=self.config.folds)
        common = {"dataset": "voc07", "layer": layer, "cost_list": cost_list, "solver": solver.name,
                  "image_size": self.config.image_size or model.arch.reference_input_size,
                  "train_split": self.config.train_split,
                  "cost_selection": f"{self.config.folds}-fold-cv-ap",
                  "feature_dim": int(train_feats[layer].shape[1]),
                  "n_train": len(train_labels), "n_test": len(test_labels)}
        rows = []
        for r in results:
            rows.append({**common, "metric": "AP", "class": VOC_CLASSES[r.cls], "value": 100 * r.test_ap,
                         "cost": r.best_cost, "cv_ap": 100 * r.best_cv_ap, "fits": r.log.fits,
                         "not_converged": r.log.not_converged, "max_iter_seen": r.log.max_iter_seen,
                         "note": r.note})
        aps = np.array([r.test_ap for r in results], dtype=float)
        rows.append({**common, "metric": "mAP", "class": "", "value": 100 * float(np.nanmean(aps)),
                     "fits": sum(r.log.fits for r in results),
                     "not_converged": sum(r.log.not_converged for r in results),
                     "max_iter_seen": max(r.log.max_iter_seen for r in results),
                     "note": "; ".join(f"{VOC_CLASSES[r.cls]}: {r.note}" for r in results if r.note)})
        return rows
