"""``ssl-bench check``: compare a run's results with stored reference results (CI regressions).

A reference holds, per metric, the value of a trusted run and how far that metric may move on
another machine, and says which rule gives the tolerance:

- ``exact``: the number follows from fixed inputs (a seeded initialisation or a checkpoint file,
  SVMs solved to liblinear's tolerance, seeded low-shot samples). It is compared with the stored
  value within ``EXACT_TOLERANCE``: only rounding of the features may move it. A count (top-1,
  top-5: the share of n scored images) moves in steps of 100 / n points, and rounding can flip an
  image whose two best scores nearly tie; such rows record that step (``metric_step``) and may
  move by one step: one flipped image is rounding, two are a change.
- ``band``: the number is downstream of SGD training (the model's or the task's). Such numbers
  move with the floating-point rounding of the processor, amplified by training, much as they move
  with the training seeds; so the reference measures them over replicate runs (the same suite with
  every training reseeded: ``ssl-bench run --replicate N``) and stores their mean, standard
  deviation, min, max and count. A run passes when it lies within the prediction interval of one
  new run around the replicates' mean: ``max(BAND_FLOOR, t x sqrt(1 + 1/n) x max(std, pooled
  std))``, Student's t at a false-alarm rate of BAND_FALSE_ALARM per band with the pooled degrees
  of freedom, the pooled std being the typical spread of the same kind of number (pooled_std).
- ``aggregate``: per-class and per-sample numbers of a trained model (an AP over a few dozen
  positives, one low-shot draw) are too noisy to hold one by one; they are held through the
  aggregates they make up (mAP, means over samples), which are ``band`` rows. They are compared
  and reported, but never fail a check.
- ``fixed``: a trained number whose spread was not measured (no replicates): ``BASE_TOLERANCE``.
- ``machine``: a trained number that another processor reproduces. The reference records, per row,
  how far runs of the same suite at the same seeds on other machines (or emulated ones: another
  ATen kernel level, oneDNN or MKL instruction set, thread count) moved it (``machine_spread``
  over ``machine_runs``). Where every trained row of a (model, task) stayed within
  ``EXACT_TOLERANCE`` or one count step, that training does not amplify rounding (a ViT's does
  not; a ReLU ResNet's turns it into points within a few steps, see perf/README.md), and its rows
  are held around the stored value within ``MACHINE_TOLERANCE``: a regression of a few points fails.

``--tolerance T`` overrides every rule: each row (aggregate rows included) against its stored
value within T, which with T = 0 asserts that a refactor changed no number on the same machine.

Rows are joined on (model, task, dataset, layer, metric, class, k, sample, cost selection,
evaluation), and on ``backend`` (detection: torchvision or detectron2) where both the run and the
reference carry that column: the two backends' numbers are different metrics, so a detectron2 row
is not covered by a torchvision reference. A reference written before references kept the
backend joins as before (and the check names the backends of the run's rows). A reference row
the run lacks is missing, a run row the reference lacks is uncovered; both fail the check. A
reference is written with a header line that carries its row count and checksum, so a truncated
or damaged file is an error, not a pass.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BenchmarkError
from .paths import atomic_write
from .results import ResultStore
from .row_schema import JOIN, OPTIONAL_JOIN, STEP_COLUMN

EXACT_TOLERANCE = 0.05  # points; what feature rounding across processors may do to an exact number
BAND_FALSE_ALARM = 1e-4  # per band and clean run: the two-sided level of the prediction interval
BAND_FLOOR = 1.0  # points; a band is never narrower (few replicates can agree by chance)
BASE_TOLERANCE = 0.5  # points; trained numbers without a measured band, and format-1 references
# points; a row whose tolerance is wider is "unguarded": a regression of a few points passes it, so
# the check counts such rows and says so instead of calling them OK
GUARDED_WITHIN = 5.0
SPREAD_SUFFIXES = ("_std", "_ci95")  # spreads describe the samples; they are not scores to hold
# points; a (model, task) whose trained rows same-seed runs on other machines reproduced is held
# this close: far above the 0.001 points they moved by (perf/README.md), a third of a 3-point change
MACHINE_TOLERANCE = 1.0
RULES = ("exact", "band", "aggregate", "fixed", "machine")
SPREAD_COLUMNS = ["rule", "tolerance", "n_runs", "mean", "std", "min", "max", "pooled_std", "pooled_dof"]
# optional: references before them have none. spread_tolerance: the tolerance the row's own rule
# gives (its replicates' band), kept while the machine rule holds the row tighter
MACHINE_COLUMNS = ["machine_runs", "machine_spread", "spread_tolerance"]
PROVENANCE_COLUMNS = ["determinism", "ssl_bench_version", "git_sha", "device", "finished_at"]
REFERENCE_COLUMNS = (JOIN + OPTIONAL_JOIN + ["value"] + SPREAD_COLUMNS + MACHINE_COLUMNS + [STEP_COLUMN]
                     + PROVENANCE_COLUMNS)
FORMAT = 2
HEADER = re.compile(r"^# ssl-bench reference: format (\d+), (\d+) rows, sha256 ([0-9a-f]{64})$")


# --- reading, writing and validating ---------------------------------------------------------

def join_keys(*frames: pd.DataFrame) -> list[str]:
    """What rows of these frames are joined on: JOIN, and the optional keys all of them carry."""
    return JOIN + [column for column in OPTIONAL_JOIN if all(column in frame for frame in frames)]


def _keys(df: pd.DataFrame) -> pd.DataFrame:
    """The join columns as comparable strings ('' for absent, '4' for 4.0); an optional key the
    frame lacks stays absent (see join_keys)."""
    df = df.copy()
    for column in JOIN + OPTIONAL_JOIN:
        if column not in df:
            if column in JOIN:
                df[column] = ""
            continue
        text = df[column].astype(object).where(df[column].notna(), "")
        df[column] = text.astype(str).str.replace(r"\.0$", "", regex=True)
    return df


def scored_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that hold scores: spreads over samples and 'skipped' markers are left out."""
    metric = df["metric"].astype(str)
    return df[~metric.str.endswith(SPREAD_SUFFIXES) & (metric != "skipped")]


