"""``benchmark._heap.kept_heap``: freed memory is reused without page faults inside the scope and
given back when the outermost scope ends (glibc only; elsewhere it does nothing)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from benchmark import _heap

pytestmark = pytest.mark.skipif(_heap._libc is None, reason="glibc's mallopt is not available")

BLOCK = 16 * 2**20
PAGES = 3 * BLOCK // 4096


def _faults_of_a_round() -> int:
    """Minor page faults of three 16 MiB tensors written while alive together, then freed: 48 MiB
    free at the top of the heap, which glibc trims by default (its threshold settles at 32 MiB
    once a 16 MiB block was freed), so each round faults its pages in again."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(BLOCK // 4, dtype=torch.float32) for _ in range(3)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_inside_and_returned_after() -> None:
    """In a fresh process: glibc's thresholds and heap layout depend on what the process allocated
    before (another test file in the same pytest worker left fewer faults after the trim)."""
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _reuse_inside_and_return_after() -> None:
    assert not _heap.active()
    with _heap.kept_heap():
        with _heap.kept_heap():  # nested scopes: only the outermost one sets and resets
            assert _heap.active()
            for _ in range(8):  # glibc's aligned allocations extend the heap a few times before reusing it
                _faults_of_a_round()
            assert [_faults_of_a_round() for _ in range(3)] == [pytest.approx(0, abs=PAGES // 20)] * 3
        assert _heap.active()
    assert not _heap.active()
    assert _faults_of_a_round() > PAGES // 2  # malloc_trim gave the pages back: faulted in again


def test_a_failing_body_still_closes_the_scope() -> None:
    with pytest.raises(RuntimeError):
        with _heap.kept_heap():
            raise RuntimeError("boom")
    assert not _heap.active()


if __name__ == "__main__":
    _reuse_inside_and_return_after()
