"""Seeds and RNG states of a training: what makes a run a function of its seed, and resumable."""

from __future__ import annotations

import random

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


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence: well mixed, no collisions of a*1000+b)."""
    return int(np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(2, np.uint64)[0] % 2**63)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding from torch's per-worker seed, so augmentations are reproducible."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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
