"""The low-shot family's report figure: metric vs k per model and layer, with the interval over
samples (the hook ``Task.report_figures`` of both low-shot tasks)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.plugin_api import ReportItem
from benchmark.paths import inside
from benchmark.rows import figure_is_current, figure_key, headline_rows, save_figure, text_column
from benchmark.tables import one_row_per_cell
from benchmark.svm import protocol
from benchmark.svm.protocol import TEST_SELECTED


def lowshot_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The data of the figure: one row per (task, cost selection, model, layer, metric, k) with the
    mean over samples and the half-width of its 95 % interval (0 where none was recorded)."""
    rows = headline_rows(df)
    rows = rows[text_column(rows, "k").ne("")]
    if rows.empty:
        return pd.DataFrame(columns=["task", "cost_selection", "model", "layer", "metric", "k", "value", "ci95"])
    ci = df[df["metric"].astype(str).str.endswith("_ci95")]
    out = []
    for task, sub in rows.groupby("task", sort=False):
        for selection in dict.fromkeys(text_column(sub, "cost_selection")):
            panel = sub[text_column(sub, "cost_selection") == selection]
            for (model, layer, metric), line in panel.groupby(["model", "layer", "metric"], sort=False):
                what = f"{task} figure, {model} {layer} {metric}" + (f" (cost: {selection})" if selection else "")
                line = one_row_per_cell(line.assign(k=pd.to_numeric(line["k"])).sort_values("k"), "metric", "k",
                                        what=what).iloc[0]
                half = ci[(ci.task == task) & (ci.model == model) & (ci.layer == layer)
                          & (text_column(ci, "cost_selection") == selection)
                          & (ci.metric == metric.replace("_mean", "_ci95"))]
                half = (one_row_per_cell(half.assign(k=pd.to_numeric(half["k"])), "metric", "k", what=what + " 95 % CI")
                        .iloc[0].reindex(line.index).fillna(0) if len(half) else pd.Series(0.0, index=line.index))
                out.append(pd.DataFrame({"task": task, "cost_selection": selection, "model": model, "layer": layer,
                                         "metric": metric, "k": line.index.values, "value": line.values,
                                         "ci95": half.values}))
    return pd.concat(out, ignore_index=True)


def plot_lowshot(df: pd.DataFrame, run_dir: Path) -> list[Path]:
    """Per low-shot task: mean metric vs k (log axis), one line per model and layer, shaded 95 %
    confidence interval over samples; one panel per cost selection. A task's figure is redrawn only
    when its rows changed (``benchmark.rows.figure_is_current``)."""
    # a task's curves come from its own rows with a k and its intervals alone
    inputs = df[text_column(df, "k").ne("") | df["metric"].astype(str).str.endswith("_ci95")] if not df.empty else df
    tasks = list(dict.fromkeys(headline_rows(inputs)["task"])) if not inputs.empty else []
    paths = {task: inside(run_dir, f"{task}.png") for task in tasks}
    keys = {task: figure_key(inputs[inputs["task"] == task], "low-shot curves", __file__, protocol.__file__)
            for task in tasks}
    stale = [task for task in tasks if not figure_is_current(paths[task], keys[task])]
    curves = lowshot_curves(df[df["task"].isin(stale)]) if stale else pd.DataFrame()
    if curves.empty:
        return list(paths.values())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, sub in curves.groupby("task", sort=False):
        selections = list(dict.fromkeys(sub["cost_selection"]))
        fig, axes = plt.subplots(1, len(selections), figsize=(6 * len(selections), 4.2), squeeze=False)
        for ax, selection in zip(axes[0], selections):
            panel = sub[sub["cost_selection"] == selection]
            for (model, layer, _metric), line in panel.groupby(["model", "layer", "metric"], sort=False):
                ax.plot(line["k"], line["value"], marker="o", label=f"{model} {layer}")
                ax.fill_between(line["k"], line["value"] - line["ci95"], line["value"] + line["ci95"], alpha=0.2)
            ax.set_xscale("log", base=2)
            ticks = sorted(panel["k"].unique())
            ax.set_xticks(ticks, [str(int(t)) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("k (positives per class)")
            ax.set_ylabel(panel["metric"].iloc[0].replace("_mean", "") + " (mean over samples, 95 % CI)")
            title = "cost selected on the TEST set (reference)" if selection == TEST_SELECTED else f"cost: {selection}"
            ax.set_title(f"{task}: {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, paths[task], keys[task])
    return list(paths.values())


class LowShotReport:
    """Mixed into both low-shot tasks: their report figure."""

    @classmethod
    def report_figures(cls, rows: pd.DataFrame, out_dir: Path) -> list[ReportItem]:
        return [ReportItem(caption=f"{path.stem}: mean over samples vs k (log axis), shaded 95 % interval over "
                                   f"the samples; one panel per cost selection", path=path)
                for path in plot_lowshot(rows, out_dir)]
