"""``ssl-bench check``: compare a run's results with stored reference results (CI regressions).

Rows are joined on (model, task, dataset, layer, metric, class, k, sample, cost_selection,
evaluation). A
metric moved beyond its tolerance is a regression; a reference row the run lacks is missing; a
run row the reference lacks is new (reported, not a failure). Tolerance: ``--tolerance`` for
everything when given; otherwise, for low-shot means, the larger of the base tolerance and the
reference's 95 % interval over samples, and the base tolerance (0.5 points) for the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BenchmarkError
from .results import ResultStore, atomic_write_text

JOIN = ["model", "task", "dataset", "layer", "metric", "class", "k", "sample", "cost_selection", "evaluation"]
BASE_TOLERANCE = 0.5
SPREAD_SUFFIXES = ("_std", "_ci95")  # spreads describe the samples; they are not scores to hold
REFERENCE_COLUMNS = JOIN + ["value", "ssl_bench_version", "git_sha", "device"]


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for column in JOIN:
        df[column] = df[column].fillna("").astype(str).str.replace(r"\.0$", "", regex=True) if column in df else ""
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df[~df["metric"].astype(str).str.endswith(SPREAD_SUFFIXES) & (df["metric"] != "skipped")]


def tolerances(reference: pd.DataFrame, tolerance: float | None) -> pd.Series:
    if tolerance is not None:
        return pd.Series(tolerance, index=reference.index)
    tol = pd.Series(BASE_TOLERANCE, index=reference.index)
    ci = reference[reference["metric"].str.endswith("_ci95")]
    if not ci.empty:
        ci_key = ci.assign(metric=ci["metric"].str.replace("_ci95", "_mean"))
        spread = ci_key.set_index(JOIN)["value"]
        keyed = reference.set_index(JOIN).index
        matched = spread.reindex(keyed).to_numpy()
        tol = pd.Series(np.fmax(tol.to_numpy(), np.nan_to_num(matched, nan=0.0)), index=reference.index)
    return tol


def compare(run: pd.DataFrame, reference: pd.DataFrame, tolerance: float | None = None) -> dict[str, pd.DataFrame]:
    ref_all = reference.copy()
    for column in JOIN:
        if column not in ref_all:
            ref_all[column] = ""
        ref_all[column] = ref_all[column].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
    ref_all["value"] = pd.to_numeric(ref_all["value"], errors="coerce")
    ref_all["tolerance"] = tolerances(ref_all, tolerance)
    ref = _normalise(ref_all).assign(tolerance=ref_all["tolerance"])
    new = _normalise(run)
    merged = ref.merge(new[JOIN + ["value"]], on=JOIN, how="outer", suffixes=("_reference", "_run"), indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    both["delta"] = both["value_run"] - both["value_reference"]
    nan_changed = both["value_run"].isna() != both["value_reference"].isna()
    moved = (both["delta"].abs() > both["tolerance"]) | nan_changed
    columns = JOIN + ["value_reference", "value_run", "delta", "tolerance"]
    return {
        "regressions": both[moved][columns],
        "missing": merged[merged["_merge"] == "left_only"][JOIN + ["value_reference"]],
        "new": merged[merged["_merge"] == "right_only"][JOIN + ["value_run"]],
        "compared": both,
    }


def _table(df: pd.DataFrame, limit: int = 50) -> str:
    shown = df.loc[:, (df != "").any(axis=0)].head(limit)
    text = shown.to_markdown(index=False, floatfmt=".3f")
    return text + (f"\n\n... and {len(df) - limit} more" if len(df) > limit else "")


def run_check(run_dir: Path, against: Path, tolerance: float | None = None, update: bool = False) -> int:
    run = ResultStore(run_dir).load()
    if run.empty:
        raise BenchmarkError(f"{run_dir} has no results (units/*.csv); run the suite first")
    if update:
        columns = [c for c in REFERENCE_COLUMNS if c in run]
        atomic_write_text(Path(against), run[columns].to_csv(index=False))
        print(f"wrote {len(run)} reference rows to {against}")
        return 0
    if not Path(against).is_file():
        raise BenchmarkError(f"reference file {against} does not exist; create it from a trusted run with "
                             f"'ssl-bench check {run_dir} --against {against} --update'")
    reference = pd.read_csv(against, dtype=str, keep_default_na=False)
    result = compare(run, reference, tolerance)
    print(f"## ssl-bench check: {run_dir} against {against}\n")
    print(f"{len(result['compared'])} metrics compared, {len(result['regressions'])} moved beyond tolerance, "
          f"{len(result['missing'])} missing, {len(result['new'])} new\n")
    for title in ("regressions", "missing", "new"):
        if len(result[title]):
            print(f"### {title}\n\n{_table(result[title])}\n")
    failed = len(result["regressions"]) or len(result["missing"])
    print("RESULT: " + ("FAIL" if failed else "OK"))
    return 1 if failed else 0
