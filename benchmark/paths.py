"""Where ssl-bench may write: every output path stays inside its run directory or cache, and
temporary files carry their writer's host and pid so that leftovers of a killed process can be
recognised and removed without touching a live writer's files."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from typing import Iterator

from .errors import BenchmarkError


class UnsafePathError(BenchmarkError):
    """An output path built from names would resolve outside the directory it belongs to."""


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root/parts...``, refused unless it resolves inside ``root``.

    Names are validated at load, but a path is only as safe as every name in it: this check holds
    even for a name that slipped past validation (``..``, an absolute path, a planted symlink).
    """
    root = Path(root)
    path = root.joinpath(*[str(part) for part in parts])
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        shown = "/".join(str(part) for part in parts)
        raise UnsafePathError(f"refusing to write '{shown}': it resolves to {resolved}, outside {resolved_root}. "
                              f"A suite, model, task or dataset name probably contains '..', '/' or an "
                              f"absolute path; rename it")
    return path


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.tmp(\.[A-Za-z0-9]+)?$")


def temporary_path(path: Path, keep_suffix: bool = False) -> Path:
    """A hidden sibling of ``path`` to write before renaming it into place; ``keep_suffix`` for
    writers that infer the format from the extension (matplotlib, numpy)."""
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.{_host_tag()}.{os.getpid()}.tmp{suffix}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary files under ``root`` whose writer, a process on this host, is dead.

    Files of other hosts are left alone (their pids mean nothing here: a SLURM job on another
    node may be writing them right now), and so are files of live processes."""
    root = Path(root)
    if not root.is_dir():
        return []
    here = _host_tag()
    removed = []
    for path in root.rglob(".*.tmp*"):
        match = TEMPORARY.match(path.name)
        if not match or match["host"] != here or process_alive(int(match["pid"])) or not path.is_file():
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def format_bytes(n: int) -> str:
    if n < 10 * 2**10:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**20:,.1f} MiB"


class DiskFullError(BenchmarkError):
    """A write failed because the file system is full (or the quota is exhausted)."""


FULL_DISK_ERRNOS = (28, 122)  # ENOSPC, EDQUOT


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS


def disk_full(path: Path, exc: OSError, needed: int | None = None) -> DiskFullError:
    """The error to raise instead of ``exc``: names the file, the file system's free space and what
    was needed."""
    import shutil

    try:
        free = f"{format_bytes(shutil.disk_usage(Path(path).parent).free)} free"
    except OSError:
        free = "free space unknown"
    wanted = f" ({format_bytes(needed)} needed)" if needed else ""
    return DiskFullError(f"no space left on the file system of {path}{wanted}; {free} there ({exc.strerror}). "
                         f"Free space, then 'ssl-bench resume' reruns what did not finish")


# --- atomic writes ---------------------------------------------------------------------------


class AtomicFile:
    """A file written under a temporary name (``temporary_path``) and renamed over ``path`` by
    ``commit``: readers see the old file or the whole new one, never a part. ``abort`` (or a
    failed ``commit``) removes the temporary file; a full disk becomes a ``DiskFullError``
    naming ``path`` (with ``needed`` bytes when known). For writers whose file stays open across
    a long phase (a memory-mapped feature cache entry); others use ``atomic_output``."""

    def __init__(self, path: str | Path, *, keep_suffix: bool = False, needed: int | None = None):
        self.path, self.needed = Path(path), needed
        self.tmp = temporary_path(self.path, keep_suffix=keep_suffix)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except BaseException as exc:
            raise self.failed(exc) from exc

    def failed(self, exc: BaseException) -> BaseException:
        """Remove the temporary file; the exception to raise for ``exc``."""
        self.abort()
        return disk_full(self.path, exc, self.needed) if is_disk_full(exc) else exc

    def commit(self, sync: bool = True) -> None:
        """Flush the temporary file to disk (``sync``) and rename it over ``path``."""
        try:
            if sync:
                with open(self.tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            failure = self.failed(exc)
            if failure is exc:
                raise
            raise failure from exc

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)  # a failed write leaves neither a partial file nor litter


@contextlib.contextmanager
def atomic_output(path: str | Path, *, keep_suffix: bool = False, needed: int | None = None,
                  sync: bool = True) -> Iterator[Path]:
    """The one way ssl-bench writes a file that must be whole or absent: yields a temporary path
    for the caller to write; on success it is flushed to disk (``sync``) and renamed over
    ``path``; on any failure it is removed (see ``AtomicFile``). ``keep_suffix`` for writers that
    infer the format from the extension (numpy, scipy, matplotlib)."""
    output = AtomicFile(path, keep_suffix=keep_suffix, needed=needed)
    try:
        yield output.tmp
    except BaseException as exc:
        failure = output.failed(exc)
        if failure is exc:
            raise
        raise failure from exc
    output.commit(sync)


def atomic_write(path: str | Path, data) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_output``): ``bytes``, ``str`` (UTF-8), or any
    other object, which is saved with ``torch.save`` (a checkpoint: tensors and plain containers,
    readable with ``torch.load(weights_only=True)``)."""
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        with atomic_output(path, needed=len(data)) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
        return
    import torch  # only checkpoints need it; the result store and reports do not

    with atomic_output(path) as tmp:
        torch.save(data, tmp)
