"""The results store: one CSV per finished unit, written atomically, gathered into results.csv.

A unit's file appears complete or not at all (temporary file + rename), so a unit killed half-way
leaves no partial row, concurrent units never write the same file, and "is this unit done?" is a
file lookup. Every row carries its provenance.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

KEY_COLUMNS = ["model", "task", "dataset", "layer", "metric", "class", "k", "sample"]
ORDER_FIRST = KEY_COLUMNS + ["value"]


def unit_filename(unit_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", unit_id) + ".csv"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a partial file nor litter
        raise


class ResultStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.units_dir = self.run_dir / "units"

    def unit_path(self, unit_id: str) -> Path:
        return self.units_dir / unit_filename(unit_id)

    def is_done(self, unit_id: str, config_hash: str) -> bool:
        """Done = a result file exists for this unit AND was produced by the same config."""
        path = self.unit_path(unit_id)
        if not path.exists():
            return False
        frame = pd.read_csv(path, dtype=str)
        if "config_hash" not in frame:  # not written by this store: rerun rather than trust it
            return False
        return bool(len(frame)) and (frame["config_hash"] == config_hash).all()

    def write_unit(self, unit_id: str, rows: list[dict]) -> Path:
        frame = pd.DataFrame(rows)
        for column in KEY_COLUMNS:
            if column not in frame:
                frame[column] = ""
        frame["unit_id"] = unit_id
        frame = frame[ORDER_FIRST + [c for c in frame.columns if c not in ORDER_FIRST]]
        path = self.unit_path(unit_id)
        atomic_write_text(path, frame.to_csv(index=False))
        path.with_suffix(".error.txt").unlink(missing_ok=True)
        return path

    def write_error(self, unit_id: str, message: str) -> Path:
        path = self.unit_path(unit_id).with_suffix(".error.txt")
        atomic_write_text(path, message)
        return path

    def load(self) -> pd.DataFrame:
        files = sorted(self.units_dir.glob("*.csv"))
        if not files:
            return pd.DataFrame(columns=ORDER_FIRST)
        text = {c: str for c in ("class", "k", "sample", "layer", "weights_sha256", "config_hash", "git_sha")}
        frames = [pd.read_csv(f, dtype=text, keep_default_na=False, na_values=[""]) for f in files]
        return pd.concat(frames, ignore_index=True, sort=False)

    def gather(self) -> Path:
        """Write results.csv (all rows of all finished units) atomically."""
        path = self.run_dir / "results.csv"
        atomic_write_text(path, self.load().to_csv(index=False))
        return path
