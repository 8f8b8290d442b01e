"""Keep freed memory in the process while the SVM engine runs (glibc only).

glibc's malloc hands large blocks straight back to the kernel when they are freed (blocks above
its mmap threshold are unmapped, the top of the heap is trimmed), so the engine's next temporary
of the same size is page-faulted in again, 4 KiB at a time, and zeroed by the kernel. The engine
allocates and frees tensors of the same few sizes thousands of times per solve: on one VOC07
low-shot k = 96 sample this was 670,000-860,000 page faults and 1.8-2.8 s of system time per
sample, against 70,000 and 0.7 s with freed blocks kept (measured on this 2-core machine).

``kept_heap()`` keeps them for the duration of the outermost scope (no mmap'd blocks, no
trimming) and gives everything free back to the kernel when it ends (``malloc_trim``), so the
memory the engine held is not retained by the process afterwards. Inside, the process's peak
resident memory can be a little higher (one heap, reused first-fit: 4.87 against 4.45 GB on that
run). Elsewhere (another libc, no
ctypes) it does nothing: only speed depends on it, never a number.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# what glibc's dynamic thresholds settle at once a block of 32 MiB has been freed, which every
# engine run does: restored on leaving the scope (setting any of them fixes them from then on)
MMAP_THRESHOLD_AFTER = 32 * 2**20
TRIM_THRESHOLD_AFTER = 2 * MMAP_THRESHOLD_AFTER
MMAP_MAX_DEFAULT = 65536
TRIM_THRESHOLD_KEEP = 2**31 - 1  # the largest mallopt takes (an int): no trimming below 2 GiB free

_lock = threading.Lock()
_depth = 0


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


_libc = _glibc()


def _set(keep: bool) -> bool:
    """Whether glibc accepted every setting."""
    if keep:
        settings = [(M_TRIM_THRESHOLD, TRIM_THRESHOLD_KEEP), (M_MMAP_MAX, 0)]
    else:
        settings = [(M_MMAP_MAX, MMAP_MAX_DEFAULT), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER),
                    (M_TRIM_THRESHOLD, TRIM_THRESHOLD_AFTER)]
    return all(_libc.mallopt(param, value) == 1 for param, value in settings)


def active() -> bool:
    """Whether a ``kept_heap`` scope is open and took effect."""
    return _libc is not None and _depth > 0


@contextlib.contextmanager
def kept_heap():
    """Freed memory stays in the process until the outermost scope ends (then it is returned)."""
    global _depth
    if _libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(True)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(False)
                _libc.malloc_trim(0)
