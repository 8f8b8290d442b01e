"""Who/what/where produced a result row: version, git sha, device, wall time, peak memory."""

from __future__ import annotations

import platform
import resource
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

from . import __version__

REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}threads"


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its own high-water mark, giving a per-unit peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measure(device: torch.device):
    """Yields a dict filled on exit with wall_time_s, peak_rss_mb and peak_gpu_mb."""
    stats: dict = {}
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield stats
    finally:
        stats["wall_time_s"] = round(time.perf_counter() - start, 3)
        stats["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        stats["peak_gpu_mb"] = (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                if device.type == "cuda" else 0.0)


def static_provenance(device: torch.device) -> dict:
    return {
        "ssl_bench_version": __version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "device": device_name(device),
        "host": socket.gethostname(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
