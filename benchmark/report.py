"""Leaderboards from a run directory: markdown + CSV pivots (models x task/layer) and a PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import safe_load_text
from .plugin_api import ReportItem
from .html_report import HtmlReport, render
from .published import MARK, load_published, markdown_lines, published_tables
from .errors import BenchmarkError
from .registry import TASKS
from .svm.protocol import TEST_SELECTED
from .report_datasets import across_datasets_lines
from .paths import atomic_write
from .results import ResultStore
from .rows import (HEADLINE_METRICS, figure_is_current, figure_key, headline_rows, labelled,  # noqa: F401  (the report's helpers)
                   save_figure, section_label, text_column)
from .scaling import annotate, plot_scaling
from .best_layer import best_layer_markdown, best_layer_rows, best_layer_table
from .report_significance import LEGEND, markdown_cells, significance_marks
from .tables import one_row_per_cell

def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """models x (task, layer[, k]) table of headline metrics, columns in run order; each cell one row."""
    rows = headline_rows(df)
    if rows.empty:
        return pd.DataFrame()
    return one_row_per_cell(labelled(rows), "model", "column", what="leaderboard")


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
    key = figure_key(rows, "per-layer curves", __file__)
    if figure_is_current(path, key):
        return path
    backend = text_column(rows, "backend")  # one panel per detection backend: their numbers are never averaged
    rows = labelled(rows)
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
    save_figure(fig, path, key)
    return path


BEST_LAYER_NOTE = ("Each model's best layer per task, named beside its number, so that models of different "
                   "architectures (ResNet stages, ViT blocks) are read side by side. The layer is picked on "
                   "the reported metric itself, as Goyal et al. 2019 report best layers: a summary for "
                   "comparison; the per-layer tables above are the full record.")


def write_report(run_dir: str | Path, published: list[str] | None = None) -> dict[str, Path]:
    """leaderboard.md/.csv/.png, the task families' and scaling figures, and report.html.
    ``published``: names of published sets (results/published/NAME.csv) or CSV paths shown in their
    own section of leaderboard.md and report.html, never among the measured rows."""
    run_dir = Path(run_dir)
    published_rows = _load_published(published)  # a bad published file is an error before anything is written
    store = ResultStore(run_dir)
    df = store.load(damaged="skip")  # intact units still make a leaderboard; the damaged are listed
    df = annotate(df, run_dir)  # sweep columns of swept models, from the run's config where rows lack them
    paths = {"results": store.gather(rows=df)}
    damaged = [f"- {problem}" for problem in store.damaged]
    if damaged:
        damaged.append(f"\nTheir units count as not done: `ssl-bench resume {run_dir}` recomputes them.")
    return {**paths, **write_outputs(df, run_dir, title=run_dir.name, families=task_families(df, run_dir),
                                     damaged=damaged, failures=failed_units(run_dir), stores={"": store},
                                     published_rows=published_rows, published=published)}


def write_outputs(df: pd.DataFrame, out_dir: Path, *, title: str, families: dict[str, list[str]],
                  damaged: list[str], failures: list[tuple[str, str]], stores: dict[str, ResultStore],
                  published_rows: pd.DataFrame | None = None, published: list[str] | None = None,
                  notes: list[tuple[str, list[str]]] = ()) -> dict[str, Path]:
    """Writes the leaderboard (md, csv, png), the best-layer table, the families' figures and
    report.html of the rows ``df`` into ``out_dir``: one run's rows, or several runs' side by side
    (``stores``: run label, '' for a single run -> its ResultStore, where per-image outcomes are)."""
    table = leaderboard(df)
    unreadable: list[str] = []
    marks = significance_marks(labelled(headline_rows(df)), ("model", "column"), stores, unreadable) \
        if not df.empty else {}
    paths = {"csv": out_dir / "leaderboard.csv", "md": out_dir / "leaderboard.md"}
    atomic_write(paths["csv"], table.to_csv())
    page = HtmlReport(title=f"ssl-bench report: {Path(out_dir).resolve().name}", meta=_meta_line(df))
    lines = [f"# Leaderboard: {title}", ""]
    for heading, notes_lines in notes:
        lines += [f"## {heading}", ""] + notes_lines + [""]
        page.notes.append((heading, notes_lines))
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
            shown = {(model, label.split("/", 1)[1]): mark for (model, label), mark in marks.items()
                     if label in columns}
            if shown:
                lines += [markdown_cells(sub, shown).to_markdown(), "", LEGEND, ""]
                page.marks[section] = shown
            else:
                lines += [sub.to_markdown(floatfmt=".2f"), ""]
            page.leaderboard.append((section, sub, warning))
        rows = best_layer_rows(df)
        best = best_layer_table(rows)
        if not best.empty:
            lines += ["## Best layer per model", "", BEST_LAYER_NOTE, "",
                      best_layer_markdown(best).to_markdown(), ""]
            page.best_layer, page.best_layer_note = best, BEST_LAYER_NOTE
            paths["best_layer_csv"] = out_dir / "leaderboard_best_layer.csv"
            atomic_write(paths["best_layer_csv"], rows[["model", "across_layers", "layer", "value"]].rename(
                columns={"across_layers": "task_metric"}).to_csv(index=False))
        lines += across_datasets_lines(df, stores, unreadable)
        protocol = _protocol_lines(df)
        lines += protocol
        page.notes.append(("How these numbers were made", protocol[2:]))
    for heading, notes_lines in (("Skipped", skipped_notes(df)), ("Convergence warnings", convergence_notes(df)),
                                 ("Damaged result files (left out)", damaged),
                                 ("Per-image outcomes left out of the significance marks", unreadable)):
        if notes_lines:
            lines += ["", f"## {heading}", ""] + notes_lines
            page.notes.append((heading, notes_lines))
    png = plot_layers(df, out_dir / "leaderboard.png")
    if png:
        paths["png"] = png
        page.figures.append(("headline metric per layer, one line per model (per-layer curves)", png))
    for item in task_report_items(df, out_dir, families) + plot_scaling(df, out_dir):
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
    page.details = detail_tables(df, families) + page.details
    page.costs = unit_costs(df)
    page.failures = failures
    paths["html"] = out_dir / "report.html"
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
        sub = labelled(sub.assign(layer=text_column(sub, "layer"), metric=sub["metric"].astype(str)))
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


def task_report_items(df: pd.DataFrame, out_dir: Path, families: dict[str, list[str]]) -> list[ReportItem]:
    """What each task family present in the results adds to the report (``Task.report_figures``),
    written into ``out_dir``. A family whose plugin is not installed here is skipped: its rows are
    still in the tables."""
    items = []
    for family, instances in families.items():
        if family not in TASKS:
            continue
        items += TASKS.get(family).report_figures(df[df["task"].astype(str).isin(instances)], out_dir)
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


# the settings that make two runs' numbers of one task comparable; a difference is said in the report
PROTOCOL_COLUMNS = ("dataset", "n_train", "n_test", "image_size", "cost_list", "solver", "cost_selection", "schedule",
                    "batch_size", "epochs", "iterations", "svm_precision", "backend")


def run_labels(run_dirs: list[Path]) -> list[str]:
    """A short, unique label per run: its folder name, with as many parent folders as it takes."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise BenchmarkError(f"compare: a run is named twice: {' '.join(str(d) for d in run_dirs)}")


