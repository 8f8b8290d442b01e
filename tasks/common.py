"""What the feature-based tasks share: layer choice, cached features of a dataset split, the
SVM tasks' options and solver, and the aggregation over seeded samples or draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from benchmark.diskspace import FeatureNeed
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.errors import ConfigError
from benchmark.options import Choice, Device, Float, Int, Layers, ListOf, OneOf
from benchmark.svm.protocol import COST_LISTS, SOLVERS

if TYPE_CHECKING:
    # the tasks' options and report hooks are read without torch: what extracts and solves is
    # imported where it runs
    from benchmark.models import Architecture
    from benchmark.svm.solvers import Solver

# Options the feature-based tasks share, declared once (see benchmark.options)
LAYERS = Layers(None)  # default: the architecture's protocol layers
IMAGE_SIZE = Int(None, min=16)  # default: the architecture's reference input (224 / 227)
COSTS = OneOf(Choice(*COST_LISTS), ListOf(Float(min=0, min_open=True), min_length=1), default="reference")
FOLDS = Int(3, min=2)
N_JOBS = OneOf(Int(min=1), Choice(-1), default=2)  # liblinear: classes in parallel (-1: every core)
# torch: the batched engine (benchmark.svm.batched on svm.newton), same problem and stopping test as
# liblinear; liblinear: the reference's loop, one class and cost at a time
SOLVER = Choice(*SOLVERS)
SVM_DEVICE = Device("auto")  # torch solver: cuda when available, else cpu
# torch solver: float32 CG products with float64 decision values and stopping test ("mixed", same
# stopping test as liblinear in float64), or float64 throughout
SVM_PRECISION = Choice("mixed", "float64", omit_at_default=True)  # added later: hashes unchanged at its default
# What every SVM task declares about its SVMs (cost list, cost selection, solver and where it runs),
# merged into each task's declaration at the same place (``**SVM_OPTIONS``): one declaration,
# so the tasks cannot drift apart in names, defaults or checks
SVM_OPTIONS = {"costs": COSTS, "folds": FOLDS, "n_jobs": N_JOBS, "solver": SOLVER, "svm_device": SVM_DEVICE,
               "svm_precision": SVM_PRECISION}


def resolve_layers(task: str, requested, arch: Architecture) -> list[str]:
    layers = list(requested or arch.default_layers)
    unknown = [layer for layer in layers if layer not in arch.layers]
    if unknown:
        raise ConfigError(f"{task}: {arch.name} has no layer(s) {unknown}; it has {list(arch.layers)}")
    return layers


def split_features(ctx: RunContext, model: LoadedModel, data, dataset: str, split: str, layers,
                   image_size: int | None) -> dict:
    """{layer: (n, d) float32} for a loaded split (anything with image_paths and fingerprint()),
    extracted with the SVM transform in one pass, from the cache when possible."""
    from benchmark.datasets.images import svm_transform
    from benchmark.features import cached_features

    size = image_size or model.arch.reference_input_size
    transform, description = svm_transform(size)
    return cached_features(
        model.backbone, model.weights, data.image_paths, layers, transform, description, size,
        dataset, split, data.fingerprint(), ctx.cache, device=ctx.device, batch_size=ctx.batch_size,
        num_workers=ctx.num_workers, stats=ctx.extraction,
    )


def split_needs(arch: Architecture, dataset: str, splits: dict, layers, image_size: int | None) -> list[FeatureNeed]:
    """The cache entries ``split_features`` writes for these loaded splits ({name: data})."""
    size = image_size or arch.reference_input_size
    return [FeatureNeed(dataset, name, layer, len(data.image_paths), size)
            for name, data in splits.items() for layer in layers]


class SVMTask:
    """Mixin of the SVM tasks: the solver their options name (``solver``, ``svm_device``,
    ``n_jobs``, ``span_coordinates``), and where their units run: as CPU jobs, unless the batched
    engine is asked for a GPU (``solver: torch`` with ``svm_device: cuda``), which makes them GPU
    jobs on SLURM (one VOC07 layer: ~4 s on an H100 against ~50 s on two CPU cores)."""

    trains = False  # convex problems solved to liblinear's tolerance: fixed features give fixed answers

    @property
    def needs_gpu(self) -> bool:
        return self.config.solver == "torch" and str(self.config.svm_device).startswith("cuda")

    def span_coordinates(self) -> bool:
        """liblinear's exact speed-up for n < d (benchmark.svm.liblinear.span_coordinates): on,
        unless the task declares the ``span_coordinates`` option and it is off (VOC07SVM)."""
        return True

    def solver(self, ctx: RunContext) -> Solver:
        """The solver of this task's options (an unknown solver: ConfigError naming the task)."""
        from benchmark.svm.solvers import make_solver

        return make_solver(self.config.solver, self.config.svm_device, n_jobs=self.config.n_jobs,
                           seed=ctx.seed, span=self.span_coordinates(), task=self.name,
                           mixed=self.config.svm_precision == "mixed")


# --- aggregation over seeded samples (low-shot) and draws (few-shot classification) ----------

@dataclass
class Aggregate:
    mean: float
    std: float  # population std over samples / draws, as the reference reports
    min: float
    max: float
    ci95: float  # half-width of the 95 % t-interval of the mean (sample std, n-1 dof)


def aggregate(values) -> Aggregate:
    from scipy import stats as scipy_stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    half = (scipy_stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Aggregate(float(values.mean()), float(values.std()), float(values.min()), float(values.max()),
                     float(half))
