"""`normals_nyuv2`: surface normal estimation on NYUv2 with a dilated ResNet (output stride 8) and a
pyramid pooling decoder, conv1..res4 frozen, res5 and the decoder trained (Goyal et al. 2019).

One unit per model (``res5``: the deepest frozen layer is res4, training starts at res5). The
normal codebook (k-means on the training normals) is computed once per dataset and cached under
the feature cache (``<cache>/normals-codebook/``). The run lives in
``RUN_DIR/normals_nyuv2/<model>/<fingerprint>/`` (checkpoint.pt, log.csv); an interrupted unit
resumes from its checkpoint and reaches the same numbers. Rows: mean / median angular error
(degrees) and % of pixels within 11.25 / 22.5 / 30 degrees on the test split, final model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.config import config_hash
from benchmark.datasets.nyuv2 import LABELED_FILE, NORMALS_FILE, NORMALS_SOURCES, SPLITS_FILE, load_nyuv2
from benchmark.diskspace import training_checkpoint_bytes
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, Options, Range, Str, declare
from benchmark.paths import inside

from .metrics import MEDIAN_MAX_ERROR_DEG, METRIC_NAMES, mean_normal_baseline
from . import HEADS

if TYPE_CHECKING:
    from benchmark.models import Architecture
    from benchmark.training import Schedule

NAME = "normals_nyuv2"  # the name the task is registered and configured under

UNIT = "res5"
# the rows of the metric code scoring the training set's mean normal as a prediction, not the model
MEAN_NORMAL_BASELINE = "mean_normal_baseline"
REFERENCE_HEIGHT = 480  # NYUv2 frames; the training short sides are given for them
# The reference's optimiser (docs/tasks/normals.md: SGD LR 0.02 poly 0.9, weight decay 1e-4, momentum 0.9). The
# protocol gives no iteration count or batch size: ssl-bench chose 10,000 iterations of 16 images
# (about 200 epochs of the 795 training images).
SCHEDULES = {"reference": {"iterations": 10_000, "batch_size": 16, "base_lr": 0.02, "weight_decay": 1e-4}}
SCHEDULE_NAMES = (*SCHEDULES, "custom")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{NAME}: {what} must be a positive integer, got {value!r}")
    return value


def resolve_schedule(cfg: Options) -> Schedule:
    from .train import NormalsSchedule

    name = cfg.schedule
    if name not in SCHEDULE_NAMES:
        raise ConfigError(f"{NAME}: unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    if name == "custom":
        if cfg.iterations is None:
            raise ConfigError(f"{NAME}: the custom schedule needs 'iterations'")
        spec = {"iterations": cfg.iterations, "batch_size": 16, "base_lr": 0.02, "weight_decay": 1e-4}
    else:
        if cfg.iterations is not None:
            raise ConfigError(f"{NAME}: iterations only apply to schedule: custom; the {name!r} schedule "
                              f"fixes them (set schedule: custom to choose your own)")
        spec = dict(SCHEDULES[name])
    spec.update({k: cfg[k] for k in ("batch_size", "base_lr", "weight_decay") if cfg[k] is not None})
    _positive_int(spec["iterations"], "iterations")
    if _positive_int(spec["batch_size"], "batch_size") < 2:
        raise ConfigError(f"{NAME}: batch_size must be at least 2 (the decoder's BatchNorm needs it)")
    for key in ("base_lr", "weight_decay"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{NAME}: {key} must be a non-negative number, got {value!r}")
    return NormalsSchedule(name, int(spec["iterations"]), int(spec["batch_size"]), float(spec["base_lr"]),
                           float(spec["weight_decay"]))


class NormalsNYUv2(Task):
    name = NAME
    dataset = "nyuv2"
    needs_gpu = True  # trains res5 and a decoder on dense maps
    detail_title = "Surface normals (NYUv2 test)"
    evaluator_checks = (MEAN_NORMAL_BASELINE,)
    options = declare({
        "data_dir": Str("NYUv2"),  # relative to the data root, or absolute
        "labeled_file": Str(LABELED_FILE),
        "splits_file": Str(SPLITS_FILE),
        # file (normals_file: Ladicky-style ground truth) | depth (computed from the depths)
        "normals": Choice(*NORMALS_SOURCES, default="file"),
        "normals_file": Str(NORMALS_FILE),
        "depth_window": Int(5, min=3, odd=True),  # normals: depth -> plane-fit window (pixels)
        # codebook (40-way classification, the reference) | regression (cosine loss)
        "head": Choice(*HEADS, default="codebook"),
        "codebook_size": Int(40, min=1),
        "codebook_samples": Int(1_000_000, min=1),  # training pixels drawn for k-means
        "codebook_iterations": Int(100, min=1),
        # reference (see SCHEDULES) | custom (needs iterations)
        "schedule": Choice(*SCHEDULE_NAMES, default="reference"),
        "iterations": Int(None, min=1),
        "batch_size": Int(None, min=2),  # the decoder's BatchNorm needs 2
        "base_lr": Float(None, min=0),
        "weight_decay": Float(None, min=0),
        # multi-scale training, in pixels of 480-pixel-high frames (scaled)
        "train_short_side": Range(Int(min=1), [300, 600]),
        "decoder_channels": Int(512, min=1),
        "checkpoint_every": Int(500, min=1),
        "num_workers": Int(None, min=0),  # DataLoader workers; None = the suite's num_workers
    })

    def root(self, ctx: RunContext) -> Path:
        return ctx.data_root / self.config.data_dir

    def checkpoint_bytes(self, arch: Architecture) -> int:
        return training_checkpoint_bytes(arch.name)

    def units(self, arch: Architecture) -> list[str]:
        if arch.feature_maps is not None:  # the timm/<model> family: no dilated variant here yet
            raise ConfigError(f"{self.name} is ResNet-only for now (a dilated torchvision ResNet); {arch.name} is a "
                              f"timm architecture. Use resnet50 (or resnet18/34/101/152) for this task, or give it "
                              f"a 'models:' list without this model")
        if arch.layers[:5] != ("conv1", "res2", "res3", "res4", "res5"):
            raise ConfigError(f"{self.name} needs a ResNet (a dilated conv1..res5 trunk); {arch.name} is not one")
        return [UNIT]

    def _check_options(self) -> None:
        """What the declarations cannot say alone: the schedule's options fit together."""
        resolve_schedule(self.config)

    def _splits(self, ctx: RunContext):
        cfg = self.config
        kwargs = {k: cfg[k] for k in ("normals", "normals_file", "labeled_file", "splits_file", "depth_window")}
        return load_nyuv2(self.root(ctx), "train", **kwargs), load_nyuv2(self.root(ctx), "test", **kwargs)

    def check_data(self, ctx: RunContext) -> None:
        self._check_options()
        self._splits(ctx)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from .codebook import cached_codebook
        from .model import PSP_BINS
        from .train import NormalsSetup, train_normals

        if unit != UNIT:
            raise ConfigError(f"{self.name} has one unit, {UNIT!r}; got {unit!r}")
        self._check_options()
        cfg = self.config
        schedule = resolve_schedule(cfg)
        train, test = self._splits(ctx)
        train_fp, test_fp = train.fingerprint(), test.fingerprint()
        short_side = tuple(max(1, round(s * train.height / REFERENCE_HEIGHT)) for s in cfg.train_short_side)
        codes, codebook_path = None, ""
        if cfg.head == "codebook":
            array, path = cached_codebook(ctx.cache.root, train_fp, cfg.codebook_size, train.normals, len(train),
                                          samples=cfg.codebook_samples, seed=ctx.seed,
                                          iterations=cfg.codebook_iterations)
            codes, codebook_path = torch.as_tensor(array, dtype=torch.float32), str(path)
        fingerprint = config_hash({
            "weights": model.weights, "arch": model.arch.name, "schedule": schedule.describe(), "head": cfg.head,
            "codes": hashlib.sha256(np.asarray(codes).tobytes()).hexdigest() if codes is not None else "",
            "short_side": short_side, "decoder_channels": cfg.decoder_channels, "seed": ctx.seed,
            "train": train_fp, "test": test_fp,
        })
        out_dir = inside(ctx.run_dir, self.name, model.name, fingerprint)
        setup = NormalsSetup(
            head=cfg.head, schedule=schedule, short_side=short_side, codes=codes,
            decoder_channels=cfg.decoder_channels, seed=ctx.seed, checkpoint_every=cfg.checkpoint_every,
            num_workers=ctx.num_workers if cfg.num_workers is None else cfg.num_workers,
            eval_batch_size=max(2, min(ctx.batch_size, schedule.batch_size)), fingerprint=fingerprint,
            desc=f"{self.name} {model.name}",
        )
        result = train_normals(model.backbone.model, train, test, setup, out_dir, ctx.device)
        metrics = result["metrics"]
        common = {
            "dataset": "nyuv2", "layer": UNIT, "head": cfg.head, "schedule": schedule.name,
            "iterations": schedule.iterations, "batch_size": schedule.batch_size, "base_lr": schedule.base_lr,
            "lr_policy": f"poly{schedule.power:g}", "weight_decay": schedule.weight_decay,
            "momentum": schedule.momentum, "train_short_side": f"{short_side[0]}-{short_side[1]}",
            "image_size": f"{train.width}x{train.height}", "codebook_size": len(codes) if codes is not None else "",
            "codebook": codebook_path, "normals_source": cfg.normals, "frozen": "conv1-res4",
            "decoder": f"psp{'/'.join(map(str, PSP_BINS))}-{cfg.decoder_channels}", "output_stride": 8,
            "n_train": len(train), "n_test": len(test), "valid_pixels": int(metrics["valid_pixels"]),
            "median_resolution_deg": MEDIAN_MAX_ERROR_DEG, "final_train_loss": round(float(result["losses"][-1]), 5),
            "log_csv": str(out_dir / "log.csv"), "checkpoint": str(out_dir / "checkpoint.pt"),
        }
        baseline = mean_normal_baseline(train, test)  # exact: annotations and metrics only, no model
        return [{**common, "metric": name, "value": float(metrics[name])} for name in METRIC_NAMES] + [
            {"dataset": "nyuv2", "layer": UNIT, "metric": name, "value": float(baseline[name]),
             "evaluation": MEAN_NORMAL_BASELINE, "determinism": "exact", "n_train": len(train), "n_test": len(test),
             "note": "every pixel predicted as the training set's mean normal: independent of the model"}
            for name in METRIC_NAMES]
