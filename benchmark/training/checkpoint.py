"""Training checkpoints: atomic saves, the state to resume from, and strict weight matching.

A checkpoint is whole or absent (``benchmark.paths.atomic_output``). One that cannot be read
(cut off by a full disk, damaged) or was made by another format or configuration is ignored with
one line saying so, and the training starts afresh: every loop is a function of its seed, so
that gives the same weights.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import CheckpointError
from ..paths import atomic_write

logger = logging.getLogger(__name__)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (whole or absent, no litter, a full disk named)."""
    atomic_write(path, obj)


def cpu_state(module_or_state) -> dict:
    """A state dict with every tensor detached on the CPU (what a checkpoint stores)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: v.detach().cpu() for k, v in state.items()}


def load_resume_state(path: Path, tag: str, map_location="cpu", verbose: bool = True) -> dict | None:
    """A training state to resume from, or None when there is none or it cannot be read (cut off
    by a full disk, damaged): training then starts afresh, which gives the same weights, and says so."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports damage as RuntimeError, EOFError, UnpicklingError...
        if verbose:
            logger.info(f"[{tag}] {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); starting afresh")
        return None
    if not isinstance(state, dict):
        if verbose:
            logger.info(f"[{tag}] {path} does not hold a training state; starting afresh")
        return None
    return state


def load_matching_checkpoint(path: Path, fmt: int, fingerprint: str, tag: str, *, key: str = "fingerprint",
                             map_location="cpu", verbose: bool = True,
                             mismatch: str = "was made with another configuration") -> dict | None:
    """A training checkpoint to resume from, or None when there is none, it cannot be read, or it
    was written by another format or configuration (``state[key] != fingerprint``): training then
    starts afresh, and says so (``verbose``: only one process of a distributed run speaks)."""
    state = load_resume_state(path, tag, map_location, verbose)
    if state is None:
        return None
    if state.get("format") != fmt or state.get(key) != fingerprint:
        if verbose:
            logger.info(f"[{tag}] {path} {mismatch}; starting afresh")
        return None
    return state


def scheduler_state(scheduler) -> dict:
    """A torch LR scheduler's state in types ``torch.load(weights_only=True)`` reads back
    (MultiStepLR keeps its milestones in a Counter)."""
    return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in scheduler.state_dict().items()}


def restore_scheduler_state(state: dict) -> dict:
    """The inverse of ``scheduler_state`` for ``scheduler.load_state_dict``."""
    if isinstance(state.get("milestones"), dict):
        state = {**state, "milestones": Counter(state["milestones"])}
    return state


def load_matching_weights(module: nn.Module, weights: dict, source: Path | str, *,
                          ignore: Iterable[str] = ()) -> None:
    """Load ``weights`` into ``module`` (non-strictly), then require every key not under an
    ``ignore`` prefix to have been loaded and nothing unexpected: a mismatch is a CheckpointError
    listing the keys and how to start afresh, never weights silently left as initialised."""
    ignore = tuple(ignore)
    result = module.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignore)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(ignore)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} weight(s) {missing[:5]}")
        if unexpected:
            parts.append(f"has {len(unexpected)} unexpected weight(s) {unexpected[:5]}")
        raise CheckpointError(f"{source} {' and '.join(parts)}; it belongs to another model: delete it to "
                              f"start afresh")
