"""One driver per run directory.

``ssl-bench run`` and ``resume`` hold ``RUN_DIR/.lock`` while they plan, run and report. The
file names its holder (pid, host, start time) and is also locked with ``flock``, which the
kernel releases when the holder dies, kill -9 included. A lock whose holder is a dead process of
this host is taken over; one held from another host (a driver on another login node) is refused,
since its pid cannot be checked from here. SLURM jobs never take the lock: they are started by the
driver that holds it and write only their own units.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .errors import BenchmarkError
from .paths import process_alive

logger = logging.getLogger(__name__)


class RunLockedError(BenchmarkError):
    """Another driver holds the run directory."""


def _describe(holder: dict) -> str:
    if holder.get("pid") is None:
        return "a process that is just starting (it has not written its pid yet)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {when} ({holder.get('command', '?')})"


class RunLock:
    def __init__(self, run_dir: Path, command: str = "run"):
        self.path = Path(run_dir) / ".lock"
        self.command = command
        self.handle = None

    def _holder(self) -> dict:
        self.handle.seek(0)
        text = self.handle.read()
        try:
            holder = json.loads(text) if text.strip() else {}
        except ValueError:
            return {"damaged": text[:80]}
        return holder if isinstance(holder, dict) else {"damaged": text[:80]}

    def acquire(self, log=logger.info) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+", errors="replace")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self._close()
            raise RunLockedError(f"{self.path.parent} is in use by another ssl-bench: {_describe(holder)}. "
                                 f"Wait for it to finish (ssl-bench status {self.path.parent}) or stop it") from None
        except OSError:
            pass  # a file system without flock: the holder's pid below still decides
        holder = self._holder()
        if holder.get("pid") is not None and "damaged" not in holder:
            here = holder.get("host") == socket.gethostname()
            alive = process_alive(int(holder["pid"])) if str(holder["pid"]).isdigit() else False
            if not here or alive:
                self._close()
                hint = ("if that process is gone, delete " + str(self.path) if not here
                        else "if that pid is not ssl-bench, delete " + str(self.path))
                raise RunLockedError(f"{self.path.parent} is in use by another ssl-bench: {_describe(holder)}; {hint}")
            log(f"[ssl-bench] taking over the lock of {self.path.parent} from a dead process ({_describe(holder)})")
        elif "damaged" in holder:
            log(f"[ssl-bench] replacing the unreadable lock file {self.path} (no process holds it)")
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                      "command": self.command}))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self

    def release(self) -> None:
        if self.handle is None:
            return
        try:  # an empty lock file is a free one
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.flush()
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def command_line() -> str:
    return " ".join(["ssl-bench", *sys.argv[1:]])[:200]
