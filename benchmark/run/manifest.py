"""The units a run planned, as ``manifest.json`` in its run directory records them: what
``ssl-bench status`` and ``check`` read without rebuilding the plan (which imports every plugin,
torch included: seconds before the first line)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import BenchmarkError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Unit:
    unit_id: str
    model: str
    task: str
    unit: str
    config_hash: str
    needs_gpu: bool


INVOCATION = "invocation.json"
CONFIG_COPY = "config.yaml"
INVOCATION_KEYS = ("suite", "cache_dir", "data_root", "models", "tasks", "device")


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_invocation(run_dir: Path) -> dict:
    """``invocation.json`` of a run directory: how the run was started (suite, folders, selection)."""
    path = Path(run_dir) / INVOCATION
    if not path.is_file():
        raise BenchmarkError(f"{run_dir} is not a run directory (no {INVOCATION}); pass the folder that "
                             f"'ssl-bench run' created, e.g. runs/goyal2019-mini")
    try:
        invocation = json.loads(path.read_text())
        missing = [key for key in INVOCATION_KEYS if key not in invocation]
        problem = f"keys {missing} are missing" if missing else ""
    except (ValueError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise BenchmarkError(f"{path} is damaged ({problem}); 'ssl-bench run' writes it: run the "
                             f"suite again with the same options (finished units are kept)")
    return invocation


def check_config_copy(run_dir: Path, invocation: dict) -> None:
    """The run's copy of its suite file is the one it was started with (runs that recorded its
    sha256; older ones are not checked here, their plan is rebuilt from it where it is used)."""
    expected = invocation.get("config_sha256")
    if not expected:
        return
    path = Path(run_dir) / CONFIG_COPY
    try:
        found = config_digest(path.read_bytes().decode())
    except (OSError, UnicodeDecodeError):
        found = None
    if found != expected:
        raise BenchmarkError(f"{path} is damaged or was edited: it is not the copy of the suite file this run was "
                             f"started with (sha256 in {INVOCATION}); restore it, or run the suite again with the "
                             f"same options")


def read_manifest(run_dir: Path) -> list[Unit]:
    """The planned units of ``run_dir``, as its last ``ssl-bench run`` or ``resume`` wrote them,
    after checking its invocation and its copy of the suite file."""
    check_config_copy(run_dir, read_invocation(run_dir))
    path = Path(run_dir) / MANIFEST
    names = [f.name for f in fields(Unit)]
    try:
        entries = json.loads(path.read_text())
        units = [Unit(**{name: entry[name] for name in names}) for entry in entries]
    except FileNotFoundError:
        raise BenchmarkError(f"{path} is missing; 'ssl-bench run' writes it: run the suite again with the same "
                             f"options (finished units are kept)") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BenchmarkError(f"{path} is damaged ({type(exc).__name__}: {exc}); 'ssl-bench run' writes it: run "
                             f"the suite again with the same options (finished units are kept)") from None
    return units
