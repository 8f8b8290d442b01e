"""Whether a run's report is current: ``ssl-bench report`` on a run whose inputs have not changed
since its last report prints that report instead of writing it again (and imports no pandas).

What a report is made from, recorded beside it in ``report.inputs.json``: every file of the run's
``units/`` folder and the run's own files (``config.yaml``, ``suite.yaml``, ``manifest.json``, ...)
by name, size and modification time; the source files of ssl-bench and of the packages that
register plugins, the same way; the versions of Python and of the libraries that draw and compute it. Every file
the report wrote is recorded the same way, so a deleted or edited output is written again. A report
with published numbers (``--published``) is always written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

from .paths import atomic_write

RECORD = "report.inputs.json"
RUN_FILES = ("config.yaml", "suite.yaml", "manifest.json", "invocation.json")  # what a report reads beside units/
LIBRARIES = ("numpy", "pandas", "matplotlib", "scipy", "tabulate")
_PACKAGES = ("benchmark", "tasks", "pretrainers")
_ENTRY_POINT_GROUPS = ("ssl_bench.tasks", "ssl_bench.pretrainers", "ssl_bench.commands")


def _stat_line(path: Path, name: str | None = None) -> str:
    state = path.stat()
    return f"{name or path.name}\t{state.st_size}\t{state.st_mtime_ns}"


def _code_state() -> list[str]:
    root = Path(__file__).resolve().parent.parent
    lines = [_stat_line(p, str(p.relative_to(root))) for package in _PACKAGES
             for p in sorted((root / package).rglob("*.py"))]
    lines.append(f"python\t{sys.version}")
    for group in _ENTRY_POINT_GROUPS:  # third-party plugins: their distributions' versions
        for entry in importlib.metadata.entry_points(group=group):
            dist = entry.dist
            lines.append(f"{group}\t{entry.name}\t{entry.value}\t{dist.name if dist else ''}\t"
                         f"{dist.version if dist else ''}")
    for library in LIBRARIES:
        try:
            lines.append(f"{library}\t{importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{library}\tabsent")
    return lines


def input_digest(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    lines = [_stat_line(p) for p in sorted((run_dir / "units").iterdir()) if p.is_file()]
    lines += [_stat_line(run_dir / name) for name in RUN_FILES if (run_dir / name).is_file()]
    lines += _code_state()
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _outputs_state(paths: dict[str, Path]) -> dict[str, str]:
    return {key: _stat_line(Path(path)) for key, path in paths.items()}


def current_report(run_dir: Path, inputs: str) -> dict[str, Path] | None:
    """The paths of the run's last report where what it was made from is ``inputs`` (``input_digest``
    now) and none of its files was touched; None where it must be written again."""
    try:
        record = json.loads((Path(run_dir) / RECORD).read_text())
        paths = {key: Path(run_dir) / path for key, path in record["paths"].items()}  # as the run is named now
        if record["inputs"] != inputs or record["outputs"] != _outputs_state(paths):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no record, a damaged one, or an output gone: write the report
    return paths


def record_report(run_dir: Path, paths: dict[str, Path], inputs: str) -> None:
    """Records what the report just written (``paths``) was made from (``inputs``, taken before it was written)."""
    # paths within the run: a run moved or named another way (relative, absolute) still finds its report
    record = {"inputs": inputs, "paths": {key: os.path.relpath(path, run_dir) for key, path in paths.items()},
              "outputs": _outputs_state(paths)}
    atomic_write(Path(run_dir) / RECORD, json.dumps(record, indent=1))
