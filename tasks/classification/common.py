"""What the classification tasks share: the dataset options, cached features of its splits,
few-shot draws and their aggregation."""

from __future__ import annotations

import numpy as np

from benchmark.datasets.classification import LAYOUTS, ClassificationData, SplitPart, load_classification
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.models import Architecture
from benchmark.options import Bool, Choice, Device, Float, Int, ListOf, Name
from benchmark.row_schema import OUTCOMES, STEP_COLUMN
from benchmark.significance import Outcomes

from ..common import IMAGE_SIZE, LAYERS, aggregate, resolve_layers, split_features, split_needs

# the dataset options of every classification task (see benchmark.datasets.classification)
DATA_OPTIONS = {
    "dataset": Name("synth-classification"),  # the folder under the data root
    "layout": Choice(*LAYOUTS),
    "train_split": Name("train"),
    "val_split": Name("val"),  # absent on disk: carved out of train_split
    "test_split": Name("test"),
    "val_fraction": Float(0.1, min=0, max=0.5, min_open=True),
    "val_seed": Int(0, min=0),
    # images that are symlinks pointing outside the dataset folder are read only when true (recorded
    # in the rows); added later: hashes unchanged at its default
    "follow_symlinks": Bool(False, omit_at_default=True),
    "layers": LAYERS,
    "image_size": IMAGE_SIZE,
}
# DINO's k-NN protocol: the k values and the softmax temperature of the votes (knn_classifier.py)
DINO_K = (10, 20, 100, 200)
DINO_T = 0.07
FEW_SHOT = ListOf(Int(min=1), [], unique=True)  # images per class; [] = full data only
DRAWS = Int(5, min=1)
COMPUTE_DEVICE = Device("auto")  # where the kNN search / logistic regression runs (auto: cuda if available)


class ClassificationTask:
    """Mixin: the dataset of the task's options, its cached features, and its rows' provenance."""

    dataset = "classification"
    multi_label = False  # whether the task scores multi-label data (VOC2007): one binary classifier per class

    def data(self, ctx: RunContext) -> ClassificationData:
        c = self.config
        return load_classification(ctx.data_root, c.dataset, layout=c.layout, train_split=c.train_split,
                                   val_split=c.val_split, test_split=c.test_split,
                                   val_fraction=c.val_fraction, val_seed=c.val_seed,
                                   follow_symlinks=c.follow_symlinks, multi_label=self.multi_label)

    def layers(self, arch: Architecture) -> list[str]:
        return resolve_layers(self.name, self.config.layers, arch)

    def check_data(self, ctx: RunContext) -> None:
        self.data(ctx)

    def feature_key(self) -> str:
        return f"classification/{self.config.dataset}"

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        return split_needs(arch, self.feature_key(), self.data(ctx).disk_splits(), self.layers(arch),
                           self.config.image_size)

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        self.split_features(ctx, model, self.data(ctx))

    def split_features(self, ctx: RunContext, model: LoadedModel, data: ClassificationData) -> dict:
        """{split name: {layer: memory-mapped (n, d) float32}} for every on-disk split the parts read."""
        return {name: split_features(ctx, model, split, self.feature_key(), name, self.layers(model.arch),
                                     self.config.image_size)
                for name, split in data.disk_splits().items()}

    def common_row(self, model: LoadedModel, data: ClassificationData, layer: str) -> dict:
        return {**data.provenance(), "layer": layer,
                "image_size": self.config.image_size or model.arch.reference_input_size}


# the per-dataset metric of the transfer protocol (benchmark.datasets.transfer.METRICS) as a row metric
MEAN_PER_CLASS = "mean_per_class"


def headline_metric(data: ClassificationData) -> str:
    """The row metric the protocol compares on ``data``: ``mean_per_class`` where the transfer
    protocol reports mean per-class accuracy (Aircraft, Pets, Caltech-101, Flowers), else ``top1``."""
    return MEAN_PER_CLASS if data.protocol.get("protocol_metric") == "mean_per_class_accuracy" else "top1"


def transfer_column(data: ClassificationData, stem: str, metric: str) -> str:
    """The across-datasets column (``benchmark.report_datasets``) of a row of ``metric``, or "". On a
    transfer dataset it is the row of the protocol's metric (``headline_metric``), named "STEM
    protocol metric" so that the twelve datasets make one table (SimCLR's Table 8); elsewhere the
    top-1 row, named "STEM top1" as before."""
    if metric != headline_metric(data):
        return ""
    return f"{stem} protocol metric" if "protocol_metric" in data.protocol else f"{stem} top1"


def mean_per_class_row(base: dict, correct: np.ndarray, labels: np.ndarray, transfer_column: str = "") -> dict:
    """The ``mean_per_class`` row (percent: the mean over the test classes of each class's top-1, as
    scikit-learn's ``balanced_accuracy_score``) with its per-image outcomes for the significance marks.
    No ``metric_step``: one image moves it by 100 / (classes x that class's images), not one step."""
    outcomes = Outcomes(MEAN_PER_CLASS, np.asarray(correct, dtype=np.float64).reshape(-1),
                        classes=np.asarray(labels).reshape(-1))
    row = {k: v for k, v in base.items() if k != STEP_COLUMN}
    return {**row, "metric": MEAN_PER_CLASS, "value": float(outcomes.value()), OUTCOMES: outcomes,
            "transfer_column": transfer_column}


def part_rows(features: dict, part: SplitPart, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(the split's memory-mapped features of ``layer``, the part's row indices)."""
    return features[part.split.name][layer], part.indices


def load_part(features: dict, part: SplitPart, layer: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The part's feature rows (``rows``: positions within the part) as an in-memory array."""
    array, indices = part_rows(features, part, layer)
    indices = indices if rows is None else indices[rows]
    return np.asarray(array[indices], dtype=np.float32)


_DRAW_TAG = 0xF3A5


def few_shot_draw(labels: np.ndarray, shots: int, seed: int, draw: int) -> np.ndarray | None:
    """Positions (within the training part: disjoint from validation and test) of ``shots`` images
    per class, a function of (seed, shots, draw) only; None when a class has fewer images."""
    counts = np.bincount(labels)
    if (counts[counts > 0] < shots).any() or (counts == 0).any():
        return None
    rng = np.random.default_rng([seed, _DRAW_TAG, shots, draw])
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                                   for c in range(len(counts))]))


def draw_rows(base: dict, shots: int, metric: str, per_draw: list[float]) -> list[dict]:
    """Per-draw rows plus mean/std/min/max/ci95 over draws of one (shots, metric)."""
    rows = [{**base, "k": shots, "metric": metric, "sample": d + 1, "value": float(v)} for d, v in enumerate(per_draw)]
    agg = aggregate(per_draw)
    rows += [{**base, "k": shots, "metric": f"{metric}_{name}", "sample": "", "value": getattr(agg, name)}
             for name in ("mean", "std", "min", "max", "ci95")]
    return rows
