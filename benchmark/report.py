"""Leaderboards from a run directory: markdown + CSV pivots (models x task/layer) and a PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import safe_load_text
from .engine import ReportItem
from .html_report import HtmlReport, render
from .published import MARK, load_published, markdown_lines, published_tables
from .errors import BenchmarkError
from .registry import TASKS
from .svm.protocol import TEST_SELECTED
from .report_datasets import across_datasets_lines
from .paths import atomic_write
from .results import ResultStore
from .rows import HEADLINE_METRICS, headline_rows, save_figure, section_label, text_column  # noqa: F401  (the report's helpers)
from .scaling import annotate, plot_scaling
from .tables import one_row_per_cell

def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds 'section' (task, plus the cost selection where a task reports several) and 'column':
    every key column in which a task's headline rows differ is in the label, so that each
    leaderboard cell is one row (``one_row_per_cell`` refuses anything else)."""
    section = section_label(rows)
    k = text_column(rows, "k")
    evaluation = text_column(rows, "evaluation")  # training tasks report the best and the final evaluation
    backend = text_column(rows, "backend")  # detection: two backends' numbers never share (or average in) a column
    dataset = text_column(rows, "dataset")
    datasets = dataset.groupby(rows["task"]).transform("nunique") > 1  # a task instance over several datasets
    column = (section + "/" + text_column(rows, "layer") + k.where(k.eq(""), " k=" + k) + ":" + rows["metric"]
              + evaluation.where(evaluation.eq(""), " (" + evaluation + ")")
              + backend.where(backend.eq(""), " [" + backend + "]")
              + (" {" + dataset + "}").where(datasets & dataset.ne(""), ""))
    return rows.assign(section=section, column=column)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """models x (task, layer[, k]) table of headline metrics, columns in run order; each cell one row."""
    rows = headline_rows(df)
    if rows.empty:
        return pd.DataFrame()
    return one_row_per_cell(_labelled(rows), "model", "column", what="leaderboard")


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
    rows = rows[text_column(rows, "k").eq("") & text_column(rows, "evaluation").isin(["", "best"])]
    if rows.empty:
        return None
    backend = text_column(rows, "backend")  # one panel per detection backend: their numbers are never averaged
    rows = _labelled(rows)
    rows = rows.assign(task=rows["section"] + backend.where(backend.eq(""), " [" + backend + "]"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(rows.groupby(["task", "metric"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, ((task, metric), sub) in zip(axes[0], groups):
        values = one_row_per_cell(sub, "model", "layer", what=f"leaderboard.png panel {task} {metric}")
        for model, per_layer in values.iterrows():
            ax.plot(list(values.columns), per_layer.values, marker="o", label=model)
        ax.set_title(f"{task}")
        ax.set_xlabel("layer")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def write_report(run_dir: str | Path, published: list[str] | None = None) -> dict[str, Path]:
    """leaderboard.md/.csv/.png, the task families' and scaling figures, and report.html.
    ``published``: names of published sets (results/published/NAME.csv) or CSV paths shown in their
    own section of leaderboard.md and report.html, never among the measured rows."""
    run_dir = Path(run_dir)
    published_rows = _load_published(published)  # a bad published file is an error before anything is written
    store = ResultStore(run_dir)
    df = store.load(damaged="skip")  # intact units still make a leaderboard; the damaged are listed
    df = annotate(df, run_dir)  # sweep columns of swept models, from the run's config where rows lack them
    table = leaderboard(df)
    paths = {"results": store.gather(rows=df), "csv": run_dir / "leaderboard.csv", "md": run_dir / "leaderboard.md"}
    atomic_write(paths["csv"], table.to_csv())
    page = HtmlReport(title=f"ssl-bench report: {run_dir.resolve().name}", meta=_meta_line(df))
    lines = [f"# Leaderboard: {run_dir.name}", ""]
    if table.empty:
        lines.append("No finished results yet.")
    else:
        for section, columns in _columns_by_task(table).items():
            # models a task did not run for (a task's `models:` list) are left out of its table
            sub = table[columns].rename(columns=lambda c: c.split("/", 1)[1]).dropna(how="all")
            lines += [f"## {section}", ""]
            warning = ""
            if TEST_SELECTED in section:
                warning = ("The reference protocol picks this cost on the TEST set (argmax of mean test "
                           "mAP): optimistic numbers, kept for comparison with published results.")
                lines += ["> " + warning, ""]
            lines += [sub.to_markdown(floatfmt=".2f"), ""]
            page.leaderboard.append((section, sub, warning))
        lines += across_datasets_lines(df)
        protocol = _protocol_lines(df)
        lines += protocol
        page.notes.append(("How these numbers were made", protocol[2:]))
    damaged = [f"- {problem}" for problem in store.damaged]
    if damaged:
        damaged.append(f"\nTheir units count as not done: `ssl-bench resume {run_dir}` recomputes them.")
    for title, notes in (("Skipped", skipped_notes(df)), ("Convergence warnings", convergence_notes(df)),
                         ("Damaged result files (left out)", damaged)):
        if notes:
            lines += ["", f"## {title}", ""] + notes
            page.notes.append((title, notes))
    png = plot_layers(df, run_dir / "leaderboard.png")
    if png:
        paths["png"] = png
        page.figures.append(("headline metric per layer, one line per model (per-layer curves)", png))
    for item in task_report_items(df, run_dir) + plot_scaling(df, run_dir):
        if item.path is not None:
            paths[item.path.stem] = item.path
            page.figures.append((item.caption, item.path))
        if item.table is not None:
            page.details.append((item.caption, item.table))
    figures = [p.name for k, p in paths.items() if p.suffix == ".png"]
    if published_rows is not None:
        lines += markdown_lines(published_rows, published)
        page.published = list(published_tables(published_rows).items())
        page.published_note = (f"{MARK[0].upper() + MARK[1:]}. From {', '.join(published)}: numbers other people "
                               f"published, kept apart from this run's measured rows; each row's source (paper, "
                               f"table) and protocol are in its CSV file under results/published/.")
    if figures:
        lines += ["", "Figures: " + ", ".join(figures)]
    atomic_write(paths["md"], "\n".join(lines) + "\n")
    page.details = detail_tables(df, task_families(df, run_dir)) + page.details
    page.costs = unit_costs(df)
    page.failures = failed_units(run_dir)
    paths["html"] = run_dir / "report.html"
    atomic_write(paths["html"], render(page))
    return paths


def _load_published(names: list[str] | None) -> pd.DataFrame | None:
    if not names:
        return None
    return pd.concat([load_published(name) for name in names], ignore_index=True)


def _meta_line(df: pd.DataFrame) -> str:
    if df.empty:
        return "no finished units"
    first = df.iloc[0]
    return (f"{df['unit_id'].nunique() if 'unit_id' in df else '?'} finished units, {df['model'].nunique()} models; "
            f"ssl-bench {first.get('ssl_bench_version')} at git {str(first.get('git_sha'))[:12]}, "
            f"device {first.get('device')}")


def detail_tables(df: pd.DataFrame, families: dict[str, list[str]] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """Per instance of a task that declares a ``detail_title`` (``Task.detail_title``): model x
    (mode/layer: metric) of every aggregate row. ``families``: registered task -> instance names
    (``task_families``); by default an instance is its own family. A family whose plugin is not
    installed here is skipped: its rows are still in the leaderboard."""
    if df.empty:
        return []
    family_of = {instance: family for family, instances in (families or {}).items() for instance in instances}
    rows = df[text_column(df, "class").eq("") & text_column(df, "sample").eq("") & text_column(df, "k").eq("")]
    out = []
    for task, sub in rows.groupby("task", sort=False):
        family = family_of.get(task, task)
        if family not in TASKS or not TASKS.get(family).detail_title:
            continue
        title, evaluator_checks = TASKS.get(family).detail_title, TASKS.get(family).evaluator_checks
        # the model's own numbers first, then the evaluator's checks in their own labelled columns:
        # never averaged with the model's
        sub = _labelled(sub.assign(layer=text_column(sub, "layer"), metric=sub["metric"].astype(str)))
        sub = sub.iloc[text_column(sub, "evaluation").isin(evaluator_checks).to_numpy().argsort(kind="stable")]
        table = one_row_per_cell(sub.assign(column=sub["column"].str.split("/", n=1).str[1]), "model", "column",
                                 what=f"report.html {title}: {task}")
        checks = list(dict.fromkeys(v for v in text_column(sub, "evaluation") if v in evaluator_checks))
        note = (f" (columns marked ({'), ('.join(checks)}) are the evaluator's own checks, not the model's numbers)"
                if checks else "")
        out.append((f"{title}: {task}{note}", table))
    return out


COST_COLUMNS = ["wall_time_s", "peak_rss_mb", "peak_gpu_mb", "device", "host", "finished_at", "determinism",
                "config_hash", "weights_sha256", "checkpoint_path", "checkpoint_sha256", "checkpoint_prefix", "git_sha"]


def unit_costs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished unit: its wall time, peak memory, device and provenance, as recorded."""
    if df.empty or "unit_id" not in df:
        return pd.DataFrame()
    columns = [c for c in COST_COLUMNS if c in df]
    costs = df.groupby("unit_id", sort=False)[columns].first()
    costs.index.name = "unit"
    return costs


def failed_units(run_dir: Path) -> list[tuple[str, str]]:
    """(unit, error text) of every unit whose last attempt failed: an error file with no result
    file of the same unit (a later success removes the error file; files of older versions, named
    by slug only, count as resolved when any result file of that slug exists)."""
    units = run_dir / "units"
    if not units.is_dir():
        return []
    results = {p.name[: -len(".csv")].split("--")[0] for p in units.glob("*.csv")}
    out = []
    for error in sorted(units.glob("*.error.txt")):
        stem = error.name[: -len(".error.txt")]
        if (units / f"{stem}.csv").exists() or stem.split("--")[0] in results:
            continue
        try:
            text = error.read_text(errors="replace")
        except OSError as exc:
            text = f"(error file unreadable: {exc})"
        out.append((stem.split("--")[0].replace("__", "/"), text))
    return out


def task_families(df: pd.DataFrame, run_dir: Path) -> dict[str, list[str]]:
    """Registered task name -> the suite's instance names of it found in ``df`` (first appearance
    order). A run directory's suite.yaml says which task each instance is; without it (an older
    run), an instance named like a registered task is that task."""
    kinds: dict[str, str] = {}
    resolved = run_dir / "suite.yaml"
    if resolved.is_file():
        try:
            tasks = (safe_load_text(resolved.read_text(), str(resolved)) or {}).get("tasks") or {}
            kinds = {name: spec.get("task", name) for name, spec in tasks.items() if isinstance(spec, dict)}
        except (BenchmarkError, OSError, AttributeError):
            kinds = {}  # the report still has the leaderboard; figures fall back to the names
    families: dict[str, list[str]] = {}
    for instance in dict.fromkeys(df["task"].astype(str)) if not df.empty else []:
        families.setdefault(kinds.get(instance, instance), []).append(instance)
    return families


def task_report_items(df: pd.DataFrame, run_dir: Path) -> list[ReportItem]:
    """What each task family present in the results adds to the report (``Task.report_figures``).
    A family whose plugin is not installed here is skipped: its rows are still in the tables."""
    items = []
    for family, instances in task_families(df, run_dir).items():
        if family not in TASKS:
            continue
        items += TASKS.get(family).report_figures(df[df["task"].astype(str).isin(instances)], run_dir)
    return items


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
        details = [f"{col}={first[col]}"
                   for col in ("cost_list", "solver", "schedule", "batch_size", "n_train", "n_test")
                   if col in sub and pd.notna(first.get(col)) and first.get(col) != ""]
        for column, label in (("cost_selection", "cost selection"), ("evaluation", "evaluations")):
            values = [v for v in dict.fromkeys(text_column(sub, column)) if v]
            if values:
                details.append(f"{label}: " + ", ".join(values))
        lines.append(f"- {task}: " + ", ".join(details))
    meta = df.iloc[0]
    lines.append(f"- ssl-bench {meta.get('ssl_bench_version')} at git {meta.get('git_sha')}, "
                 f"device {meta.get('device')}, seed {meta.get('seed')}")
    return lines
