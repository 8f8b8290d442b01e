"""One process per GPU (``torch.multiprocessing.spawn``; NCCL, or gloo on CPU for tests): the
helpers a loop needs to run on several processes and keep them identical."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import torch
from torch import nn

from ..console_log import configure_console_logging
from ..errors import ConfigError


def resolve_world_size(world_size, device: torch.device) -> int:
    """``auto``: every visible GPU when ``device`` is CUDA without an index, else 1."""
    if world_size in (None, "auto"):
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            return torch.cuda.device_count()
        return 1
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be 'auto' or a positive integer, got {world_size!r}")
    if device.type == "cuda" and world_size > torch.cuda.device_count():
        raise ConfigError(f"world_size {world_size} but only {torch.cuda.device_count()} GPU(s) are visible")
    return world_size


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int, world_size: int, port: int, device_type: str) -> Iterator[torch.device]:
    """Join the group of a spawned process (rank ``rank``) and yield its device; on CPU the
    threads are shared out between the processes."""
    import torch.distributed as dist

    # a spawned process starts without the parent's logging set-up: it shows its messages as the
    # parent's command line does
    configure_console_logging()

    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def all_reduce(*tensors: torch.Tensor) -> None:
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor)


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def average_buffers(module: nn.Module, world_size: int) -> None:
    """Floating-point buffers (BatchNorm running statistics): mean over ranks, so every rank holds
    the same module."""
    import torch.distributed as dist

    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


def rank_divergence(module: nn.Module) -> float:
    """Largest difference of any value of ``module``'s state between ranks (0.0 when identical)."""
    import torch.distributed as dist

    flat = torch.cat([t.detach().float().flatten() for t in module.state_dict().values()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())
