"""Device set-up: the precision context and layout per device, and the world size a run uses."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

from benchmark.errors import ConfigError
from benchmark.training import autocast, channels_last, resolve_world_size, to_device

CPU = torch.device("cpu")


def test_cpu_runs_float32_in_the_default_layout() -> None:
    assert autocast(CPU) is contextlib.nullcontext
    conv = channels_last(nn.Conv2d(3, 4, 3), CPU)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 5, 5)
    assert to_device(images, CPU) is images
    with autocast(CPU)():
        assert conv(images).dtype == torch.float32


def test_cuda_gets_bf16_autocast() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constructing it on a machine without CUDA warns
        context = autocast(torch.device("cuda", 0))()
    assert isinstance(context, torch.autocast)
    assert context.device == "cuda" and context.fast_dtype == torch.bfloat16


def test_world_size() -> None:
    assert resolve_world_size("auto", CPU) == 1
    assert resolve_world_size(None, CPU) == 1
    assert resolve_world_size(3, CPU) == 3  # gloo processes on the CPU
    for bad in (0, -1, True, "two", 1.5):
        with pytest.raises(ConfigError, match="world_size must be 'auto' or a positive integer"):
            resolve_world_size(bad, CPU)
    if torch.cuda.device_count() < 64:
        with pytest.raises(ConfigError, match="world_size 64 but only"):
            resolve_world_size(64, torch.device("cuda"))
