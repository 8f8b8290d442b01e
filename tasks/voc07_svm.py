"""`voc07_svm`: per-layer linear SVMs on VOC2007 (Goyal et al. 2019, section "image classification").

Features of trainval and test are extracted once for all layers (one forward pass, cached);
each layer is one unit of work: 20 one-vs-rest SVMs, costs chosen per class by 3-fold CV on
trainval, refit, all-point AP on test with difficult-only images removed per class.
"""

from __future__ import annotations

import numpy as np

from benchmark.datasets.images import svm_transform
from benchmark.datasets.voc import VOC_CLASSES, load_voc
from benchmark.engine import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.features import cached_features
from benchmark.models import Architecture
from benchmark.registry import TASKS
from benchmark.svm import COST_LISTS, voc07_svm


def resolve_costs(costs) -> tuple[str, tuple[float, ...]]:
    if isinstance(costs, str):
        if costs not in COST_LISTS:
            raise ConfigError(f"voc07_svm: unknown cost list '{costs}'; use one of {sorted(COST_LISTS)} "
                              f"or a list of numbers")
        return costs, COST_LISTS[costs]
    values = tuple(float(c) for c in costs)
    if not values or min(values) <= 0:
        raise ConfigError(f"voc07_svm: costs must be positive numbers, got {costs}")
    return "custom", values


@TASKS.register("voc07_svm")
class VOC07SVM(Task):
    dataset = "voc07"
    options = {
        "layers": None,  # default: the architecture's protocol layers
        "image_size": None,  # default: the architecture's reference input (224 / 227)
        "costs": "reference",
        "folds": 3,
        "n_jobs": 2,
        # exact speed-up for n < d (same answers as plain liblinear, see benchmark.svm.span_coordinates)
        "span_coordinates": True,
        "train_split": "trainval",
        "test_split": "test",
    }

    def layers(self, arch: Architecture) -> list[str]:
        layers = self.config["layers"] or list(arch.default_layers)
        unknown = [layer for layer in layers if layer not in arch.layers]
        if unknown:
            raise ConfigError(f"voc07_svm: {arch.name} has no layer(s) {unknown}; it has {list(arch.layers)}")
        return list(layers)

    def units(self, arch: Architecture) -> list[str]:
        return self.layers(arch)

    def check_data(self, ctx: RunContext) -> None:
        for split in (self.config["train_split"], self.config["test_split"]):
            load_voc(ctx.data_root, split)

    def features(self, ctx: RunContext, model: LoadedModel, split: str):
        data = load_voc(ctx.data_root, split)
        size = self.config["image_size"] or model.arch.reference_input_size
        transform, description = svm_transform(size)
        feats = cached_features(
            model.backbone, model.weights, data.image_paths, self.layers(model.arch), transform,
            description, size, "voc07", split, data.fingerprint(), ctx.cache,
            device=ctx.device, batch_size=ctx.batch_size, num_workers=ctx.num_workers,
            stats=ctx.extraction,
        )
        return feats, data.labels

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer = unit
        cost_list, costs = resolve_costs(self.config["costs"])
        train_feats, train_labels = self.features(ctx, model, self.config["train_split"])
        test_feats, test_labels = self.features(ctx, model, self.config["test_split"])
        results = voc07_svm(train_feats[layer], train_labels, test_feats[layer], test_labels,
                            costs=costs, folds=self.config["folds"], n_jobs=self.config["n_jobs"],
                            seed=ctx.seed, span_trick=self.config["span_coordinates"])
        solver = "liblinear" + ("+span" if self.config["span_coordinates"] else "")
        common = {"dataset": "voc07", "layer": layer, "cost_list": cost_list, "solver": solver,
                  "cost_selection": f"{self.config['folds']}-fold-cv-ap",
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
