"""What a plan will write, estimated before any work starts, against the free space where it goes.

Features dominate: one float32 matrix (images x layer dim) per layer and dataset split for every
model with pending units (Goyal et al.'s ResNet-50 VOC07 layers: ~1.8 GB per model). The estimate
is an upper bound: features already in the cache are counted again, since which entries a model
will find depends on its weights, known only once it is built. ``SSL_BENCH_SKIP_SPACE_CHECK=1``
skips the check when you know better.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import BenchmarkError

RESULT_BYTES_PER_UNIT = 256 * 2**10  # a unit file, its record, error file and marker
FIXED_RUN_BYTES = 64 * 2**20  # plan files, leaderboards, plots, low-shot samples, logs


class NotEnoughSpaceError(BenchmarkError):
    """The plan will not fit on the file system of the cache or the run directory."""


@dataclass(frozen=True)
class FeatureNeed:
    """One cache entry a task's units read: ``images`` rows of ``layer`` at ``input_size``."""

    dataset: str
    split: str
    layer: str
    images: int
    input_size: int


@lru_cache(maxsize=None)
def layer_dims(arch_name: str, input_size: int) -> dict[str, int]:
    """Pooled feature dimension of every layer, from a weightless (meta-device) forward pass."""
    import torch

    from .models.backbone import FrozenBackbone, get_architecture

    arch = get_architecture(arch_name)
    with torch.device("meta"):
        backbone = FrozenBackbone(arch, arch.build())
        outputs = backbone(torch.zeros(1, 3, input_size, input_size), list(arch.layers))
    return {layer: int(value.shape[1]) for layer, value in outputs.items()}


@lru_cache(maxsize=None)
def parameter_bytes(arch_name: str) -> int:
    import torch

    from .models.backbone import get_architecture

    with torch.device("meta"):
        model = get_architecture(arch_name).build()
    return sum(p.numel() * p.element_size() for p in model.parameters())


def training_checkpoint_bytes(arch_name: str) -> int:
    """A resumable training checkpoint: the weights and their SGD momentum."""
    return 2 * parameter_bytes(arch_name)


@dataclass
class Estimate:
    cache_bytes: int = 0
    run_bytes: int = 0
    detail: list[str] = None

    def __post_init__(self):
        self.detail = self.detail or []


def feature_bytes(needs: dict[tuple, FeatureNeed], arch_of: dict[str, str]) -> tuple[int, list[str]]:
    """Bytes of the distinct entries ``needs`` ({(model, dataset, split, layer, size): need})."""
    total, per_model = 0, {}
    for (model, *_), need in needs.items():
        size = need.images * layer_dims(arch_of[model], need.input_size)[need.layer] * 4 + 128
        total += size
        per_model[model] = per_model.get(model, 0) + size
    return total, [f"features of {model}: {_mib(n)}" for model, n in per_model.items()]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_space(estimate: Estimate, run_dir: Path, cache_dir: Path) -> None:
    """Refuse when the estimate does not fit; both directories may share one file system."""
    if os.environ.get("SSL_BENCH_SKIP_SPACE_CHECK") == "1":
        return
    wanted: dict[int, list] = {}
    for what, directory, needed in (("feature cache", cache_dir, estimate.cache_bytes),
                                    ("run directory", run_dir, estimate.run_bytes)):
        device = os.stat(directory).st_dev
        wanted.setdefault(device, []).append((what, directory, needed))
    for entries in wanted.values():
        needed = sum(n for _, _, n in entries)
        free = shutil.disk_usage(entries[0][1]).free
        if needed > free:
            where = " and ".join(f"the {what} {directory} ({_mib(n)})" for what, directory, n in entries)
            raise NotEnoughSpaceError(
                f"this run will write up to {_mib(needed)} to {where}, but only {_mib(free)} are free there "
                f"({'; '.join(estimate.detail)}). Free space, choose another place with --out/--cache, or "
                f"run fewer models/tasks; SSL_BENCH_SKIP_SPACE_CHECK=1 skips this check (features already "
                f"cached are counted in the estimate)")
