"""The plugin API: what tasks and pretrainers share and subclass (the run context, a loaded model,
``Task``, ``Pretrainer``, ``ReportItem``). A plugin package imports these from here; the rest of
``benchmark/`` is the engine that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

from .extraction_stats import ExtractionStats
from .options import validate

if TYPE_CHECKING:
    # annotations only: reading a plugin's declared options or report hooks must not import torch
    import pandas as pd
    import torch

    from .features import FeatureCache
    from .models import Architecture, FrozenBackbone


def __getattr__(name: str):
    """The engine types this module held before it stopped importing torch (plugins that import them
    from here, or from ``benchmark.engine``, still do), imported when first asked for."""
    if name in ("Architecture", "FrozenBackbone"):
        from . import models

        return getattr(models, name)
    if name == "FeatureCache":
        from .features import FeatureCache

        return FeatureCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

@dataclass
class ReportItem:
    """What a task family adds to a run's report: a figure file it wrote (``path``, under the
    report's folder) or a table (``table``), with a caption saying what it shows."""

    caption: str
    path: Path | None = None
    table: "pd.DataFrame | None" = None


@dataclass
class RunContext:
    """Everything a unit of work may need from the run, and nothing more."""

    run_dir: Path
    data_root: Path
    cache: FeatureCache
    device: torch.device
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 2
    extraction: ExtractionStats = field(default_factory=ExtractionStats)


@dataclass
class LoadedModel:
    """A frozen representation to benchmark: its trunk, and the identity of its weights."""

    name: str
    arch: Architecture
    backbone: FrozenBackbone
    weights: str  # content hash of the trunk weights, the feature-cache identity
    info: dict = field(default_factory=dict)

    def row_keys(self) -> tuple[str, ...]:
        """The ``info`` entries its architecture family puts on every result row
        (``FamilyInfo.row_keys``; none for a family that declares none)."""
        return tuple(getattr(self.arch.family_info, "row_keys", ()))


class Pretrainer:
    """Produces a frozen backbone. Subclasses declare ``options`` (``benchmark.options.declare``:
    key -> type, range and default, checked when the config is loaded) and ``build``."""

    name: ClassVar[str]
    options: ClassVar[Mapping] = {}
    # Whether build() trains (SGD: results float-sensitive across processors, and a replicate run
    # retrains it from another seed, taken from its 'seed' option). False: weights follow from fixed
    # inputs alone (a seeded initialisation, a file). Unknown plugins count as training: the safe side.
    trains: ClassVar[bool] = True

    def __init__(self, **options):
        # checked again here (the suite's loader already did, naming the file) so that a
        # pretrainer made in code gets its defaults and the same checks
        where = f"pretrainer '{getattr(self, 'name', type(self).__name__)}'"
        self.config = validate(options, type(self).options, where)

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        raise NotImplementedError

    def check_inputs(self, ctx: RunContext, model_name: str) -> None:
        """Raise a BenchmarkError when the pretrainer's own inputs are wrong (a checkpoint that is
        missing or does not fit the architecture): called once per model before a run makes its
        directory, so that a refusal writes nothing. Default: nothing to check."""

    def checkpoint_bytes(self, arch: Architecture) -> int:
        """What ``build`` leaves in the run directory (the trained weights), for the disk-space
        estimate made before a run starts; non-zero means it also writes a resumable training
        state (weights and momentum) while it trains."""
        return 0


class Task:
    """One evaluation. Declares ``options`` (``benchmark.options.declare``: key -> type, range and
    default, checked when the config is loaded), splits work into ``units`` (for example one per
    layer) and turns one unit into result rows."""

    name: ClassVar[str]
    dataset: ClassVar[str]
    options: ClassVar[Mapping] = {}
    # Schedulers send units that need no accelerator (SVMs on cached features) as CPU jobs.
    needs_gpu: ClassVar[bool] = False
    # Whether run() trains by SGD (heads, detectors, decoders): see Pretrainer.trains. A replicate
    # run gives such tasks another run seed; tasks that do not train (SVMs solved to a tolerance,
    # seeded sampling) keep theirs, so their results on a fixed model are exact.
    trains: ClassVar[bool] = True
    # Tasks whose numbers are not per layer (a trained detector, a normals decoder) report more
    # aggregate metrics than the leaderboard's headline one: report.html shows all of them, per task
    # instance, in a table under this title. "" (the default): the leaderboard says it all.
    detail_title: ClassVar[str] = ""
    # Values of the rows' ``evaluation`` column that are the evaluator checking itself (a known
    # answer scored by the task's metric code), not the model: the detail table shows them after
    # the model's numbers and labels them, so that nobody reads them as the model's.
    evaluator_checks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options):
        where = f"task '{getattr(self, 'name', type(self).__name__)}'"
        self.config = validate(options, type(self).options, where)
        # the suite's name for this instance (a task can appear twice under different names with
        # different options); files a unit writes go under it so instances do not overwrite each other
        self.instance_name = ""  # set by benchmark.run.plan.build_tasks

    def units(self, arch: Architecture) -> list[str]:
        raise NotImplementedError

    def check_data(self, ctx: RunContext) -> None:
        """Raise a DatasetError before any model is built when the data is missing."""

    def prepare(self, ctx: RunContext, model: LoadedModel) -> None:
        """Work shared by all units of a model, done once before them (e.g. feature extraction)."""

    def feature_needs(self, ctx: RunContext, arch: Architecture) -> list:
        """The feature-cache entries (``benchmark.diskspace.FeatureNeed``) the units of one model
        read, for the disk-space estimate made before a run starts."""
        return []

    def checkpoint_bytes(self, arch: Architecture) -> int:
        """What one unit writes into the run directory besides its results (training checkpoints)."""
        return 0

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        raise NotImplementedError

    @classmethod
    def report_figures(cls, rows: "pd.DataFrame", out_dir: Path) -> list[ReportItem]:
        """Figures and tables this task family adds to a run's report, beyond the leaderboard's
        per-layer tables (which every task gets). ``rows`` are all result rows of the suite's
        instances of this family (their ``task`` column is the instance name); files go under
        ``out_dir`` (use ``benchmark.paths.inside``). Called by ``ssl-bench report`` once per
        family present in the results."""
        return []
