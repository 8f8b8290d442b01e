"""Per-layer feature extraction in one forward pass, and an on-disk cache of the results.

A cache entry is one layer of one dataset split for one representation, keyed by everything that
changes its values: trunk weights hash, architecture, layer, pooling, transform, and the split's
file-list fingerprint. Entries are written to a temporary file and renamed, so an interrupted
extraction never leaves a half-written entry behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .datasets.images import ImageFileDataset
from .errors import FeatureError
from .extraction_stats import ExtractionStats
from .models import FrozenBackbone
from .paths import AtomicFile, atomic_write, inside
from .training.precision import autocast, channels_last, to_device
from .training.progress import progress
from .training.sampling import loader_batches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureKey:
    weights: str
    arch: str
    layer: str
    pooling: str
    transform: str
    dataset: str
    split: str
    fingerprint: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


class FeatureCache:
    """Entries are ``.npy`` files with a ``.json`` of metadata (the key, shape, size and a checksum
    of the file's first and last MiB); an entry that does not match its metadata (truncated,
    emptied, overwritten) is reported, named, and extracted again."""

    def __init__(self, root: str | Path, warn=None):
        self.root = Path(root)
        self.warn = warn or logger.warning

    def _path(self, key: FeatureKey) -> Path:
        digest = key.digest()
        return inside(self.root, digest[:2], f"{digest}.npy")

    def get(self, key: FeatureKey) -> np.ndarray | None:
        path = self._path(key)
        if not path.exists():
            return None
        array, problem = open_entry(path)
        if problem:
            self.warn(f"ssl-bench: warning: feature cache entry {path} {problem}; extracting it again")
            return None
        return array

    def writer(self, key: FeatureKey, shape: tuple[int, int]) -> "_EntryWriter":
        return _EntryWriter(self._path(key), key, shape)


SAMPLE_BYTES = 2**20


def sample_digest(path: Path) -> str:
    """sha256 of the file's first and last MiB: cheap on multi-GB entries, and catches a zeroed
    or overwritten tail that the size alone would not."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(0, size - SAMPLE_BYTES))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def open_entry(path: Path) -> tuple[np.ndarray | None, str]:
    """(memory-mapped features, "") for an intact entry; (None, what is wrong) otherwise."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        shape = (int(meta["n"]), int(meta["dim"]))
    except FileNotFoundError:
        return None, f"has no metadata file {meta_path.name}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"has unreadable metadata {meta_path.name} ({type(exc).__name__}: {exc})"
    size = path.stat().st_size
    if "bytes" in meta and size != meta["bytes"]:
        return None, f"has {size} bytes where its metadata says {meta['bytes']} (truncated or altered)"
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        return None, f"cannot be read as a .npy array ({type(exc).__name__}: {exc})"
    if array.shape != shape or array.dtype != np.float32:
        return None, f"holds a {array.dtype} array of shape {array.shape} where its metadata says float32 {shape}"
    if "sample_sha256" in meta and sample_digest(path) != meta["sample_sha256"]:
        return None, "does not match the checksum in its metadata (altered)"
    return array, ""


class _EntryWriter:
    """Fills a memory-mapped temporary .npy; ``commit`` renames it into place atomically.

    The file's blocks are allocated up front: a disk too small for the entry is an error here,
    not a SIGBUS in the middle of extraction when a page of the memory map cannot be written."""

    def __init__(self, path: Path, key: FeatureKey, shape: tuple[int, int]):
        self.path = path
        self.key = key
        self.file = AtomicFile(path, keep_suffix=True, needed=shape[0] * shape[1] * 4)
        self.tmp = self.file.tmp
        try:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape)
            with open(self.tmp, "r+b") as handle:
                self.file.needed = os.fstat(handle.fileno()).st_size
                _preallocate(handle.fileno(), self.file.needed)
        except BaseException as exc:
            self._release()
            failure = self.file.failed(exc)
            if failure is exc:
                raise
            raise failure from exc

    def commit(self, meta: dict) -> None:
        self.array.flush()
        del self.array
        record = {**asdict(self.key), **meta, "bytes": self.tmp.stat().st_size,
                  "sample_sha256": sample_digest(self.tmp)}
        try:  # metadata first: an entry file never exists without the metadata that checks it
            atomic_write(self.path.with_suffix(".json"), json.dumps(record, indent=1))
        except BaseException:
            self.abort()
            raise
        self.file.commit(sync=False)  # the memory map's flush wrote the data

    def _release(self) -> None:
        if hasattr(self, "array"):
            del self.array

    def abort(self) -> None:
        self._release()
        self.file.abort()


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        # a file system without fallocate (some NFS, ZFS) keeps the file sparse: the free space
        # is the best check left before the memory map is written
        stats = os.fstatvfs(fd)
        if stats.f_bavail * stats.f_frsize < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc


def extract_features(
    backbone: FrozenBackbone,
    image_paths: Sequence[Path],
    layers: Sequence[str],
    transform,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 2,
    sinks: dict[str, np.ndarray] | None = None,
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Run the frozen trunk once over the images; returns (or fills ``sinks``) {layer: (N, D) float32}."""
    loader = DataLoader(
        ImageFileDataset(image_paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    with progress(len(image_paths), desc, unit="img") as bar:
        return forward_batches(backbone, (images for images, _ in loader_batches(loader)), layers,
                               len(image_paths), device=device, sinks=sinks, on_batch=bar.update)


def forward_batches(backbone: FrozenBackbone, batches, layers: Sequence[str], total: int, *,
                    device: torch.device, sinks: dict[str, np.ndarray] | None = None,
                    on_batch=None) -> dict[str, np.ndarray]:
    """The extraction loop proper: batches -> pooled features written row-wise into ``sinks``.

    bf16 autocast and channels-last on CUDA; float32 features on every device.
    """
    backbone = channels_last(backbone, device)
    precision = autocast(device)
    outputs = sinks if sinks is not None else {}
    position = 0
    for images in batches:
        images = to_device(images, device)
        with precision():
            feats = backbone(images, layers)
        for layer, value in feats.items():
            value = value.float().cpu().numpy()
            if layer not in outputs:
                outputs[layer] = np.empty((total, value.shape[1]), dtype=np.float32)
            outputs[layer][position:position + len(value)] = value
        position += len(images)
        if on_batch:
            on_batch(len(images))
    return outputs


def check_finite(features: np.ndarray, what: str) -> None:
    finite = np.isfinite(features)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        raise FeatureError(
            f"{what}: {bad_rows} of {len(features)} feature rows contain NaN/inf. The checkpoint's "
            f"weights or BatchNorm statistics are probably broken (diverged training?); nothing was cached."
        )


def cached_features(
    backbone: FrozenBackbone,
    weights: str,
    image_paths: Sequence[Path],
    layers: Sequence[str],
    transform,
    transform_desc: str,
    input_size: int,
    dataset: str,
    split: str,
    fingerprint: str,
    cache: FeatureCache,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 2,
    stats: ExtractionStats | None = None,
) -> dict[str, np.ndarray]:
    """{layer: features} for a dataset split, extracting only the layers not yet in the cache,
    all of them in ONE pass over the images."""
    pooling = backbone.describe_pooling(layers, input_size)
    keys = {
        layer: FeatureKey(weights, backbone.arch.name, layer, pooling[layer], transform_desc,
                          dataset, split, fingerprint)
        for layer in layers
    }
    result = {layer: cache.get(key) for layer, key in keys.items()}
    missing = [layer for layer, value in result.items() if value is None]
    stats = stats if stats is not None else ExtractionStats()
    stats.cache_hits += len(layers) - len(missing)
    stats.cache_misses += len(missing)
    if not missing:
        return result

    dims = _layer_dims(backbone, missing, input_size)
    writers = {}
    start = time.perf_counter()
    try:
        for layer in missing:
            writers[layer] = cache.writer(keys[layer], (len(image_paths), dims[layer]))
        extract_features(
            backbone, image_paths, missing, transform, device=device, batch_size=batch_size,
            num_workers=num_workers, sinks={layer: w.array for layer, w in writers.items()},
            desc=f"{dataset}/{split} {','.join(missing)}",
        )
        for layer, writer in writers.items():
            check_finite(writer.array, f"{backbone.arch.name} layer {layer} on {dataset}/{split}")
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    seconds = time.perf_counter() - start
    stats.images += len(image_paths)
    stats.seconds += seconds
    try:
        for layer, writer in writers.items():
            writer.commit({"n": len(image_paths), "dim": dims[layer], "extract_seconds": seconds,
                           "device": str(device)})
            result[layer] = cache.get(keys[layer])
    except BaseException:
        for writer in writers.values():  # the entries not committed yet leave no temporary file
            writer.abort()
        raise
    return result


def _layer_dims(backbone: FrozenBackbone, layers: Sequence[str], input_size: int) -> dict[str, int]:
    device = next(backbone.parameters()).device
    probe = torch.zeros(1, 3, input_size, input_size, device=device)
    return {layer: value.shape[1] for layer, value in backbone(probe, layers).items()}
