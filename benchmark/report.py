"""Leaderboards from a run directory: markdown + CSV pivots (models x task/layer) and a PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .results import ResultStore, atomic_write_text

HEADLINE_METRICS = ("mAP", "top1")


def headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate rows (no per-class breakdown) of the metrics a leaderboard shows."""
    if df.empty:
        return df
    mask = df["metric"].isin(HEADLINE_METRICS) & df["class"].fillna("").eq("")
    return df[mask]


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """models x (task, layer) table of headline metrics, layers in run order."""
    rows = headline_rows(df)
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(column=rows["task"] + "/" + rows["layer"].fillna("").astype(str) + ":" + rows["metric"])
    table = rows.pivot_table(index="model", columns="column", values="value", aggfunc="mean", sort=False)
    model_order = list(dict.fromkeys(rows["model"]))
    column_order = list(dict.fromkeys(rows["column"]))
    return table.reindex(index=model_order, columns=column_order)


def convergence_notes(df: pd.DataFrame) -> list[str]:
    if "not_converged" not in df or df.empty:
        return []
    rows = headline_rows(df)
    rows = rows[pd.to_numeric(rows["not_converged"], errors="coerce").fillna(0) > 0]
    return [f"- {r.model} {r.task}/{r.layer}: {int(r.not_converged)} of {int(r.fits)} SVM fits hit "
            f"the iteration limit (max_iter) without converging" for r in rows.itertuples()]


def plot_layers(df: pd.DataFrame, path: Path) -> Path | None:
    rows = headline_rows(df)
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    store = ResultStore(run_dir)
    df = store.load()
    table = leaderboard(df)
    paths = {"results": store.gather(), "csv": run_dir / "leaderboard.csv", "md": run_dir / "leaderboard.md"}
    atomic_write_text(paths["csv"], table.to_csv())
    lines = [f"# Leaderboard: {run_dir.name}", ""]
    if table.empty:
        lines.append("No finished results yet.")
    else:
        for task, columns in _columns_by_task(table).items():
            sub = table[columns].rename(columns=lambda c: c.split("/", 1)[1])
            lines += [f"## {task}", "", sub.to_markdown(floatfmt=".2f"), ""]
        lines += _protocol_lines(df)
    notes = convergence_notes(df)
    if notes:
        lines += ["", "## Convergence warnings", ""] + notes
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    png = plot_layers(df, run_dir / "leaderboard.png")
    if png:
        paths["png"] = png
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
        details = [f"{col}={first[col]}" for col in ("cost_list", "cost_selection", "n_train", "n_test")
                   if col in sub and pd.notna(first.get(col))]
        lines.append(f"- {task}: " + ", ".join(details))
    meta = df.iloc[0]
    lines.append(f"- ssl-bench {meta.get('ssl_bench_version')} at git {meta.get('git_sha')}, "
                 f"device {meta.get('device')}, seed {meta.get('seed')}")
    return lines
