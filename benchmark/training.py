"""Small shared helpers for the training loops of pretrainers and tasks: seeding, data order, RNG
states, atomic checkpoints and resumption."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .paths import disk_full, is_disk_full, temporary_path


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
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a checkpoint is whole or absent, and leaves no litter
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


def load_resume_state(path: Path, tag: str, map_location="cpu") -> dict | None:
    """A training state to resume from, or None when there is none or it cannot be read (cut off
    by a full disk, damaged): training then starts afresh, which gives the same weights, and says so."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports damage as RuntimeError, EOFError, UnpicklingError...
        print(f"[{tag}] {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); starting afresh")
        return None
    if not isinstance(state, dict):
        print(f"[{tag}] {path} does not hold a training state; starting afresh")
        return None
    return state


def load_matching_checkpoint(path: Path, fmt: int, fingerprint: str, tag: str) -> dict | None:
    """A training checkpoint to resume from, or None when there is none, it cannot be read, or it
    was written by another format or configuration (then training starts afresh, and says so)."""
    state = load_resume_state(path, tag)
    if state is None:
        return None
    if state.get("format") != fmt or state.get("fingerprint") != fingerprint:
        print(f"[{tag}] {path} was made with another configuration; starting afresh")
        return None
    return state


# --- seeds and data order ---------------------------------------------------------------------


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence: well mixed, no collisions of a*1000+b)."""
    return int(np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(2, np.uint64)[0] % 2**63)


_ORDER_TAG = 0x0D3E  # keeps the order's seeds apart from the augmentation's


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a deterministic function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, _ORDER_TAG, epoch))
    return torch.randperm(n, generator=generator)


# --- RNG states as weights_only-loadable objects ---------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