def protocol_differences(df: pd.DataFrame) -> list[str]:
    """One line per task whose runs were made with different settings (data, sizes, solver...)."""
    lines = []
    for task, sub in headline_rows(df).groupby("task", sort=False):
        for column in PROTOCOL_COLUMNS:
            values = {run: "/".join(sorted(set(text_column(group, column))))
                      for run, group in sub.groupby("run", sort=False)}
            if len(set(values.values())) > 1:
                lines.append(f"- {task}: the runs differ in {column} ("
                             + "; ".join(f"{run}: {value or '-'}" for run, value in values.items())
                             + "): their numbers are not the same measurement")
    return lines


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path,
                     published: list[str] | None = None) -> dict[str, Path]:
    """Several runs' models side by side in one leaderboard and report.html, written into
    ``out_dir`` (never into a run). Each model is named ``RUN:MODEL``; rows keep a ``run`` column.
    Tasks that the runs made with different settings are listed first, as not comparable."""
    run_dirs, out_dir = [Path(d) for d in run_dirs], Path(out_dir)
    if len(run_dirs) < 2:
        raise BenchmarkError("compare: give two or more run directories (ssl-bench compare RUN_A RUN_B --out DIR)")
    for run_dir in run_dirs:
        if not (run_dir / "units").is_dir():
            raise BenchmarkError(f"compare: {run_dir} is not a run directory (no units/ inside); pass the folders "
                                 f"that 'ssl-bench run' printed, e.g. runs/goyal2019-mini")
        if out_dir.resolve() == run_dir.resolve():
            raise BenchmarkError(f"compare: --out {out_dir} is one of the runs; its own report would be replaced. "
                                 f"Choose another folder, e.g. runs/compare")
    if (out_dir / "units").is_dir():
        raise BenchmarkError(f"compare: --out {out_dir} is a run directory; choose an empty or new folder")
    published_rows = _load_published(published)
    frames, families, damaged, failures, stores = [], {}, [], [], {}
    for label, run_dir in zip(run_labels(run_dirs), run_dirs):
        store = stores[label] = ResultStore(run_dir)
        rows = annotate(store.load(damaged="skip"), run_dir)
        damaged += [f"- {label}: {problem}" for problem in store.damaged]
        failures += [(f"{label}:{unit}", text) for unit, text in failed_units(run_dir)]
        for family, instances in task_families(rows, run_dir).items():
            families[family] = list(dict.fromkeys(families.get(family, []) + instances))
        if not rows.empty:
            frames.append(rows.assign(model=label + ":" + rows["model"].astype(str), run=label,
                                      unit_id=label + ":" + rows["unit_id"].astype(str)))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.csv"}
    atomic_write(paths["results"], df.to_csv(index=False))
    differences = protocol_differences(df) if not df.empty else []
    notes = [("Not comparable: settings that differ between the runs", differences)] if differences else []
    title = "compare " + ", ".join(run_labels(run_dirs))
    return {**paths, **write_outputs(df, out_dir, title=title, families=families, damaged=damaged,
                                     failures=failures, stores=stores, published_rows=published_rows,
                                     published=published, notes=notes)}
