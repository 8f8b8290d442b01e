"""The results store: one CSV per finished unit, written atomically, gathered into results.csv.

A unit's file appears complete or not at all (temporary file + rename), so a unit killed half-way
leaves no partial row, concurrent units never write the same file, and "is this unit done?" is a
file lookup. Every row carries its provenance. Next to each unit file, a small record holds its
row count, size and checksum: a file damaged later (truncated, emptied, edited) is recognised,
named, and the unit counts as not done.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BenchmarkError
from .paths import atomic_write, inside
from .row_schema import OUTCOMES, OUTCOMES_ENTRY, OUTCOMES_FILE

OUTCOMES_SUFFIX = ".outcomes.npz"

logger = logging.getLogger(__name__)

KEY_COLUMNS = ["model", "task", "dataset", "layer", "metric", "class", "k", "sample"]
ORDER_FIRST = KEY_COLUMNS + ["value"]
TEXT_COLUMNS = ("class", "k", "sample", "layer", "weights_sha256", "checkpoint_sha256", "config_hash", "git_sha")
RECORD_SUFFIX = ".record.json"


class DamagedResultsError(BenchmarkError):
    """Result files whose content does not match their record."""


def unit_filename(unit_id: str) -> str:
    """A readable slug plus a hash of the exact unit id: ids that differ only in characters the
    slug cannot keep ("moco v2" and "moco:v2") still get different files."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "__", unit_id)[:96].lstrip(".") or "unit"
    return f"{slug}--{hashlib.sha256(unit_id.encode()).hexdigest()[:12]}.csv"


