"""Small shared helpers for the training loops of pretrainers and tasks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed a training uses in replicate ``replicate`` of a run; replicate 0 keeps ``seed``.
    Others get well-mixed 31-bit seeds (numpy SeedSequence), far from the small seeds users pick."""
    if replicate == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, replicate, 0x5EED]).generate_state(1, np.uint32)[0] >> 1)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding from torch's per-worker seed, so augmentations are reproducible."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_matching_checkpoint(path: Path, fmt: int, fingerprint: str, tag: str) -> dict | None:
    """A training checkpoint to resume from, or None when there is none or it was written by
    another format or configuration (then training starts afresh, and says so)."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != fmt or state.get("fingerprint") != fingerprint:
        print(f"[{tag}] {path} was made with another configuration; starting afresh")
        return None
    return state
