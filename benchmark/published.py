"""Published numbers as data (results/published/*.csv): loaded, validated, and kept apart from
measured rows. A published row is never a result of a run: it says where it was published and
under which protocol, and the report shows it in its own section, marked as not measured here."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from .errors import ConfigError
from .options import NAME_PATTERN
from .tables import one_row_per_cell

PUBLISHED_DIR = Path(__file__).resolve().parent.parent / "results" / "published"
COLUMNS = ["model", "pretrain_data", "arch", "task", "layer", "metric", "k", "train_set", "value",
           "paper", "table", "page", "url", "protocol", "read_from", "note"]
REQUIRED = ("model", "arch", "task", "metric", "value", "paper", "protocol", "read_from")
KEY = ["model", "pretrain_data", "arch", "task", "layer", "metric", "k", "train_set"]
# metrics in percent; angular errors in degrees
PERCENT_RANGE = (0.0, 100.0)
DEGREE_METRICS = ("mean_error", "median_error")
MARK = "published, not measured here; comparable only on the real datasets"
# the column that tells published rows from measured ones wherever both appear together
ORIGIN_COLUMN = "origin"


def available(root: Path = PUBLISHED_DIR) -> list[str]:
    return sorted(p.stem for p in Path(root).glob("*.csv"))


def resolve(name: str, root: Path = PUBLISHED_DIR) -> Path:
    """A published set by name (``goyal2019``: ``results/published/goyal2019.csv``) or a CSV path."""
    path = Path(name).expanduser()
    if path.suffix == ".csv" and path.is_file():
        return path
    if NAME_PATTERN.fullmatch(name) and (Path(root) / f"{name}.csv").is_file():
        return Path(root) / f"{name}.csv"
    names = ", ".join(available(root)) or "none"
    raise ConfigError(f"--published {name}: no published set of that name in {root} (available: {names}) "
                      f"and no CSV file at that path")


def describe(name: str, root: Path = PUBLISHED_DIR) -> tuple[int, str]:
    """A published set's number of rows (validated) and the first line of its header comment."""
    rows = load_published(name, root)
    comments = [line[1:].strip() for line in resolve(name, root).read_text().splitlines() if line.startswith("#")]
    return len(rows), comments[0] if comments else ""


def load_published(name: str, root: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """The rows of a published set, validated: every required column present, a source and a
    protocol on every row, values finite and in range, no key given twice. Errors name the file,
    the line and the column."""
    path = resolve(name, root)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (binary, or another encoding); a published set is a "
                          f"UTF-8 CSV file (see {PUBLISHED_DIR / 'README.md'})") from None
    lines = text.splitlines()
    comments = sum(1 for line in lines if line.startswith("#"))
    try:
        df = pd.read_csv(io.StringIO(text), comment="#", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; a published file has the columns "
                          f"{', '.join(COLUMNS)} (see {PUBLISHED_DIR / 'README.md'})")
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise ConfigError(f"{path}: unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
    values = []
    for index, row in df.iterrows():
        where = f"{path}, line {index + 2 + comments}"  # header and comment lines come first
        for column in REQUIRED:
            if not row[column].strip():
                raise ConfigError(f"{where}: column '{column}' is empty; every published number needs its "
                                  f"{'source' if column in ('paper', 'read_from') else column}")
        try:
            value = float(row["value"])
        except ValueError:
            raise ConfigError(f"{where}: value {row['value']!r} is not a number") from None
        low, high = (0.0, 180.0) if row["metric"] in DEGREE_METRICS else PERCENT_RANGE
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{where}: value {value} of metric '{row['metric']}' is outside [{low:g}, {high:g}]")
        if row["k"] and not (row["k"].isdigit() and int(row["k"]) >= 1):
            raise ConfigError(f"{where}: k {row['k']!r} must be an integer >= 1 (or empty)")
        values.append(value)
    df["value"] = values
    duplicated = df[df.duplicated(KEY, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        given = ", ".join(f"{k}={first[k]}" for k in KEY if first[k])
        raise ConfigError(f"{path}: the same number is given twice ({given}); "
                          f"keep one row per model, task, layer, metric, k and training set")
    df["source_file"] = path.name
    df[ORIGIN_COLUMN] = "published"
    return df


def published_tables(published: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per (task, published file): a table of model (pretraining data) x layer[/k] values. Files are
    never merged into one table: their protocols differ (see each file's protocol column)."""
    tables = {}
    for (task, source), sub in published.groupby(["task", "source_file"], sort=False):
        column = sub["layer"].where(sub["layer"] != "", sub["train_set"].where(sub["train_set"] != "", "-"))
        column = column + sub["k"].where(sub["k"] == "", " k=" + sub["k"]) + ":" + sub["metric"]
        column = column.where(sub["train_set"] == "" , column + " (" + sub["train_set"] + ")")
        who = sub["model"] + " (" + sub["pretrain_data"] + ")"
        # one layer per model, not the same for all: the source reports each model's best layer
        best_layer = sub["layer"].groupby(who).nunique().max() == 1 and sub["layer"].nunique() > 1
        if best_layer:
            column = column.str.replace(r"^[^ :]+", "best layer", regex=True)
        rows = sub.assign(column=column, who=who)
        table = one_row_per_cell(rows, "who", "column", what=f"published table {task}, {source}")
        if best_layer:
            table.insert(0, "layer", rows.groupby("who", sort=False)["layer"].first().reindex(table.index))
        table.index.name = "model (pretraining data)"
        tables[f"{task}, {Path(source).stem}"] = table
    return tables


def markdown_lines(published: pd.DataFrame, names: list[str]) -> list[str]:
    lines = ["", f"## Published numbers ({MARK})", "",
             f"> From {', '.join(names)} (results/published/): numbers other people published, shown for scale. "
             f"They were not measured by this run and are comparable only on the real datasets with the same "
             f"architecture and protocol; each row's source and protocol are in its CSV file.", ""]
    for task, table in published_tables(published).items():
        shown = table.astype(object).where(table.notna(), "")
        lines += [f"### {task} (published)", "", shown.to_markdown(floatfmt=".2f"), ""]
    return lines