def _duplicates(df: pd.DataFrame, what: str) -> None:
    keys = join_keys(df)
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        shown = "\n".join("  " + ", ".join(f"{c}={v}" for c, v in row.items() if v != "")
                          for row in dup[keys].head(5).to_dict("records"))
        raise BenchmarkError(f"{what} has {len(dup)} rows with duplicated keys ({', '.join(keys)}); a key must "
                             f"name one number. First ones:\n{shown}")


def _numeric(df: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = pd.to_numeric(df[column].replace("", np.nan), errors="coerce")
    bad = values.isna() & ~df[column].isin(["", "nan", "NaN"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BenchmarkError(f"{where}: column '{column}' holds a non-number, {df[column].iloc[row]!r}, "
                             f"on data row {row + 1}; the file is damaged: rebuild it with --update")
    return values


# the references ssl-bench ships: `--against goyal2019-mini` names results/reference/goyal2019-mini.csv
SHIPPED_REFERENCES = Path(__file__).resolve().parent.parent / "results" / "reference"


def shipped_references() -> list[str]:
    return sorted(p.stem for p in SHIPPED_REFERENCES.glob("*.csv"))


def resolve_reference(against: Path | str) -> Path:
    """A reference file: a path, or the name of a shipped reference (no folder, no suffix)."""
    path = Path(against)
    if not path.exists() and path.parent == Path(".") and not path.suffix:
        shipped = SHIPPED_REFERENCES / f"{path.name}.csv"
        if shipped.is_file():
            return shipped
    return path


def read_reference(path: Path) -> tuple[pd.DataFrame, int]:
    """The reference rows (join columns as strings, numbers as floats) and the file's format."""
    path = Path(path)
    if not path.is_file():
        shipped = ", ".join(shipped_references()) or "none"
        raise BenchmarkError(f"no such reference file: {path}. References shipped with ssl-bench, given by name "
                             f"(--against NAME): {shipped}. To make a new reference from a trusted run: "
                             f"'ssl-bench check RUN_DIR --against {path} --update' (see docs/regression-checks.md)")
    raw = path.read_bytes()
    if not raw.strip():
        raise BenchmarkError(f"reference file {path} is empty; rebuild it with --update")
    first, _, body = raw.partition(b"\n")
    header = HEADER.match(first.decode(errors="replace").strip())
    if header:
        fmt, rows, digest = int(header.group(1)), int(header.group(2)), header.group(3)
        if hashlib.sha256(body).hexdigest() != digest:
            lines = body.count(b"\n") - 1
            raise BenchmarkError(f"reference file {path} is damaged: its header promises {rows} rows with sha256 "
                                 f"{digest[:12]}..., the file holds {lines} data lines that do not match "
                                 f"(truncated or edited). Restore it (git checkout {path}) or rebuild it with --update")
    elif first.startswith(b"#"):
        raise BenchmarkError(f"reference file {path}: unreadable header line {first[:80]!r}; rebuild it with --update")
    else:  # format 1: written before references carried spreads and a checksum
        fmt, rows, body = 1, None, raw
    try:
        df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())  # pandas' messages span lines: the error is one line
        raise BenchmarkError(f"reference file {path} is not a readable CSV ({reason}); "
                             f"rebuild it with --update") from None
    required = JOIN + ["value"] + (SPREAD_COLUMNS if fmt >= 2 else [])
    missing = [c for c in required if c not in df]
    if missing and fmt == 1:  # format 1 files may leave out the newer join columns
        missing = [c for c in missing if c not in ("cost_selection", "evaluation")]
    if missing:
        raise BenchmarkError(f"reference file {path} lacks the column(s) {', '.join(missing)}; it is damaged or not "
                             f"an ssl-bench reference. Rebuild it with --update")
    if rows is not None and len(df) != rows:
        raise BenchmarkError(f"reference file {path} is damaged: its header promises {rows} rows, it holds {len(df)}")
    df = _keys(df)
    _duplicates(df, f"reference file {path}")
    df["value"] = _numeric(df, "value", f"reference file {path}")
    if fmt >= 2:
        for column in ("tolerance", "n_runs", "mean", "std", "min", "max", "pooled_std", "pooled_dof"):
            df[column] = _numeric(df, column, f"reference file {path}")
        if STEP_COLUMN in df:  # references written before rows recorded it lack the column
            df[STEP_COLUMN] = _numeric(df, STEP_COLUMN, f"reference file {path}")
        for column in MACHINE_COLUMNS:
            df[column] = _numeric(df, column, f"reference file {path}") if column in df else np.nan
        unknown = sorted(set(df["rule"]) - set(RULES))
        if unknown:
            raise BenchmarkError(f"reference file {path}: unknown rule(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(RULES)})")
    return df, fmt


def write_reference(frame: pd.DataFrame, path: Path) -> None:
    body = frame[[c for c in REFERENCE_COLUMNS if c in frame]].to_csv(index=False).encode()
    header = f"# ssl-bench reference: format {FORMAT}, {len(frame)} rows, sha256 {hashlib.sha256(body).hexdigest()}\n"
    atomic_write(Path(path), header + body.decode())


def load_run(run_dir: Path, plan=None) -> pd.DataFrame:
    """The scored rows of a run; ``plan`` (the run's own, when the caller has loaded it) saves
    rebuilding it for rows written before they recorded their determinism."""
    run = ResultStore(run_dir).load()
    if run.empty:
        raise BenchmarkError(f"{run_dir} has no results (units/*.csv); run the suite first")
    run = scored_rows(_keys(run))
    _duplicates(run, f"run {run_dir}")
    run = run.copy()
    run["value"] = pd.to_numeric(run["value"], errors="coerce")
    if "determinism" not in run or (run["determinism"].fillna("") == "").any():
        run["determinism"] = _determinism_from_plan(run, plan or _load_plan(run_dir))
    return run


def expected_rows(reference: pd.DataFrame, units, run: pd.DataFrame) -> pd.Series:
    """Which reference rows the run should hold: those of a (model, task) it planned or ran and,
    where that pair's units are layers (one unit per layer), of a layer it planned or ran."""
    planned: dict[tuple, set] = {}
    for unit in units:
        planned.setdefault((unit.model, unit.task), set()).add(unit.unit)
    for model, task, layer in zip(run["model"], run["task"], run["layer"]):
        planned.setdefault((model, task), set()).add(layer)
    layers = reference.groupby(["model", "task"])["layer"].agg(set).to_dict()
    per_layer = {pair for pair, names in planned.items() if names & layers.get(pair, set())}
    return pd.Series([(m, t) in planned and ((m, t) not in per_layer or layer in planned[(m, t)])
                      for m, t, layer in zip(reference["model"], reference["task"], reference["layer"])],
                     index=reference.index)


def _planned_units(run_dir: Path):
    """The run's planned units from its manifest; None for a folder of results without a plan."""
    if not (run_dir / "invocation.json").is_file():
        return None
    from .run.manifest import read_manifest

    return read_manifest(run_dir)


def _load_plan(run_dir: Path):
    from .run import load_plan

    return load_plan(run_dir)


def _determinism_from_plan(run: pd.DataFrame, plan) -> pd.Series:
    """Rows written before they recorded it: derived from the run's own plan, as the runner does."""
    from .run import unit_trains

    suite = plan.suite
    trains = {(m.name, t.name): unit_trains(suite, m.name, t.name) for m in suite.models for t in suite.tasks}
    recorded = run["determinism"].fillna("") if "determinism" in run else pd.Series("", index=run.index)
    derived = [("trained" if trains.get((m, t), True) else "exact") for m, t in zip(run["model"], run["task"])]
    return recorded.where(recorded != "", pd.Series(derived, index=run.index))


# --- building a reference with spreads -------------------------------------------------------

def band_multiplier(n_runs: pd.Series, dof: pd.Series) -> pd.Series:
    """Half-width of the prediction interval of one new run, in standard deviations: Student's t
    at BAND_FALSE_ALARM with the spread's degrees of freedom, times sqrt(1 + 1/n) for the mean's own
    uncertainty. Few measurements give wide bands: 3 runs pooled over 2 rows (4 dof) give 26.6 std,
    pooled over 40 rows (80 dof) 4.6."""
    from scipy.stats import t

    dof = np.maximum(np.asarray(dof, dtype=float), 1.0)
    return pd.Series(t.ppf(1 - BAND_FALSE_ALARM / 2, dof) * np.sqrt(1 + 1 / np.maximum(n_runs, 1)),
                     index=n_runs.index)


def band_tolerance(std: pd.Series, pooled: pd.Series, n_runs: pd.Series, dof: pd.Series) -> pd.Series:
    return np.fmax(BAND_FLOOR, band_multiplier(n_runs, dof) * np.fmax(std.fillna(0.0), pooled.fillna(0.0)))


POOL_BY = ["task", "metric", "evaluation", "cost_selection"]


def pooled_std(ref: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row, the pooled standard deviation of its kind of number (same task, metric, evaluation
    and cost selection, over models, layers, classes, k and samples; each row's variance weighted
    by its degrees of freedom) and the pooled degrees of freedom: a few replicates can agree by
    chance, so a band is never narrower than the typical spread of its kind."""
    measured = ref[(ref["rule"] != "exact") & (ref["n_runs"] >= 2)]
    keys = [measured[g] for g in POOL_BY]
    dof = (measured["n_runs"] - 1).groupby(keys).sum()
    variance = ((measured["std"] ** 2) * (measured["n_runs"] - 1)).groupby(keys).sum() / dof
    index = pd.MultiIndex.from_frame(ref[POOL_BY])
    return (pd.Series((variance ** 0.5).reindex(index).to_numpy(), index=ref.index),
            pd.Series(dof.reindex(index).to_numpy(), index=ref.index))


def _replicate_rules(ref: pd.DataFrame, exact: pd.Series) -> np.ndarray:
    """The rule each row's runs give: exact, fixed (one run), aggregate (per class / sample), band."""
    per_item = (ref["class"] != "") | (ref["sample"] != "")
    return np.select([exact, ref["n_runs"] < 2, per_item], ["exact", "fixed", "aggregate"], "band")


def _replicate_tolerances(ref: pd.DataFrame, exact_tolerance) -> np.ndarray:
    """The tolerance of each row's rule (set by ``_replicate_rules``) from its stored spreads."""
    return np.select([ref["rule"] == "exact", ref["rule"] == "fixed"], [exact_tolerance, BASE_TOLERANCE],
                     band_tolerance(ref["std"], ref["pooled_std"], ref["n_runs"], ref["pooled_dof"]))


def _rules_and_tolerances(ref: pd.DataFrame, exact: pd.Series, exact_tolerance) -> np.ndarray:
    """Sets each row's rule and pooled spread from its runs (``exact`` rows keep the rule exact) and
    returns its tolerance: ``exact_tolerance`` for exact rows, the band for measured ones."""
    ref["rule"] = _replicate_rules(ref, exact)
    ref["pooled_std"], ref["pooled_dof"] = pooled_std(ref)
    return _replicate_tolerances(ref, exact_tolerance)


def _refuse_moved_exact(run: pd.DataFrame, reference: pd.DataFrame, what: str) -> None:
    """A run that moves an exact number beyond its tolerance is a change: it cannot extend a
    reference as ``what`` (a replicate, a machine run)."""
    moved = compare(run, reference)["regressions"]
    moved = moved[moved["rule"] == "exact"]
    if len(moved):
        key = dict(zip(JOIN, moved[JOIN].iloc[0]))
        raise BenchmarkError(f"the run moves {len(moved)} exact number(s) beyond their tolerance ({key}): that is "
                             f"a change, not {what}'s rounding or spread; it cannot be {what}")


def build_reference(run: pd.DataFrame, replicates: list[pd.DataFrame]) -> pd.DataFrame:
    """The reference rows of ``run`` (replicate 0), with the spread of each trained number over
    ``run`` and the ``replicates`` (runs of the same suite made with ``--replicate N``)."""
    ref = run.copy()
    if "determinism" not in ref:  # results written before rows said so: hold them as trained
        ref["determinism"] = "trained"
    ref["determinism"] = ref["determinism"].replace("", "trained").fillna("trained")
    keys = join_keys(ref, *replicates)
    keyed = ref.set_index(keys)
    values = [keyed["value"]]
    exact_keys = keyed.index[keyed["determinism"] == "exact"]
    for index, other in enumerate(replicates, start=1):
        other = other.set_index(keys)
        shared = other.index.intersection(exact_keys)
        moved = (other.loc[shared, "value"] - values[0].loc[shared]).abs() > 0
        if moved.any():
            key = dict(zip(keys, moved[moved].index[0]))
            raise BenchmarkError(f"replicate run {index} moved a number that its suite declares exact ({key}); a "
                                 f"pretrainer or task that trains must say so (class attribute 'trains = True')")
        values.append(other["value"].reindex(values[0].index))
    table = pd.concat(values, axis=1)
    spread = pd.DataFrame({"n_runs": table.notna().sum(axis=1), "mean": table.mean(axis=1),
                           "std": table.std(axis=1, ddof=1), "min": table.min(axis=1), "max": table.max(axis=1)})
    ref = ref.join(spread.reset_index(drop=True).set_axis(ref.index))
    ref["tolerance"] = _rules_and_tolerances(ref, ref["determinism"] == "exact", EXACT_TOLERANCE)
    exact_rows = ref["rule"] == "exact"
    ref.loc[exact_rows, ["mean", "min", "max"]] = ref.loc[exact_rows, ["value"] * 3].to_numpy()
    ref.loc[exact_rows, ["std", "pooled_std", "pooled_dof"]] = 0.0
    ref["machine_runs"], ref["machine_spread"], ref["spread_tolerance"] = 0.0, np.nan, ref["tolerance"]
    return ref.reset_index(drop=True)


def add_replicate(reference: pd.DataFrame, run: pd.DataFrame) -> pd.DataFrame:
    """``reference`` (format 2) with ``run`` as one more replicate of its trained numbers: each
    trained row's count, mean, standard deviation, min and max take the run's value in, and the
    pooled spreads and tolerances are computed again as ``build_reference`` does, a tolerance never
    getting narrower than it was; stored values and exact rows stay. For a machine whose training
    rounds differently from the ones the replicates came from (another processor: a trained model
    moves as with another seed), so the bands measure that spread too. The run must hold every
    trained row, and its exact rows must pass the reference (they are not spread: a moved exact
    number is a change)."""
    _refuse_moved_exact(run, reference, "a replicate")
    keys = join_keys(reference, run)
    ref = reference.set_index(keys)
    x = run.set_index(keys)["value"].reindex(ref.index)
    trained = ref["rule"] != "exact"
    lacking = trained & x.isna()
    if lacking.any():
        key = dict(zip(keys, ref.index[lacking.to_numpy()][0]))
        raise BenchmarkError(f"the run lacks {int(lacking.sum())} trained row(s) of the reference ({key}): a replicate "
                             f"must run the whole suite")
    n, mean = ref["n_runs"], ref["mean"]
    n_new = n + 1
    mean_new = mean + (x - mean) / n_new
    squares = ref["std"].fillna(0.0) ** 2 * (n - 1) + (x - mean) * (x - mean_new)  # Welford's update
    updates = {"n_runs": n_new, "mean": mean_new, "std": np.sqrt(squares.clip(lower=0) / n),
               "min": np.fmin(ref["min"], x), "max": np.fmax(ref["max"], x)}
    for column, values in updates.items():
        ref.loc[trained, column] = values[trained]
    ref = ref.reset_index()
    exact = ref["rule"] == "exact"
    previous = ref["spread_tolerance"].fillna(ref["tolerance"]) if "spread_tolerance" in ref else ref["tolerance"]
    measured = _rules_and_tolerances(ref, exact, ref["tolerance"])
    ref.loc[exact, ["pooled_std", "pooled_dof"]] = 0.0
    # never narrower than before: one more run adds degrees of freedom, which alone would shrink a
    # band (Student's t), and runs that passed the reference must keep passing it
    ref["tolerance"] = np.fmax(measured, previous)
    return _machine_rule(ref)


def add_rows(reference: pd.DataFrame, run: pd.DataFrame) -> pd.DataFrame:
    """``reference`` with the rows of ``run`` it lacks (a model or task added to the suite), as
    ``build_reference`` makes them from one run: exact rows exact, trained ones ``fixed`` until
    replicates or machine runs measure them. The reference's own rows stay as they are."""
    keys = join_keys(reference, run)
    present = pd.MultiIndex.from_frame(reference[keys])
    new = run[~pd.MultiIndex.from_frame(run[keys]).isin(present)]
    if new.empty:
        raise BenchmarkError("the run has no row that the reference lacks: nothing to add")
    added = build_reference(new, [])
    columns = [c for c in REFERENCE_COLUMNS if c in reference or c in added]
    return pd.concat([reference, added[[c for c in columns if c in added]]], ignore_index=True)[columns]


def add_machine_run(reference: pd.DataFrame, run: pd.DataFrame) -> pd.DataFrame:
    """``reference`` with ``run`` as a run of the same suite at the same seeds on another machine
    (or an emulated one): each trained row it holds records how far it moved from the stored value
    (``machine_spread``, the largest such move, over ``machine_runs``), and the ``machine`` rule is
    set again (module docstring). The run may hold a subset of the suite (``--models``); its exact
    rows must pass the reference, and a run that moves exact numbers is a change, not a machine."""
    _refuse_moved_exact(run, reference, "a machine run")
    keys = join_keys(reference, run)
    ref = reference.set_index(keys)
    x = run.set_index(keys)["value"].reindex(ref.index)
    held = (ref["rule"] != "exact") & x.notna()
    if not held.any():
        raise BenchmarkError("the run holds none of the reference's trained rows: it is not a run of this suite")
    if "finished_at" in ref and "finished_at" in run:  # a stored value's own unit says nothing about a machine
        made = run.set_index(keys)["finished_at"].reindex(ref.index).astype(str)
        held &= ~(made == ref["finished_at"].astype(str)) | ref["finished_at"].isna() | (ref["finished_at"] == "")
        if not held.any():
            raise BenchmarkError("every trained row of the run is the very result the reference stores (the same "
                                 "units): a machine run must be another run, made on another or an emulated processor")
    moved = (x - ref["value"]).abs()
    ref["machine_runs"] = ref["machine_runs"].fillna(0.0) + held.astype(float)
    ref["machine_spread"] = np.fmax(ref["machine_spread"], moved.where(held))
    return _machine_rule(ref.reset_index())


def _machine_rule(ref: pd.DataFrame) -> pd.DataFrame:
    """Trained rows of a (model, task) that machine runs reproduced take the ``machine`` rule; the
    others keep the rule their replicates give (a row leaves ``machine`` when a run moves it)."""
    ref = ref.copy()
    for column in MACHINE_COLUMNS:
        if column not in ref:
            ref[column] = 0.0 if column == "machine_runs" else np.nan
    own_rule = ref["rule"] != "machine"
    ref.loc[own_rule, "spread_tolerance"] = ref.loc[own_rule, "tolerance"]
    trained = ref["rule"] != "exact"
    within = np.fmax(EXACT_TOLERANCE, _steps(ref).fillna(0.0))
    reproduced = (ref["machine_runs"].fillna(0) >= 1) & (ref["machine_spread"] <= within + 1e-9)
    group = [ref["model"], ref["task"]]
    stable = (reproduced | ~trained).groupby(group).transform("all") & trained.groupby(group).transform("any")
    machine = trained & stable
    was_machine = (ref["rule"] == "machine") & ~machine
    if was_machine.any():  # back to the rule its replicates give, and the tolerance it had under it
        ref.loc[was_machine, "rule"] = _replicate_rules(ref, ~trained)[was_machine.to_numpy()]
        back = ref.loc[was_machine]
        rebuilt = pd.Series(_replicate_tolerances(back, EXACT_TOLERANCE), index=back.index)
        ref.loc[was_machine, "tolerance"] = back["spread_tolerance"].fillna(rebuilt)
    ref.loc[machine, "rule"] = "machine"
    ref.loc[machine, "tolerance"] = MACHINE_TOLERANCE
    # A trained row without replicates has no band, only the fixed tolerance: where another machine
    # moved it further, that move is the one spread measured, so the row is held within it (plus a
    # step) rather than failing every other processor; a wide one is counted as unguarded.
    moved = (ref["rule"] == "fixed") & (ref["machine_runs"].fillna(0) >= 1) & (ref["machine_spread"] > ref["tolerance"])
    ref.loc[moved, "tolerance"] = (ref["machine_spread"] + within)[moved]
    return ref


# --- comparing -------------------------------------------------------------------------------

def _format1_tolerances(reference: pd.DataFrame) -> pd.Series:
    """Format 1: BASE_TOLERANCE, or for low-shot means the reference's 95 % interval over samples."""
    tol = pd.Series(BASE_TOLERANCE, index=reference.index)
    ci = reference[reference["metric"].str.endswith("_ci95")]
    if not ci.empty:
        keys = join_keys(reference)
        spread = ci.assign(metric=ci["metric"].str.replace("_ci95", "_mean")).set_index(keys)["value"]
        matched = spread.reindex(reference.set_index(keys).index).to_numpy()
        tol = pd.Series(np.fmax(tol.to_numpy(), np.nan_to_num(matched, nan=0.0)), index=reference.index)
    return tol


def compare(run: pd.DataFrame, reference: pd.DataFrame, tolerance: float | None = None) -> dict[str, pd.DataFrame]:
    """Every reference row against the run. ``reference`` as returned by read_reference (format 2
    columns present) or a bare frame of JOIN + value (format 1 rules)."""
    ref = _keys(reference)
    ref["value"] = pd.to_numeric(ref["value"], errors="coerce")
    if "rule" not in ref:
        ref["rule"], ref["tolerance"], ref["mean"] = "fixed", _format1_tolerances(ref), ref["value"]
    ref = scored_rows(ref)
    if tolerance is not None:
        ref = ref.assign(rule="override", tolerance=float(tolerance), mean=ref["value"])
    run = scored_rows(_keys(run))
    keys = join_keys(ref, run)
    ref = ref.assign(step_reference=_steps(ref))
    run = run.assign(step_run=_steps(run))[keys + ["value", "step_run"]].copy()
    run["value"] = pd.to_numeric(run["value"], errors="coerce")
    merged = ref[keys + ["value", "rule", "tolerance", "mean", "step_reference"]].merge(
        run, on=keys, how="outer", suffixes=("_reference", "_run"), indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    # a count may move by one step on an exact row: the reference's step, or for references written
    # before rows recorded it, the run's (the same dataset split: the join holds the dataset)
    step = both["step_reference"].fillna(both["step_run"]).where(both["rule"].isin(["exact", "machine"]))
    both[STEP_COLUMN] = step
    both["tolerance"] = np.fmax(both["tolerance"], step.fillna(0.0))
    # band and aggregate rows are held around the replicates' mean, the rest around the stored value
    centre = np.where(both["rule"].isin(["band", "aggregate"]), both["mean"], both["value_reference"])
    both["delta"] = both["value_run"] - both["value_reference"]
    both["distance"] = (both["value_run"] - centre).abs()
    nan_changed = both["value_run"].isna() != both["value_reference"].isna()
    # a float round-off of slack on a tolerance; none on tolerance 0, the exact comparison of refactors
    slack = np.where(both["tolerance"] > 0, 1e-9, 0.0)
    both["outside"] = (both["distance"] > both["tolerance"] + slack) | nan_changed
    columns = keys + ["rule", "value_reference", "value_run", "delta", "tolerance"]
    return {
        "regressions": both[both["outside"] & (both["rule"] != "aggregate")][columns],
        "informational": both[both["outside"] & (both["rule"] == "aggregate")][columns],
        "missing": merged[merged["_merge"] == "left_only"][keys + ["value_reference"]],
        "new": merged[merged["_merge"] == "right_only"][keys + ["value_run"]],
        "compared": both,
    }


def unguarded_rows(compared: pd.DataFrame) -> pd.DataFrame:
    """Held rows (not per-class / per-sample aggregates) whose tolerance exceeds GUARDED_WITHIN."""
    return compared[(compared["rule"] != "aggregate") & (compared["tolerance"] > GUARDED_WITHIN)]


def unguarded_summary(unguarded: pd.DataFrame) -> pd.DataFrame:
    """Per task and metric: how many rows are unguarded and their tolerances' range (points)."""
    return (unguarded.groupby(["task", "metric"], sort=False)["tolerance"]
            .agg(rows="count", tolerance_min="min", tolerance_max="max").reset_index()
            .sort_values("tolerance_max", ascending=False, kind="stable"))


def _steps(frame: pd.DataFrame) -> pd.Series:
    """The rows' ``metric_step`` as floats (NaN where a row has none); a step outside (0, 100] is
    not a count's step and is refused, so that no row can widen its own tolerance at will."""
    if STEP_COLUMN not in frame:
        return pd.Series(np.nan, index=frame.index)
    step = pd.to_numeric(frame[STEP_COLUMN].replace("", np.nan), errors="coerce")
    bad = step.notna() & ~((step > 0) & (step <= 100))
    if bad.any():
        row = frame[bad].iloc[0]
        raise BenchmarkError(f"row {row['model']}/{row['task']}/{row['metric']} has "
                             f"{STEP_COLUMN}={row[STEP_COLUMN]!r}: a count's step is 100 / n scored items, "
                             f"in (0, 100]; the results are damaged")
    return step


def backend_notes(run: pd.DataFrame, reference: pd.DataFrame, result: dict[str, pd.DataFrame]) -> list[str]:
    """What a check says about backends: a reference that does not record them while the run's rows
    do, and metrics that the run and the reference both have but made with different backends."""
    notes = []
    run_backends = sorted(set(run["backend"]) - {""}) if "backend" in run else []
    if run_backends and "backend" not in reference:
        notes.append(f"note: the reference records no backend (written before references kept it), so its rows are "
                     f"joined without one, as before; this run's rows were made with backend "
                     f"{', '.join(run_backends)}. A reference rebuilt with --update records it.")
    missing, new = result["missing"], result["new"]
    if "backend" in missing and len(missing) and len(new):
        pairs = missing.merge(new, on=JOIN, suffixes=("_reference", "_run"))
        for (ours, theirs), count in pairs.groupby(["backend_run", "backend_reference"]).size().items():
            notes.append(f"{count} metric(s) of the run were made with backend '{ours or '(none)'}' and are held "
                         f"by the reference with backend '{theirs or '(none)'}': different backends give "
                         f"different metrics, so they are not compared (missing / not covered below); check the "
                         f"run against a reference made with backend '{ours or '(none)'}'.")
    return notes


def _table(df: pd.DataFrame, limit: int = 50) -> str:
    shown = df.loc[:, (df != "").any(axis=0)].head(limit)
    text = shown.to_markdown(index=False, floatfmt=".3f")
    return text + (f"\n\n... and {len(df) - limit} more" if len(df) > limit else "")


# the ways a run can extend a stored reference (``ssl-bench check RUN --against REF --add-...``)
EXTENSIONS = ("replicate", "machine-run", "rows")


def run_check(run_dir: Path, against: Path, tolerance: float | None = None, update: bool = False,
              replicates: list[Path] | None = None, allow_new: bool = False, add_to_spread: bool = False,
              extend: str | None = None) -> int:
    run_dir = Path(run_dir)
    against = Path(against) if update else resolve_reference(against)  # --update writes where it is told
    extend = extend or ("replicate" if add_to_spread else None)
    if tolerance is not None and not (tolerance >= 0):  # also refuses NaN
        raise BenchmarkError(f"--tolerance must be a number >= 0, got {tolerance}")
    if replicates and not update:
        raise BenchmarkError("--replicates builds a reference: use it with --update")
    if extend is not None and extend not in EXTENSIONS:
        raise BenchmarkError(f"unknown reference extension {extend!r} (known: {', '.join(EXTENSIONS)})")
    if extend and (update or tolerance is not None):
        raise BenchmarkError(f"--add-{extend} updates the stored reference: use it without --update and --tolerance")
    # the planned units as the run recorded them: rebuilding the plan would import every plugin
    units = _planned_units(run_dir)
    run = load_run(run_dir)
    if extend:
        reference, fmt = read_reference(against)
        if fmt < 2:
            raise BenchmarkError(f"{against} is a format-1 reference (no spreads); rebuild it with --update "
                                 f"--replicates first")
        add = {"replicate": add_replicate, "machine-run": add_machine_run, "rows": add_rows}[extend]
        extended = add(reference, run)
        write_reference(extended, against)
        print(_extension_summary(extend, run_dir, against, reference, extended))
        return 0
    if update:
        reference = build_reference(run, [load_run(Path(r)) for r in replicates or []])
        write_reference(reference, against)
        counts = reference["rule"].value_counts()
        print(f"wrote {len(reference)} reference rows to {against} from {1 + len(replicates or [])} run(s): "
              + ", ".join(f"{counts.get(rule, 0)} {rule}" for rule in RULES))
        if not replicates and (reference["determinism"] != "exact").any():
            print("note: no --replicates given, so trained numbers get the fixed tolerance "
                  f"({BASE_TOLERANCE} points) instead of a measured band; see docs/regression-checks.md")
        return 0
    reference, fmt = read_reference(against)
    if units is not None:  # rows of models, tasks or layers the run neither planned nor ran
        expected = expected_rows(reference, units, run)
        if not expected.all():
            print(f"{int((~expected).sum())} reference rows belong to models, tasks or layers that {run_dir} neither "
                  f"planned nor ran (--models/--tasks, a task's layers, or a replicate, which reruns only what "
                  f"trains): not expected\n")
        reference = reference[expected]
    result = compare(run, reference, tolerance)
    write_comparison(result["compared"], run_dir / "check.csv")
    print(f"## ssl-bench check: {run_dir} against {against}\n")
    if fmt == 1:
        print(f"note: {against} is a format-1 reference (no spreads, no checksum): fixed tolerances; "
              f"rebuild it with --update --replicates ... for measured bands\n")
    rules = result["compared"]["rule"].value_counts()
    print(f"{len(result['compared'])} metrics compared ("
          + ", ".join(f"{rules[r]} {r}" for r in (*RULES, "override") if r in rules)
          + f"), {len(result['regressions'])} moved beyond tolerance, {len(result['missing'])} missing, "
          f"{len(result['new'])} not covered by the reference\n")
    unguarded = unguarded_rows(result["compared"])
    held = int((result["compared"]["rule"] != "aggregate").sum())
    print(f"guarded: {held - len(unguarded)} of {held} held metrics have a tolerance of at most {GUARDED_WITHIN:g} "
          f"points; {len(unguarded)} are UNGUARDED (wider: a regression of a few points there passes unseen)"
          + (f", by task and metric:\n\n{_table(unguarded_summary(unguarded), limit=30)}" if len(unguarded) else "")
          + "\n")
    counted = result["compared"][STEP_COLUMN].notna()
    if counted.any():
        steps = result["compared"].loc[counted, STEP_COLUMN]
        print(f"{int(counted.sum())} exact rows are counts over scored images: each may move by one image "
              f"(100 / n: {steps.min():.3g} to {steps.max():.3g} points), which rounding can flip on a near-tie\n")
    for note in backend_notes(run, reference, result):
        print(note + "\n")
    for title, key in (("regressions", "regressions"), ("missing from the run", "missing"),
                       ("not covered by the reference", "new")):
        if len(result[key]):
            print(f"### {title}\n\n{_table(result[key])}\n")
    if len(result["new"]) and not allow_new:
        print("The reference covers fewer rows than the run: it is out of date or truncated. If the new rows "
              "are deliberate (a new model or task), rebuild it with --update, or pass --allow-new.\n")
    if len(result["informational"]):
        print(f"{len(result['informational'])} per-class / per-sample numbers of trained models lie outside their "
              f"band; they are held through their aggregates and do not fail the check.\n")
    print(f"per-row comparison (rule, tolerance, distance): {run_dir / 'check.csv'}")
    failed = len(result["regressions"]) or len(result["missing"]) or (len(result["new"]) and not allow_new)
    print("RESULT: " + ("FAIL" if failed else "OK") + (f" ({len(unguarded)} of {held} held metrics unguarded)"
                                                      if len(unguarded) and not failed else ""))
    return 1 if failed else 0


def _extension_summary(extend: str, run_dir: Path, against: Path, before: pd.DataFrame, after: pd.DataFrame) -> str:
    trained = before["rule"] != "exact"
    if extend == "replicate":
        widened = int((after.loc[trained, "tolerance"] > before.loc[trained, "tolerance"] + 1e-12).sum())
        return (f"added {run_dir} to the spreads of {int(trained.sum())} trained rows of {against} "
                f"({widened} tolerances wider, none narrower); stored values and {int((~trained).sum())} exact rows "
                f"unchanged")
    if extend == "rows":
        added = after.iloc[len(before):]
        return (f"added {len(added)} rows of {run_dir} to {against} ({int((added['rule'] == 'exact').sum())} exact, "
                f"{int((added['rule'] != 'exact').sum())} trained without a measured spread yet: add replicates or "
                f"machine runs); its {len(before)} rows unchanged")
    machine = after["rule"] == "machine"
    groups = after.loc[machine, ["model", "task"]].drop_duplicates()
    return (f"added {run_dir} as a machine run to {against}: {int(machine.sum())} trained rows of {len(groups)} "
            f"(model, task) pairs are reproduced across machines and held within {MACHINE_TOLERANCE:g} points "
            f"({', '.join(f'{m}/{t}' for m, t in groups.itertuples(index=False))}); the largest move of the "
            f"others: {after.loc[~machine & (after['rule'] != 'exact'), 'machine_spread'].max():.3g} points")


def write_comparison(compared: pd.DataFrame, path: Path) -> None:
    columns = join_keys(compared) + ["rule", "value_reference", "value_run", "delta", "distance", "tolerance",
                                     STEP_COLUMN, "outside"]
    atomic_write(path, compared[columns].to_csv(index=False))
