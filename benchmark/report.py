"""Leaderboards from a run directory: markdown + CSV pivots (models x task/layer) and a PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .svm.protocol import TEST_SELECTED
from .paths import disk_full, inside, is_disk_full, temporary_path
from .report_datasets import across_datasets_lines
from .results import ResultStore, atomic_write_text

# normals: angular errors in degrees (lower is better) and the share of pixels within 11.25 degrees
HEADLINE_METRICS = ("mAP", "top1", "mAP_mean", "top1_mean", "mean_error", "median_error", "within_11.25")


def _text(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df:
        return pd.Series("", index=df.index)
    return df[column].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)


def headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate rows (no per-class or per-sample breakdown) of the metrics a leaderboard shows."""
    if df.empty:
        return df
    mask = df["metric"].isin(HEADLINE_METRICS) & _text(df, "class").eq("") & _text(df, "sample").eq("")
    return df[mask]


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds 'section' (task, plus the cost selection where a task reports several) and 'column'."""
    selection = _text(rows, "cost_selection")
    several = selection.groupby(rows["task"]).transform("nunique") > 1
    section = rows["task"].where(~several, rows["task"] + " [cost: " + selection + "]")
    k = _text(rows, "k")
    evaluation = _text(rows, "evaluation")  # training tasks report the best and the final evaluation
    column = (section + "/" + _text(rows, "layer") + k.where(k.eq(""), " k=" + k) + ":" + rows["metric"]
              + evaluation.where(evaluation.eq(""), " (" + evaluation + ")"))
    return rows.assign(section=section, column=column)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """models x (task, layer[, k]) table of headline metrics, columns in run order."""
    rows = headline_rows(df)
    if rows.empty:
        return pd.DataFrame()
    rows = _labelled(rows)
    table = rows.pivot_table(index="model", columns="column", values="value", aggfunc="mean", sort=False)
    model_order = list(dict.fromkeys(rows["model"]))
    column_order = list(dict.fromkeys(rows["column"]))
    return table.reindex(index=model_order, columns=column_order)


def convergence_notes(df: pd.DataFrame) -> list[str]:
    if "not_converged" not in df or df.empty:
        return []
    rows = headline_rows(df)
    rows = rows[pd.to_numeric(rows["not_converged"], errors="coerce").fillna(0) > 0]
    rows = rows.drop_duplicates(["model", "task", "layer"])
    return [f"- {r.model} {r.task}/{r.layer}: {int(r.not_converged)} of {int(r.fits)} SVM fits stopped at "
            f"the iteration limit without reaching the stopping tolerance"
            f"{f' (solver {r.solver})' if isinstance(getattr(r, 'solver', None), str) else ''}"
            for r in rows.itertuples()]


def skipped_notes(df: pd.DataFrame) -> list[str]:
    if df.empty:
        return []
    rows = df[df["metric"] == "skipped"].drop_duplicates(["task", "k"])
    return [f"- {r.task}: {r.note}" for r in rows.itertuples()]


def plot_layers(df: pd.DataFrame, path: Path) -> Path | None:
    rows = headline_rows(df)
    # one value per layer: no low-shot k, and of a training task's evaluations the reported (best)
    rows = rows[_text(rows, "k").eq("") & _text(rows, "evaluation").isin(["", "best"])]
    if rows.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(rows.groupby(["task", "metric"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, ((task, metric), sub) in zip(axes[0], groups):
        layers = list(dict.fromkeys(sub["layer"]))
        for model, per_model in sub.groupby("model", sort=False):
            values = per_model.groupby("layer")["value"].mean().reindex(layers)
            ax.plot(layers, values.values, marker="o", label=model)
        ax.set_title(f"{task}")
        ax.set_xlabel("layer")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = temporary_path(path, keep_suffix=True)
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise
    finally:
        plt.close(fig)


def plot_lowshot(df: pd.DataFrame, run_dir: Path) -> list[Path]:
    """Per low-shot task: mean metric vs k (log axis), one line per model and layer, shaded 95 %
    confidence interval over samples; one panel per cost selection."""
    rows = headline_rows(df)
    rows = rows[_text(rows, "k").ne("")]
    if rows.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ci = df[df["metric"].astype(str).str.endswith("_ci95")]
    for task, sub in rows.groupby("task", sort=False):
        selections = list(dict.fromkeys(_text(sub, "cost_selection")))
        fig, axes = plt.subplots(1, len(selections), figsize=(6 * len(selections), 4.2), squeeze=False)
        for ax, selection in zip(axes[0], selections):
            panel = sub[_text(sub, "cost_selection") == selection]
            for (model, layer, metric), line in panel.groupby(["model", "layer", "metric"], sort=False):
                line = line.assign(k=pd.to_numeric(line["k"])).sort_values("k")
                half = ci[(ci.task == task) & (ci.model == model) & (ci.layer == layer)
                          & (_text(ci, "cost_selection") == selection) & (ci.metric == metric.replace("_mean", "_ci95"))]
                half = half.assign(k=pd.to_numeric(half["k"])).set_index("k")["value"].reindex(line["k"]).fillna(0)
                ax.plot(line["k"], line["value"], marker="o", label=f"{model} {layer}")
                ax.fill_between(line["k"], line["value"] - half.values, line["value"] + half.values, alpha=0.2)
            ax.set_xscale("log", base=2)
            ticks = sorted(pd.to_numeric(panel["k"]).unique())
            ax.set_xticks(ticks, [str(int(t)) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("k (positives per class)")
            ax.set_ylabel(panel["metric"].iloc[0].replace("_mean", "") + " (mean over samples, 95 % CI)")
            title = "cost selected on the TEST set (reference)" if selection == TEST_SELECTED else f"cost: {selection}"
            ax.set_title(f"{task}: {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = inside(run_dir, f"{task}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def write_report(run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    store = ResultStore(run_dir)
    df = store.load(damaged="skip")  # intact units still make a leaderboard; the damaged are listed
    table = leaderboard(df)
    paths = {"results": store.gather(rows=df), "csv": run_dir / "leaderboard.csv", "md": run_dir / "leaderboard.md"}
    atomic_write_text(paths["csv"], table.to_csv())
    lines = [f"# Leaderboard: {run_dir.name}", ""]
    if table.empty:
        lines.append("No finished results yet.")
    else:
        for section, columns in _columns_by_task(table).items():
            # models a task did not run for (a task's `models:` list) are left out of its table
            sub = table[columns].rename(columns=lambda c: c.split("/", 1)[1]).dropna(how="all")
            lines += [f"## {section}", ""]
            if TEST_SELECTED in section:
                lines += ["> The reference protocol picks this cost on the TEST set (argmax of mean test "
                          "mAP): optimistic numbers, kept for comparison with published results.", ""]
            lines += [sub.to_markdown(floatfmt=".2f"), ""]
        lines += across_datasets_lines(df)
        lines += _protocol_lines(df)
    damaged = [f"- {problem}" for problem in store.damaged]
    if damaged:
        damaged.append(f"\nTheir units count as not done: `ssl-bench resume {run_dir}` recomputes them.")
    for title, notes in (("Skipped", skipped_notes(df)), ("Convergence warnings", convergence_notes(df)),
                         ("Damaged result files (left out)", damaged)):
        if notes:
            lines += ["", f"## {title}", ""] + notes
    png = plot_layers(df, run_dir / "leaderboard.png")
    if png:
        paths["png"] = png
    for path in plot_lowshot(df, run_dir):
        paths[path.stem] = path
    figures = [p.name for k, p in paths.items() if p.suffix == ".png"]
    if figures:
        lines += ["", "Figures: " + ", ".join(figures)]
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    return paths


def _columns_by_task(table: pd.DataFrame) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = {}
    for column in table.columns:
        by_task.setdefault(column.split("/", 1)[0], []).append(column)
    return by_task


def _protocol_lines(df: pd.DataFrame) -> list[str]:
    rows = headline_rows(df)
    lines = ["## How these numbers were made", ""]
    for task, sub in rows.groupby("task", sort=False):
        first = sub.iloc[0]
        details = [f"{col}={first[col]}" for col in ("cost_list", "solver", "schedule", "batch_size", "n_train", "n_test")
                   if col in sub and pd.notna(first.get(col)) and first.get(col) != ""]
        for column, label in (("cost_selection", "cost selection"), ("evaluation", "evaluations")):
            values = [v for v in dict.fromkeys(_text(sub, column)) if v]
            if values:
                details.append(f"{label}: " + ", ".join(values))
        lines.append(f"- {task}: " + ", ".join(details))
    meta = df.iloc[0]
    lines.append(f"- ssl-bench {meta.get('ssl_bench_version')} at git {meta.get('git_sha')}, "
                 f"device {meta.get('device')}, seed {meta.get('seed')}")
    return lines
