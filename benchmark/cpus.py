"""How many cores this process may really use, and torch's thread count set from it.

``os.cpu_count()`` counts the machine's cores, not this process's share: a SLURM job with
``--cpus-per-task=4`` on a 64-core node, a container with a CPU quota, or ``taskset`` all give
fewer. torch (OpenMP) threads beyond that share spin against each other and against other jobs:
a multi-threaded solver then degrades far more than the work it replaces when cores are busy."""

from __future__ import annotations

import math
import os
from pathlib import Path

# environment variables through which a user fixes the thread count themselves: left alone then
USER_THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(root: Path) -> float | None:
    """Cores allowed by a CPU bandwidth quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``); None without a quota or where the files cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(environ: dict | None = None, cgroup_root: Path = CGROUP) -> tuple[int, str]:
    """The cores this process may use, and which limit decided it: the affinity mask (taskset,
    SLURM's binding), a cgroup CPU quota (containers), SLURM's ``SLURM_CPUS_PER_TASK``."""
    environ = os.environ if environ is None else environ
    limits = {"machine": os.cpu_count() or 1}
    if hasattr(os, "sched_getaffinity"):
        limits["affinity mask"] = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        limits["cgroup CPU quota"] = max(1, math.floor(quota))  # a fraction of a core over is contention
    slurm = str(environ.get("SLURM_CPUS_PER_TASK", "")).strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    source = min(limits, key=lambda name: (limits[name], name != "machine"))
    return limits[source], source


def configure_threads(log=None, environ: dict | None = None, cgroup_root: Path = CGROUP,
                      fixed: int | None = None) -> int | None:
    """Lower torch's intra-op threads to the usable cores when it has more, unless the user chose a
    count through OMP_NUM_THREADS/MKL_NUM_THREADS. Never raises the count: a caller that asked for
    fewer threads (a test, a notebook) keeps them. Returns the count set, or None when left alone.

    ``fixed`` (a suite's ``threads``) sets the count whatever the machine or environment: a
    training's reductions split work by thread, so the count is part of what its numbers depend on
    (with one thread instead of two, a SimCLR ViT's VOC07 mAP moves by up to 0.8 points)."""
    import torch

    if fixed is not None:
        if torch.get_num_threads() != fixed:
            torch.set_num_threads(fixed)
            if log:
                log(f"[ssl-bench] {fixed} torch thread(s): fixed by the suite (threads: {fixed}), whatever the "
                    f"machine's {os.cpu_count()} cores and OMP_NUM_THREADS")
        return fixed
    environ = os.environ if environ is None else environ
    if any(str(environ.get(name, "")).strip() for name in USER_THREAD_SETTINGS):
        return None
    count, source = usable_cpus(environ, cgroup_root)
    if torch.get_num_threads() <= count:
        return None
    torch.set_num_threads(count)
    if log:
        log(f"[ssl-bench] {count} torch thread(s): the {source} allows {count} of "
            f"{os.cpu_count()} cores (set OMP_NUM_THREADS to choose)")
    return count
