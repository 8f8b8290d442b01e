"""The CSV logs of the training loops.

``CsvLog`` appends rows as training goes; a checkpoint records ``sync()``'s byte length, and a
resumed run cuts the file back there, so no row is written twice and none is lost. ``write_csv``
writes a whole log at once, atomically (loops that keep their rows in the checkpoint).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..paths import atomic_write


class CsvLog:
    """Rows appended to ``path``. ``resume_bytes`` (from a checkpoint): keep the file's first
    ``resume_bytes`` bytes and append; otherwise start a new file. ``columns`` None: the header is
    written with the first ``header`` call (for logs whose columns are known only then).
    ``enabled`` False: nothing is written (the processes of a distributed run that do not log)."""

    def __init__(self, path: Path, columns: Sequence[str] | None, resume_bytes: int | None = None,
                 enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.columns = list(columns) if columns is not None else None
        self.fresh = True  # a new file (no rows kept from before)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_bytes is not None and self.path.exists():
            with open(self.path, "r+b") as handle:
                handle.truncate(resume_bytes)
            self.handle = open(self.path, "a", newline="")
            self.writer = csv.writer(self.handle)
            self.fresh = False
        else:
            self.handle = open(self.path, "w", newline="")
            self.writer = csv.writer(self.handle)
            if self.columns is not None:
                self.writer.writerow(self.columns)

    def header(self, columns: Sequence[str]) -> None:
        """Write the header now (a new log whose columns were not known when it was opened)."""
        self.columns = list(columns)
        if self.enabled:
            self.writer.writerow(self.columns)

    def row(self, values: Iterable) -> None:
        if self.enabled:
            self.writer.writerow(list(values))

    def sync(self) -> int:
        """Flush to disk; the byte length a checkpoint records (0 when disabled)."""
        if not self.enabled:
            return 0
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        if self.enabled:
            self.handle.close()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Iterable]) -> None:
    """The whole log ``columns`` + ``rows`` to ``path``, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(columns))
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())
