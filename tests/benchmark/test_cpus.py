"""The cores a process may use: affinity, cgroup quotas (v1 and v2), SLURM's cpus-per-task."""

from __future__ import annotations

import os

import pytest
import torch

from benchmark import cpus


@pytest.fixture()
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)


def test_the_smallest_limit_decides(tmp_path, two_cores) -> None:
    assert cpus.usable_cpus({}, tmp_path) == (6, "affinity mask")
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # 2.5 cores of bandwidth: 2 without contention
    assert cpus.usable_cpus({}, tmp_path) == (2, "cgroup CPU quota")
    assert cpus.usable_cpus({"SLURM_CPUS_PER_TASK": "1"}, tmp_path) == (1, "SLURM_CPUS_PER_TASK")
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert cpus.usable_cpus({"SLURM_CPUS_PER_TASK": "4"}, tmp_path) == (4, "SLURM_CPUS_PER_TASK")
    assert cpus.usable_cpus({"SLURM_CPUS_PER_TASK": "four"}, tmp_path) == (6, "affinity mask")


def test_cgroup_v1_quota_and_unreadable_files(tmp_path, two_cores) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.usable_cpus({}, tmp_path) == (3, "cgroup CPU quota")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cpus.usable_cpus({}, tmp_path) == (6, "affinity mask")
    (tmp_path / "cpu.max").write_text("garbage")
    assert cpus.usable_cpus({}, tmp_path) == (6, "affinity mask")
    (tmp_path / "cpu.max").write_text("50000 100000")  # half a core still allows one thread
    assert cpus.usable_cpus({}, tmp_path) == (1, "cgroup CPU quota")


def test_threads_are_lowered_never_raised_and_a_users_choice_is_kept(tmp_path, two_cores) -> None:
    before = torch.get_num_threads()
    messages = []
    try:
        torch.set_num_threads(4)
        assert cpus.configure_threads(messages.append, {"SLURM_CPUS_PER_TASK": "2"}, tmp_path) == 2
        assert torch.get_num_threads() == 2 and "SLURM_CPUS_PER_TASK allows 2 of 8" in messages[0]
        torch.set_num_threads(1)  # fewer than allowed: a caller's own choice, kept
        assert cpus.configure_threads(messages.append, {"SLURM_CPUS_PER_TASK": "2"}, tmp_path) is None
        assert torch.get_num_threads() == 1
        torch.set_num_threads(4)
        assert cpus.configure_threads(None, {"SLURM_CPUS_PER_TASK": "2", "OMP_NUM_THREADS": "4"}, tmp_path) is None
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_a_suites_thread_count_is_set_whatever_the_machine_and_environment(tmp_path, two_cores) -> None:
    """``threads`` of a suite: raised or lowered to that count, OMP_NUM_THREADS and the usable
    cores notwithstanding (trained numbers depend on the count), and said once."""
    before = torch.get_num_threads()
    messages = []
    try:
        torch.set_num_threads(1)
        assert cpus.configure_threads(messages.append, {"OMP_NUM_THREADS": "1"}, tmp_path, fixed=3) == 3
        assert torch.get_num_threads() == 3 and "fixed by the suite (threads: 3)" in messages[0]
        assert cpus.configure_threads(messages.append, {}, tmp_path, fixed=3) == 3 and len(messages) == 1
    finally:
        torch.set_num_threads(before)
