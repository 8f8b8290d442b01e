"""Device requests checked at start-up, before any work: a device string ssl-bench does not know,
or a GPU this machine does not have, is an error naming where the request came from."""

from __future__ import annotations

import torch

from .errors import ConfigError
from .options import DEVICE_PATTERN, DEVICE_RULE


def device_problem(name: object) -> str | None:
    """Why ``name`` cannot be used on this machine, or None when it can."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        return f"it is not a device ssl-bench knows; use {DEVICE_RULE}"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return ("this machine has no usable CUDA GPU (torch.cuda.is_available() is False); use cpu or auto, "
                    "or run where a GPU is visible")
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            return (f"this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}; use one of them, cuda, "
                    f"or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        return "this machine has no usable Apple MPS device; use cpu or auto"
    return None


def check_device(name: object, where: str) -> str:
    """``name`` when this machine can run on it; otherwise a ConfigError naming ``where``."""
    problem = device_problem(name)
    if problem:
        raise ConfigError(f"{where}: device {name!r} cannot be used: {problem}")
    return name
