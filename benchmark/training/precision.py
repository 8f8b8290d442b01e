"""Device and precision set-up shared by the loops that run a trunk: on CUDA the trunk and its
inputs are channels-last and the trunk runs under bf16 autocast (what feature extraction, linear
heads and normals have always used); on other devices, float32 and the default layout."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn


def channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device``, channels-last on CUDA."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images on ``device`` (non-blocking from pinned memory), channels-last on CUDA."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def autocast(device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the forward pass's precision context: bf16 autocast on CUDA, none elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext
