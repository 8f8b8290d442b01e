"""Keep freed memory in the process while the SVM engine runs (glibc only).

glibc's malloc trims the top of its heap as soon as more than a few dozen MiB there are free, and
maps blocks above its mmap threshold anew each time, so the engine's next temporary of the same
size is page-faulted in again, 4 KiB at a time, and zeroed by the kernel. The engine allocates and
frees tensors of the same few sizes thousands of times per solve (solver vectors of rows x
problems: 1-12 MB for a VOC07 low-shot sample).

``kept_heap()`` turns trimming off and fixes the mmap threshold at its ceiling (32 MiB) for the
duration of the outermost scope, and gives everything free back to the kernel when it ends
(``malloc_trim``), so the process does not keep the memory afterwards. Blocks above 32 MiB are
still mapped per allocation: with mmap off altogether, glibc's aligned allocations (torch's)
grew the heap by several copies of a repeatedly freed block before reusing it (peak resident
memory 5.03 against 4.49 GB on one VOC07 k = 96 run). On that run the setting here took system
time from 1.8-2.8 s to 0.7 s per sample, with the same peak memory as without it. Elsewhere
(another libc, no ctypes) it does nothing: only speed depends on it, never a number.
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
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest glibc accepts on 64-bit, and its dynamic ceiling
TRIM_THRESHOLD_KEEP = 2**31 - 1  # the largest mallopt takes (an int): no trimming below 2 GiB free
# where glibc's dynamic trim threshold settles once a 32 MiB block was freed, as in every engine
# run; restored on leaving the scope (setting a threshold fixes both from then on)
TRIM_THRESHOLD_AFTER = 2 * MMAP_THRESHOLD_MAX

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


def _set(keep: bool):
    _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    _libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_KEEP if keep else TRIM_THRESHOLD_AFTER)


def active() -> bool:
    """Whether a ``kept_heap`` scope is open (on glibc)."""
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
