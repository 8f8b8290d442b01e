"""Scaling curves of swept models (benchmark.sweeps): per task and layer, the headline metric
against each sweep axis, one line per layer, with the spread over seeds where a sweep repeats a
point over a seed axis (or a run holds replicate rows): Goyal et al.'s Figures 1-3 from a run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from .plugin_api import ReportItem
from .errors import BenchmarkError
from .paths import inside
from .tables import aggregate_cells
from .sweeps import AXIS_PREFIX, SEED_AXES, SWEEP_COLUMN, axis_label, expand_models, sweep_columns

CURVE_COLUMNS = ["sweep", "axis", "fixed", "task", "metric", "layer", "x", "mean", "std", "n", "log_axis"]


def sweep_annotations(run_dir: Path) -> dict[str, dict]:
    """model name -> its sweep columns, read from the run's own config copy (rows written before
    the runner recorded them, or by another version, get them here). {} when the run has none."""
    from .config import load_yaml, pretrainer_defaults

    try:
        suite = json.loads((run_dir / "invocation.json").read_text())["suite"]
        models = (load_yaml(run_dir / "config.yaml").get("suites") or {})[suite].get("models") or {}
        expanded = expand_models(models, f"{run_dir / 'config.yaml'}: suites.{suite}.models",
                                 pretrainer_defaults(models))
    except (BenchmarkError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: sweep_columns(sweep) for name, _, sweep in expanded if sweep}


def annotate(df: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``df`` with the sweep columns filled in for the rows of swept models that lack them."""
    annotations = sweep_annotations(run_dir)
    if df.empty or not annotations:
        return df
    df = df.copy()
    for model, columns in annotations.items():
        mask = df["model"] == model
        for column, value in columns.items():
            if column not in df:
                df[column] = pd.Series(pd.NA, index=df.index, dtype=object)
            df.loc[mask & df[column].isna(), column] = value
    return df


def _numeric(values) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def log_axis(values) -> bool:
    """A log axis where the values are numbers > 0 spanning a factor of 4 or more (data sizes,
    permutation-set sizes), as the paper draws them."""
    numbers = _numeric(values)
    return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) >= 4


def scaling_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The data of the scaling figures: one row per (sweep, axis, values of the other axes, task,
    metric, layer, axis value) with the mean, sample std (ddof 1; 0 for one value) and count over
    the seed axes and repeated rows. Low-shot rows (per k) are left out; of a training task's
    evaluations the reported (best) one is kept."""
    from .rows import headline_rows, section_label, text_column

    if df.empty or SWEEP_COLUMN not in df:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = headline_rows(df)
    rows = rows[text_column(rows, "k").eq("") & text_column(rows, "evaluation").isin(["", "best"])
                & rows[SWEEP_COLUMN].notna()]
    backend = text_column(rows, "backend")  # a panel per cost selection and detection backend: never mixed
    rows = rows.assign(task=section_label(rows) + backend.where(backend.eq(""), " [" + backend + "]"))
    out = []
    for sweep, sub in rows.groupby(SWEEP_COLUMN, sort=False):
        axes = [c for c in sub.columns if c.startswith(AXIS_PREFIX) and sub[c].notna().any()]
        positions = [a for a in axes if axis_label(a[len(AXIS_PREFIX):]) not in SEED_AXES]
        for axis in positions:
            others = [a for a in positions if a != axis]
            keyed = sub.assign(_x=sub[axis].astype(str),
                               _fixed=sub[others].astype(str).agg(", ".join, axis=1) if others else "")
            for fixed, group in keyed.groupby("_fixed", sort=False):
                values = list(dict.fromkeys(group[axis]))
                if len(values) < 2:
                    continue
                numbers = _numeric(values)
                order = sorted(values, key=float) if numbers else values
                label = ", ".join(f"{axis_label(o[len(AXIS_PREFIX):])}={v}"
                                  for o, v in zip(others, fixed.split(", "))) if others else ""
                log = log_axis(values)
                # a point repeated over the seed axes (other models) or replicates: their mean, std and n
                stats = aggregate_cells(group, ["task", "metric", "layer", "_x"], over=["model", "replicate"],
                                        what=f"scaling curve of sweep {sweep!r} along {axis}")
                for s in stats.to_dict("records"):
                    out.append({"sweep": sweep, "axis": axis[len(AXIS_PREFIX):], "fixed": label, "task": s["task"],
                                "metric": s["metric"], "layer": s["layer"], "x": s["_x"], "mean": s["mean"],
                                "std": s["std"], "n": int(s["n"]), "log_axis": log,
                                "_order": [str(v) for v in order].index(s["_x"])})
    if not out:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    curves = pd.DataFrame(out)
    # a task the sweep's points did not all run (a task's `models:` list) has no curve
    points = curves.groupby(["sweep", "axis", "fixed", "task", "metric"], sort=False)["x"].transform("nunique")
    curves = curves[points >= 2]
    if curves.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    curves = curves.sort_values(["sweep", "axis", "fixed", "task", "metric", "layer", "_order"], kind="stable")
    return curves.drop(columns="_order").reset_index(drop=True)


def plot_scaling(df: pd.DataFrame, run_dir: Path) -> list[ReportItem]:
    """One figure per (sweep, axis, values of the other axes): a panel per task and metric, metric
    vs the axis (log where it fits), one line per layer, shaded +-1 std where points repeat."""
    curves = scaling_curves(df)
    if curves.empty:
        return []
    from .rows import figure_is_current, figure_key

    items = []
    for (sweep, axis, fixed), figure in curves.groupby(["sweep", "axis", "fixed"], sort=False):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"scaling_{sweep}_{axis_label(axis)}" + (f"_{fixed}" if fixed else ""))
        path = inside(run_dir, stem[:120] + ".png")
        key = figure_key(figure, "scaling curves", __file__)
        if not figure_is_current(path, key):  # redrawn only when its curves changed
            _draw_scaling(figure, sweep, axis, fixed, path, key)
        items.append(ReportItem(caption=f"Sweep '{sweep}': metric vs {axis}" + (f" at {fixed}" if fixed else "")
                                + ", one line per layer" + (", log axis" if bool(figure["log_axis"].iloc[0]) else ""),
                                path=path))
    return items


def _draw_scaling(figure: pd.DataFrame, sweep: str, axis: str, fixed: str, path: Path, key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .rows import save_figure

    panels = list(figure.groupby(["task", "metric"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, ((task, metric), panel) in zip(axes[0], panels):
        numeric = _numeric(panel["x"])
        for layer, line in panel.groupby("layer", sort=False):
            x = [float(v) for v in line["x"]] if numeric else list(line["x"])
            ax.plot(x, line["mean"], marker="o", label=layer)
            if (line["n"] > 1).any():
                ax.fill_between(x, line["mean"] - line["std"], line["mean"] + line["std"], alpha=0.2)
        if bool(panel["log_axis"].iloc[0]):
            ax.set_xscale("log")
            ticks = sorted({float(v) for v in panel["x"]})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_ylabel(metric + (" (mean +- std over seeds)" if (panel["n"] > 1).any() else ""))
        ax.set_title(f"{sweep}: {task}" + (f" ({fixed})" if fixed else ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="layer")
    fig.tight_layout()
    save_figure(fig, path, key)
