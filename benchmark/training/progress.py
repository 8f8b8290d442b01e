"""Progress of the long phases (training, feature extraction), one helper for all of them.

On a terminal it is a tqdm bar (erased when done). Anywhere else (a SLURM log, a pipe, CI) a bar's
carriage returns would fill the log with one unreadable line, so progress is written as plain
lines instead: one each time another 10 % of the phase is done or ``SSL_BENCH_PROGRESS_SECONDS``
(default 60) seconds have passed since the last line, whichever comes first, and one at the end:

    [linear heads] 1200/14000 it (9%), 3.1 it/s, about 69 min left, loss=4.912 lr=0.01
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

FRACTION_STEP = 0.1
DEFAULT_SECONDS = 60.0


def _seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SSL_BENCH_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as periodic plain lines (see the module)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 stream: TextIO | None = None, every_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start = self.printed = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = _seconds() if every_seconds is None else every_seconds
        self.clock = clock
        self.began = self.last = clock()
        self.postfix = ""
        self.closed = False

    def _step(self, n: int) -> int:
        return int(n / self.total / FRACTION_STEP) if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self._step(self.n) > self._step(self.printed) or now - self.last >= self.every_seconds:
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [f"[{self.desc}] {done}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        elapsed = now - self.began
        if elapsed > 0 and self.n > self.start:
            rate = (self.n - self.start) / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        line = ", ".join(parts) + (f", {self.postfix}" if self.postfix else "")
        print(line, file=self.stream, flush=True)
        self.printed, self.last = self.n, now

    def close(self) -> None:
        if not self.closed and self.n != self.printed:
            self._line(self.clock())
        self.closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True,
             stream: TextIO | None = None):
    """A progress display for a phase of ``total`` steps (``initial`` already done, when resumed):
    a tqdm bar when ``stream`` (default stderr) is a terminal, else ``LineProgress``; nothing when
    not ``enabled`` (e.g. every process of a distributed run but the first)."""
    if not enabled:
        return _Silent()
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, unit, initial, stream)