def legacy_unit_filename(unit_id: str) -> str:
    """The file name of ssl-bench versions before unit file names were made injective."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", unit_id) + ".csv"




# Where a column holds an integer setting in some rows and nothing in others (detection's
# `iterations`, `batch_size`, `freeze_at` beside rows that lack them), pandas stores it as float64
# with NaN and would print `300.0`. The columns written as integers are remembered here, in the
# frame's attrs, and printed as integers again by ``csv_text``.
INTEGER_COLUMNS_ATTR = "integer_columns"
_INTEGER_TEXT = r"-?[0-9]+"


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer_columns_of_rows(rows: list[dict]) -> set[str]:
    """The keys whose every given (not None) value in ``rows`` is an integer."""
    seen: dict[str, bool] = {}
    for row in rows:
        for key, value in row.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            seen[key] = seen.get(key, True) and _is_integer(value)
    return {key for key, integer in seen.items() if integer}


def csv_text(frame: pd.DataFrame, integer_columns=None, **to_csv) -> str:
    """``frame.to_csv``, with the float columns among ``integer_columns`` (default: the frame's
    ``attrs``) printed as integers where every value they hold is integral: the same numbers, the
    text they were written with. Other columns are printed exactly as ``to_csv`` prints them."""
    if integer_columns is None:
        integer_columns = frame.attrs.get(INTEGER_COLUMNS_ATTR, ())
    convert = [c for c in integer_columns if c in frame.columns and pd.api.types.is_float_dtype(frame[c])
               and np.all(np.mod(frame[c].dropna().to_numpy(), 1) == 0)]
    if convert:
        frame = frame.astype({c: "Int64" for c in convert})
    return frame.to_csv(**to_csv)


def _read_csv(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data), dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                        na_values=[""])
    # read from the dtypes, and the arrays of the float columns alone: a Series per column costs more
    # than the parse
    integer = {c for c, dtype in frame.dtypes.items() if pd.api.types.is_integer_dtype(dtype)}
    # an integer column with empty cells is read as float64: its text says whether it was integers
    gapped = []
    for index, (column, dtype) in enumerate(frame.dtypes.items()):
        if pd.api.types.is_float_dtype(dtype):
            missing = np.isnan(frame.iloc[:, index].to_numpy())
            if missing.any() and not missing.all():
                gapped.append(column)
    if gapped:
        text = pd.read_csv(io.BytesIO(data), usecols=gapped, dtype=str, keep_default_na=False)
        integer |= {c for c in gapped if text[c][text[c] != ""].str.fullmatch(_INTEGER_TEXT).all()}
    frame.attrs[INTEGER_COLUMNS_ATTR] = integer
    return frame


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_path(unit_file: Path) -> Path:
    return unit_file.with_name(unit_file.stem + RECORD_SUFFIX)


class ResultStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.units_dir = self.run_dir / "units"
        self.damaged: list[str] = []  # "path: problem" of the files the last load() left out
        # outcomes file name -> its arrays: a unit's rows share one file, read once per store
        self._outcome_arrays: dict[str, dict[str, np.ndarray]] = {}

    def unit_path(self, unit_id: str) -> Path:
        return inside(self.run_dir, "units", unit_filename(unit_id))

    def inspect(self, path: Path) -> tuple[pd.DataFrame | None, str]:
        """(rows, "") for an intact unit file; (None, what is wrong) for a damaged one. A unit file or
        record that is a symlink pointing outside the run directory is not read."""
        root = self.run_dir.resolve()
        for member in (path, record_path(path)):
            target = member.resolve()
            if root not in target.parents:  # the file, or a folder above it, links elsewhere
                return None, (f"is not read: {'its record ' if member != path else ''}{member.name} is a symlink "
                              f"pointing outside the run directory, to {target}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return None, f"cannot be read ({exc.strerror})"
        record_file = record_path(path)
        try:
            record = json.loads(record_file.read_text())
            rows, size, digest = int(record["rows"]), int(record["bytes"]), str(record["sha256"])
        except FileNotFoundError:
            return self._inspect_legacy(path, data, record_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"its record {record_file.name} is unreadable ({type(exc).__name__}: {exc})"
        if not data:
            return None, f"is empty (its record says {rows} rows, {size} bytes)"
        if len(data) != size:
            return None, f"has {len(data)} bytes where its record says {size} ({rows} rows): truncated or altered"
        if _digest(data) != digest:
            return None, f"does not match the checksum in its record {record_file.name}: altered"
        try:
            frame = _read_csv(data)
        except Exception as exc:  # noqa: BLE001 - any parser failure means the same: unusable
            return None, f"cannot be parsed as CSV ({type(exc).__name__}: {exc})"
        if len(frame) != rows:
            return None, f"holds {len(frame)} rows where its record says {rows}"
        if record.get("unit_id") is not None and not (frame.get("unit_id", pd.Series(dtype=str))
                                                        .eq(record["unit_id"]).all()):
            return None, f"holds rows of another unit than {record['unit_id']!r}"
        return frame, ""

    @staticmethod
    def _inspect_legacy(path: Path, data: bytes, record_file: Path) -> tuple[pd.DataFrame | None, str]:
        """Unit files of older versions have no record: trusted when they parse and sit under the
        old name of the single unit they hold (their truncation cannot be detected)."""
        missing = (f"has no record ({record_file.name}): it was cut off before its record was written, "
                   f"or copied without it")
        if not data:
            return None, "is empty (0 bytes)"
        try:
            frame = _read_csv(data)
        except Exception as exc:  # noqa: BLE001
            return None, f"{missing}, and cannot be parsed as CSV ({type(exc).__name__}: {exc})"
        ids = set(frame["unit_id"].astype(str)) if "unit_id" in frame else set()
        if len(ids) == 1 and path.name == legacy_unit_filename(next(iter(ids))) and len(frame):
            return frame, ""
        return None, missing

    def unit_state(self, unit_id: str, config_hash: str) -> tuple[str, str]:
        """("done" | "missing" | "other-config" | "damaged", detail) of a unit's result file."""
        path = self.unit_path(unit_id)
        if not path.exists():
            legacy = self.units_dir / legacy_unit_filename(unit_id)
            if not legacy.is_file():
                return "missing", ""
            path = legacy
        frame, problem = self.inspect(path)
        if problem:
            return "damaged", f"{path} {problem}"
        if "unit_id" in frame and not frame["unit_id"].astype(str).eq(unit_id).all():
            return "missing", ""  # a legacy file shared by two ids now holds the other one's rows
        if "config_hash" not in frame or not len(frame) or not (frame["config_hash"] == config_hash).all():
            return "other-config", str(path)
        return "done", str(path)

    def is_done(self, unit_id: str, config_hash: str) -> bool:
        """Done = an intact result file exists for this unit AND was produced by the same config."""
        return self.unit_state(unit_id, config_hash)[0] == "done"

    def adopt_legacy(self, unit_id: str) -> Path | None:
        """Move an intact unit file of an older version to its current name, with a record."""
        legacy = self.units_dir / legacy_unit_filename(unit_id)
        path = self.unit_path(unit_id)
        if path.exists() or not legacy.is_file():
            return None
        frame, problem = self.inspect(legacy)
        if problem or "unit_id" not in frame or not frame["unit_id"].astype(str).eq(unit_id).all():
            return None
        data = legacy.read_bytes()
        self._write_record(path, unit_id, len(frame), data)
        os.replace(legacy, path)
        return path

    def _write_record(self, path: Path, unit_id: str, rows: int, data: bytes) -> None:
        atomic_write(record_path(path), json.dumps({"unit_id": unit_id, "rows": rows, "bytes": len(data),
                                                         "sha256": _digest(data)}))

    def write_unit(self, unit_id: str, rows: list[dict]) -> Path:
        path = self.unit_path(unit_id)
        self._outcome_arrays.pop(path.with_suffix(OUTCOMES_SUFFIX).name, None)
        rows = self._write_outcomes(path, rows)
        frame = pd.DataFrame(rows)
        for column in KEY_COLUMNS:
            if column not in frame:
                frame[column] = ""
        frame["unit_id"] = unit_id
        frame = frame[ORDER_FIRST + [c for c in frame.columns if c not in ORDER_FIRST]]
        data = csv_text(frame, integer_columns_of_rows(rows), index=False).encode()
        # the file, then its record: a full disk at the first write leaves the earlier file and
        # record as they were; a crash between the two leaves a file that fails its record (the
        # unit reruns)
        atomic_write(path, data)
        self._write_record(path, unit_id, len(frame), data)
        path.with_suffix(".error.txt").unlink(missing_ok=True)
        return path

    @staticmethod
    def _write_outcomes(path: Path, rows: list[dict]) -> list[dict]:
        """Rows without their per-image outcomes, which go to ``<unit>.outcomes.npz`` (written
        before the CSV: a unit file that names outcomes always has them beside it)."""
        arrays, out = {}, []
        for index, row in enumerate(rows):
            outcomes = row.get(OUTCOMES)
            row = {k: v for k, v in row.items() if k != OUTCOMES}
            if outcomes is not None:
                entry = f"row{index}"
                arrays[f"{entry}.values"] = np.asarray(outcomes.values)
                arrays[f"{entry}.statistic"] = np.asarray(outcomes.statistic)
                if outcomes.classes is not None:
                    arrays[f"{entry}.classes"] = np.asarray(outcomes.classes)
                row = {**row, OUTCOMES_FILE: path.with_suffix(OUTCOMES_SUFFIX).name, OUTCOMES_ENTRY: entry}
            out.append(row)
        if arrays:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            atomic_write(path.with_suffix(OUTCOMES_SUFFIX), buffer.getvalue())
        return out

    def read_outcomes(self, file_name: str, entry: str):
        """The ``Outcomes`` a row names (its OUTCOMES_FILE and OUTCOMES_ENTRY), read from this run's
        units folder only; a file that is missing or damaged is a BenchmarkError naming it."""
        from .significance import Outcomes

        path = inside(self.units_dir, file_name)
        try:
            if file_name not in self._outcome_arrays:
                with np.load(path, allow_pickle=False) as data:
                    self._outcome_arrays[file_name] = {name: data[name] for name in data.files}
            arrays = self._outcome_arrays[file_name]
            return Outcomes(str(arrays[f"{entry}.statistic"]), arrays[f"{entry}.values"],
                            arrays.get(f"{entry}.classes"))
        except (OSError, ValueError, KeyError) as exc:
            raise BenchmarkError(f"{path}: per-image outcomes of {entry} cannot be read ({exc}); "
                                 f"rerun its unit ('ssl-bench run ... --force') to write it again") from None

    def write_error(self, unit_id: str, message: str) -> Path:
        path = self.unit_path(unit_id).with_suffix(".error.txt")
        atomic_write(path, message)
        return path

    def load(self, damaged: str = "raise") -> pd.DataFrame:
        """All rows of all intact unit files. A damaged file is an error naming it
        (``damaged="raise"``), or is left out with a warning and listed in ``self.damaged``
        (``damaged="skip"``)."""
        files = sorted(self.units_dir.glob("*.csv"), key=lambda f: (f.name.rsplit("--", 1)[0], f.name))
        frames, self.damaged = [], []
        for file in files:
            frame, problem = self.inspect(file)
            if problem:
                self.damaged.append(f"{file} {problem}")
            else:
                frames.append(frame)
        if self.damaged:
            message = (f"{len(self.damaged)} damaged result file(s) in {self.units_dir}:\n  "
                       + "\n  ".join(self.damaged)
                       + f"\n'ssl-bench resume {self.run_dir}' recomputes the units of this run's plan")
            if damaged == "raise":
                raise DamagedResultsError(message)
            logger.warning(f"ssl-bench: warning: {message}")
        if not frames:
            return pd.DataFrame(columns=ORDER_FIRST)
        # a column is integer where every file that holds it wrote it as integers
        integer = {column for frame in frames for column in frame.attrs[INTEGER_COLUMNS_ATTR]}
        integer -= {column for frame in frames for column in integer & set(frame.columns)
                    if column not in frame.attrs[INTEGER_COLUMNS_ATTR] and frame[column].notna().any()}
        for frame in frames:
            frame.attrs = {}  # replaced below; concat would copy each frame's attrs for nothing
        rows = pd.concat(frames, ignore_index=True, sort=False)
        rows.attrs = {INTEGER_COLUMNS_ATTR: integer}
        return rows

    def gather(self, damaged: str = "raise", rows: pd.DataFrame | None = None) -> Path:
        """Write results.csv (all rows of all finished units, or ``rows`` already loaded) atomically."""
        path = self.run_dir / "results.csv"
        atomic_write(path, csv_text(self.load(damaged) if rows is None else rows, index=False))
        return path
