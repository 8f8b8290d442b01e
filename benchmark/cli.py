"""The ``ssl-bench`` command line."""

from __future__ import annotations

import argparse
import difflib
import errno
import fnmatch
import importlib.metadata
import os
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG, list_suites, load_suite
from .console_log import configure_console_logging
from .errors import BenchmarkError, ConfigError


# each entry is a callable that adds a sub-command to the parser (plugins' commands, e.g. `pretrain`)
COMMANDS_ENTRY_POINT_GROUP = "ssl_bench.commands"
# each entry adds `ssl-bench list NAME` (NAME: the entry's name) for parts a plugin keeps in a registry
# of its own, e.g. the pretext methods: a callable given the --filter pattern (or None) that returns
# the lines to print
LISTINGS_ENTRY_POINT_GROUP = "ssl_bench.listings"
BUILT_IN_LISTINGS = ("suites", "tasks", "pretrainers", "archs", "published", "options")


def plugin_listings() -> dict[str, importlib.metadata.EntryPoint]:
    """Listing name -> entry point, not loaded: building the parser must not import the plugins.
    A plugin cannot replace a built-in listing."""
    return {entry_point.name: entry_point for entry_point in importlib.metadata.entry_points(
        group=LISTINGS_ENTRY_POINT_GROUP) if entry_point.name not in BUILT_IN_LISTINGS}


def default_config() -> Path:
    local = Path("benchmark.yaml")
    return local if local.is_file() else DEFAULT_CONFIG


class LiveReport:
    """Rewrites the run's leaderboard (CSV, markdown, figures) as units finish, at most once every
    ``interval_s`` seconds, so that a long run can be looked at while it works. A failure to write
    it is said once and never stops the run; the final report is written by ``_finish`` anyway."""

    def __init__(self, run_dir: Path, interval_s: float = 120.0, clock=None):
        import time

        self.run_dir = run_dir
        self.interval_s = interval_s
        self.clock = clock or time.monotonic
        self.last = self.clock()  # the first refresh comes one interval after the start
        self.refreshed = 0
        self.warned = False

    def __call__(self, unit) -> None:
        if self.clock() - self.last < self.interval_s:
            return
        from .report import write_report

        self.last = self.clock()
        try:
            write_report(self.run_dir)
            self.refreshed += 1
        except Exception as exc:  # noqa: BLE001 - a partial leaderboard is a convenience, the run is not
            if not self.warned:
                print(f"[ssl-bench] leaderboard not refreshed during the run ({type(exc).__name__}: {exc}); "
                      f"it is written when the run ends", file=sys.stderr)
                self.warned = True


def _live_report_interval() -> float:
    raw = os.environ.get("SSL_BENCH_REPORT_EVERY_S", "120")
    try:
        value = float(raw)
    except ValueError:
        raise BenchmarkError(f"SSL_BENCH_REPORT_EVERY_S must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise BenchmarkError(f"SSL_BENCH_REPORT_EVERY_S must be >= 0 seconds, got {raw!r}")
    return value


def _print_report(paths: dict[str, Path]) -> None:
    """The leaderboard's markdown, then where every file of the report is."""
    print(paths["md"].read_text())
    print("leaderboard: " + "  ".join(str(p) for k, p in paths.items() if k not in ("results", "html")))
    print(f"report: {paths['html']}")


def _finish(summary, run_dir: Path) -> int:
    from .report import write_report

    counts = f"\n{len(summary.done)} unit(s) run, {len(summary.skipped)} already done, {len(summary.failed)} failed"
    try:
        paths = write_report(run_dir)
    except BenchmarkError:  # e.g. a full disk: which units ran and failed is still worth saying
        print(counts)
        for unit_id, message in summary.failed.items():
            print(f"FAILED {unit_id}: {message}", file=sys.stderr)
        raise
    print(counts)
    _print_report(paths)
    for unit_id, message in summary.failed.items():
        print(f"FAILED {unit_id}: {message}", file=sys.stderr)
    return 1 if summary.failed else 0


def _executor(suite_executor: dict, name: str | None) -> dict:
    return {**suite_executor, "name": name} if name else suite_executor


def cmd_run(args) -> int:
    suite = load_suite(args.suite, args.config)  # before the engine's imports: a config error answers at once
    from .paths import inside
    from .run import run_suite

    # a replicate never shares the directory of the suite's own run: its units would replace those;
    # and a suite name cannot place the run outside --out
    run_dir = inside(Path(args.out), suite.name if not args.replicate else f"{suite.name}.replicate{args.replicate}")
    cache = Path(args.cache or os.environ.get("SSL_BENCH_CACHE") or Path(args.out) / "feature-cache")
    if args.dry_run:
        from .run.dry_run import describe_plan
        from .run.plan import plan_run

        plan = plan_run(suite, run_dir, cache, data_root=args.data_root, models=args.models, tasks=args.tasks,
                        device=args.device, replicate=args.replicate)
        print("\n".join(describe_plan(plan, _executor(suite.settings["executor"], args.executor).get("name", "local"))))
        return 0
    summary = run_suite(suite, run_dir, cache, data_root=args.data_root, models=args.models, tasks=args.tasks,
                        device=args.device, force=args.force, replicate=args.replicate,
                        executor=_executor(suite.settings["executor"], args.executor),
                        after_unit=LiveReport(run_dir, _live_report_interval()))
    return _finish(summary, run_dir)


def cmd_eval(args) -> int:
    import tempfile

    import yaml

    from .evaluate import eval_suite
    from .paths import inside
    from .run import run_suite

    name, suite_map = eval_suite(args.checkpoints, args.arch, args.suite, args.tasks, args.config, args.prefix)
    with tempfile.TemporaryDirectory(prefix="ssl-bench-eval-") as folder:  # the run keeps its own copy
        source = Path(folder) / "eval.yaml"
        source.write_text(yaml.safe_dump({"suites": {name: suite_map}}, sort_keys=False, default_flow_style=None))
        suite = load_suite(name, source)
        run_dir = inside(Path(args.out), name)
        cache = Path(args.cache or os.environ.get("SSL_BENCH_CACHE") or Path(args.out) / "feature-cache")
        summary = run_suite(suite, run_dir, cache, data_root=args.data_root, device=args.device,
                            executor=_executor(suite.settings["executor"], args.executor),
                            after_unit=LiveReport(run_dir, _live_report_interval()))
    status = _finish(summary, run_dir)
    print(f"the same run again: ssl-bench run --config {run_dir / 'config.yaml'} --suite {name} --out {args.out}")
    return status


def cmd_resume(args) -> int:
    from .run import load_plan, run_plan
    from .run import unit_states

    plan = load_plan(args.run_dir)
    if args.only_failed:
        failed = {u.unit_id for u, state in unit_states(plan) if state.state == "failed"}
        plan.units = [u for u in plan.units if u.unit_id in failed]
        print(f"retrying {len(plan.units)} failed unit(s)")
    summary = run_plan(plan, executor=_executor(plan.suite.settings["executor"], args.executor),
                       after_unit=LiveReport(plan.run_dir, _live_report_interval()))
    return _finish(summary, plan.run_dir)


def cmd_status(args) -> int:
    from .run.status import PlannedUnits, print_status

    return print_status(PlannedUnits.read(args.run_dir))


def cmd_check(args) -> int:
    from .check import run_check

    return run_check(args.run_dir, args.against, tolerance=args.tolerance, update=args.update,
                     replicates=args.replicates, allow_new=args.allow_new,
                     extend="replicate" if args.add_replicate else "machine-run" if args.add_machine_run
                     else "rows" if args.add_rows else None)


def cmd_report(args) -> int:
    from .report_inputs import current_report, input_digest, record_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "units").is_dir():
        raise BenchmarkError(f"{run_dir} is not a run directory (no units/ inside); pass the folder "
                             f"that 'ssl-bench run' printed, e.g. runs/goyal2019-mini")
    # taken before writing: a unit finished meanwhile makes the next report anew
    inputs = None if args.published else input_digest(run_dir)
    # nothing it is made from changed since the last report: that report is this one (no pandas to import)
    paths = None if args.published else current_report(run_dir, inputs)
    if paths is None:
        from .report import write_report

        paths = write_report(run_dir, published=args.published)
        if not args.published:
            record_report(run_dir, paths, inputs)
    _print_report(paths)
    return 0


def cmd_compare(args) -> int:
    from .report import write_comparison

    paths = write_comparison(args.run_dirs, args.out, published=args.published)
    _print_report(paths)
    return 0


def cmd_list(args) -> int:
    from .registry import PRETRAINERS, TASKS

    if args.name is not None and args.what != "options":
        raise BenchmarkError(f"'ssl-bench list {args.what}' takes no NAME; only 'ssl-bench list options NAME' does")
    if args.what == "options":
        from .options_reference import markdown, text

        print(markdown(args.name) if args.markdown else text(args.name), end="")
    elif args.what == "suites":
        for name, description in list_suites(args.config).items():
            print(f"{name:24s} {description}")
    elif args.what not in BUILT_IN_LISTINGS:
        for line in plugin_listings()[args.what].load()(args.filter):
            print(line)
    elif args.what == "published":
        from .published import available, describe

        names = available()
        width = max(map(len, names), default=0)
        for name in names:  # loaded, so a broken file is reported here and not first in a report
            rows, description = describe(name)
            print(f"{name:{width}s} {rows:4d} rows  {description}")
    elif args.what == "archs":
        from .registry import ARCHITECTURES

        # built-in names, then the timm family: timm/<model> for every timm.list_models() name
        names = ARCHITECTURES.all_names(args.filter)
        if not names:
            print(f"no architecture matches '{args.filter}'", file=sys.stderr)
            return 1
        print("\n".join(names))
    else:
        names = {"tasks": TASKS.declared_names, "pretrainers": PRETRAINERS.declared_names}[args.what]()
        print("\n".join(n for n in names if not args.filter or fnmatch.fnmatch(n, args.filter)))
    return 0


# the real datasets' sizes, for `data synth --full-size`
VOC07_IMAGES, VOC07_TEST = 9963, 4952
PLACES205_CLASSES, PLACES205_VAL_PER_CLASS = 205, 100
SYNTH_PER_CLASS = 30  # `data synth places205|classification|imagenet`: train images per class


def cmd_data_synth(args) -> int:
    if args.dataset == "transfer":
        return _synth_transfer(args)
    if args.per_class is None:
        args.per_class = SYNTH_PER_CLASS
    layouts = {"classification": ("imagefolder", "csv"), "imagenet": ("kaggle", "folders")}.get(args.dataset, ())
    if args.layout is not None and args.layout not in layouts:
        raise ConfigError(f"data synth {args.dataset}: --layout {args.layout} is not one of its layouts "
                          f"({', '.join(layouts) or 'it has one layout: leave --layout out'})")
    args.layout = args.layout or (layouts[0] if layouts else None)
    if args.dataset == "imagenet":
        from .datasets.synth_imagenet import synth_imagenet

        val_per_class = max(1, args.per_class // 3)
        root = synth_imagenet(Path(args.out), num_classes=args.classes, train_per_class=args.per_class,
                              val_per_class=val_per_class, layout=args.layout, seed=args.seed)
        print(f"wrote {args.classes} classes x ({args.per_class} train + {val_per_class} val) images in ImageNet's "
              f"{args.layout} layout to {root} (dataset: imagenet, layout: imagenet, test_split: val, "
              f"val_split: holdout)")
        return 0
    if args.dataset == "classification":
        from .datasets.synth_classification import synth_classification

        per_split = {"train": args.per_class, "test": max(1, args.per_class // 3)}
        if args.val_per_class:
            per_split["val"] = args.val_per_class
        root = synth_classification(Path(args.out), name=args.name, num_classes=args.classes, per_split=per_split,
                                    layout=args.layout, seed=args.seed)
        shown = " + ".join(f"{n} {s}" for s, n in per_split.items())
        print(f"wrote {args.classes} classes x ({shown}) images in {args.layout} layout to {root}")
        return 0
    if args.dataset == "nyuv2":
        from .datasets.synth_nyuv2 import synth_nyuv2

        root = synth_nyuv2(Path(args.out), seed=args.seed)
        print(f"wrote rendered rooms (images, depths, normals, 795/654-proportioned split) in NYUv2 format to {root}")
        return 0
    if args.dataset == "places205":
        from .datasets.synth_places import synth_places205

        val_per_class = args.per_class // 3
        classes, sides = args.classes, {}
        if args.full_size:  # the real set's 205 scenes, 256 x 256 images and 100 val images per scene
            classes, val_per_class = PLACES205_CLASSES, PLACES205_VAL_PER_CLASS
            sides = {"min_side": 256, "max_side": 256}
        root = synth_places205(Path(args.out), num_classes=classes, train_per_class=args.per_class,
                               val_per_class=val_per_class, seed=args.seed, **sides)
        args.classes = classes
        print(f"wrote {args.classes} classes x ({args.per_class} train + {val_per_class} val) images "
              f"in Places205 layout to {root}")
        return 0
    from .datasets.synth_voc import synth_voc07

    if args.full_size:  # VOC2007's 5,011 trainval + 4,952 test images, at its resolutions (sides up to 500)
        root = synth_voc07(Path(args.out), n_images=VOC07_IMAGES, seed=args.seed, min_side=333, max_side=500,
                           test_fraction=VOC07_TEST / VOC07_IMAGES)
        args.images = VOC07_IMAGES
    else:
        root = synth_voc07(Path(args.out), n_images=args.images, seed=args.seed)
    print(f"wrote {args.images} images in VOC2007 layout to {root}")
    return 0


def _synth_transfer(args) -> int:
    from .datasets.transfer import TRANSFER_LAYOUTS
    from .datasets.synth_transfer import synth_transfer
    from .errors import DatasetError

    if args.transfer_dataset not in (*TRANSFER_LAYOUTS, "all"):
        raise DatasetError(f"data synth transfer needs --dataset NAME or --dataset all, NAME one of "
                           f"{', '.join(TRANSFER_LAYOUTS)} (got {args.transfer_dataset})")
    names = TRANSFER_LAYOUTS if args.transfer_dataset == "all" else (args.transfer_dataset,)
    for name in names:
        sized = {} if args.per_class is None else {"per_class": args.per_class}
        root = synth_transfer(Path(args.out), name, seed=args.seed, **sized)
        print(f"wrote a small {name} in its official layout to {root} (dataset: {name}, layout: {name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ssl-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (resumes: finished units are skipped)")
    run.add_argument("--suite", required=True)
    run.add_argument("--config", type=Path, default=default_config(), help="suite file (default: benchmark.yaml)")
    run.add_argument("--models", nargs="+", help="only these models of the suite")
    run.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
    run.add_argument("--data-root", type=Path, help="overrides the suite's data_root")
    run.add_argument("--out", type=Path, default=Path("runs"), help="results go to OUT/<suite>")
    run.add_argument("--cache", type=Path, help="feature cache (default: $SSL_BENCH_CACHE or OUT/feature-cache)")
    run.add_argument("--device", help="cpu, cuda, cuda:1 (default: the suite's, 'auto')")
    run.add_argument("--force", action="store_true", help="rerun units that are already done")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything a run checks and say what it would run, read and write, and how long "
                          "it should take; writes nothing")
    run.add_argument("--replicate", type=int, default=0, metavar="N",
                     help="N > 0: rerun only the units downstream of SGD training, every training reseeded "
                          "(into OUT/<suite>.replicateN), to measure their spread for 'check --replicates'")
    run.add_argument("--executor", choices=["local", "debug", "slurm"],
                     help="where units run (default: the suite's executor, 'local')")
    run.set_defaults(func=cmd_run, interrupted_hint="Run the same command again (or ssl-bench resume RUN_DIR) "
                     "to continue where it stopped.")

    evaluate = sub.add_parser("eval", help="evaluate checkpoints on a suite's tasks, no YAML file needed")
    evaluate.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT",
                          help=".pth/.pt/.safetensors files or Hugging Face folders (the model is named after each)")
    evaluate.add_argument("--arch", nargs="+", required=True,
                          help="the architecture of every checkpoint, or one per checkpoint: resnet50, "
                               "timm/vit_small_patch16_224, ... (ssl-bench list archs)")
    evaluate.add_argument("--suite", default="goyal2019", help="whose tasks and settings (default: goyal2019)")
    evaluate.add_argument("--tasks", nargs="+", metavar="TASK[:LAYERS]",
                          help="only these tasks of the suite, each with its layers if given: voc07_svm:res4,res5 "
                               "knn (default: every task, each architecture's own layers)")
    evaluate.add_argument("--prefix", help="take the checkpoints' keys under this prefix, e.g. model.backbone.")
    evaluate.add_argument("--config", type=Path, default=default_config(), help="suite file (default: benchmark.yaml)")
    evaluate.add_argument("--data-root", type=Path, help="overrides the suite's data_root")
    evaluate.add_argument("--out", type=Path, default=Path("runs"), help="results go to OUT/eval-<suite>")
    evaluate.add_argument("--cache", type=Path, help="feature cache (default: $SSL_BENCH_CACHE or OUT/feature-cache)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 (default: the suite's, 'auto')")
    evaluate.add_argument("--executor", choices=["local", "debug", "slurm"],
                          help="where units run (default: the suite's executor, 'local')")
    evaluate.set_defaults(func=cmd_eval, interrupted_hint="Run the same command again to continue where it stopped.")

    resume = sub.add_parser("resume", help="continue an interrupted run (finished units are skipped)")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--only-failed", action="store_true", help="retry only the units that failed")
    resume.add_argument("--executor", choices=["local", "debug", "slurm"])
    resume.set_defaults(func=cmd_resume, interrupted_hint="Run it again to continue where it stopped.")

    status = sub.add_parser("status", help="units done / running / failed / pending of a run")
    status.add_argument("run_dir", type=Path)
    status.set_defaults(func=cmd_status)

    check = sub.add_parser("check", help="compare a run's results with reference results (CI regression check)")
    check.add_argument("run_dir", type=Path)
    check.add_argument("--against", type=Path, required=True, help="e.g. results/reference/goyal2019-mini.csv")
    check.add_argument("--tolerance", type=float, help="absolute tolerance for every metric (default: per metric)")
    check.add_argument("--update", action="store_true", help="write the run's results as the new reference")
    check.add_argument("--replicates", type=Path, nargs="+", metavar="RUN_DIR",
                       help="with --update: replicate runs (ssl-bench run --replicate N) whose spread sets "
                            "the band of every trained number")
    extension = check.add_mutually_exclusive_group()  # each rewrites the stored reference one way
    extension.add_argument("--add-replicate", action="store_true",
                           help="add RUN_DIR (a clean run of the same suite, e.g. on another machine) to the spreads "
                                "of the reference's trained rows; stored values and exact rows stay")
    extension.add_argument("--add-machine-run", action="store_true",
                           help="RUN_DIR is the same suite at the same seeds on another (or an emulated) processor: "
                                "record how far it moved each trained row; (model, task) pairs it reproduces are then "
                                "held within a point (rule 'machine')")
    extension.add_argument("--add-rows", action="store_true",
                           help="add the rows of RUN_DIR that the reference lacks (a model or task added to the "
                                "suite); the reference's rows stay")
    check.add_argument("--allow-new", action="store_true",
                       help="rows the reference does not cover are reported but do not fail the check")
    check.set_defaults(func=cmd_check)

    report = sub.add_parser("report", help="write leaderboard.md/.csv/.png and report.html for a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--published", nargs="+", metavar="NAME",
                        help="show published numbers beside the run (results/published/NAME.csv, e.g. goyal2019, "
                             "pirl2020, openselfsup (ssl-bench list published), or a CSV path); marked as not "
                             "measured here, never mixed into the results")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser("compare", help="several runs' models side by side in one leaderboard and report.html")
    compare.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.add_argument("--out", type=Path, required=True,
                         help="folder for the combined leaderboard.md/.csv/.png, report.html and results.csv "
                              "(not one of the runs)")
    compare.add_argument("--published", nargs="+", metavar="NAME",
                         help="published numbers to show beside them, as for 'ssl-bench report'")
    compare.set_defaults(func=cmd_compare)

    listing = sub.add_parser("list", help="list suites, tasks, pretrainers, architectures, published number sets "
                                             "or the parts a plugin lists (ssl-bench list -h shows them)")
    listing.add_argument("what", choices=[*BUILT_IN_LISTINGS, *sorted(plugin_listings())])
    listing.add_argument("name", nargs="?", help="options only: the task, pretrainer or pretext method whose "
                                                 "options to list (default: all)")
    listing.add_argument("--markdown", action="store_true", help="options only: as the Markdown of docs/options.md")
    listing.add_argument("--config", type=Path, default=default_config())
    listing.add_argument("--filter", metavar="PATTERN", help="shell-style pattern, e.g. 'vit_*' or '*convnext*' "
                         "(archs: matched with and without the timm/ prefix)")
    listing.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate a small dataset in the real on-disk format")
    synth.add_argument("dataset", choices=["voc07", "places205", "nyuv2", "classification", "imagenet", "transfer"])
    synth.add_argument("--dataset", dest="transfer_dataset", metavar="NAME|all", help="transfer only: which of "
                       "the twelve transfer datasets (food101, cifar10, ...; written to OUT/NAME in its official "
                       "layout), or all")
    synth.add_argument("--out", type=Path, required=True, help="writes OUT/VOCdevkit/VOC2007, OUT/Places205, "
                       "OUT/NYUv2, OUT/imagenet or OUT/NAME (classification, transfer)")
    synth.add_argument("--images", type=int, default=400, help="voc07 only")
    synth.add_argument("--classes", type=int, default=10, help="places205, classification and imagenet")
    synth.add_argument("--per-class", type=int, default=None, help="places205, classification and imagenet (default "
                       "30): train images per class (val, or classification's test, gets per-class // 3); transfer "
                       "(default 4): train images per class, val and test get per-class // 2 (at least 2)")
    synth.add_argument("--val-per-class", type=int, default=0, help="classification only: a val split with this "
                       "many images per class (default none: tasks carve one out of train)")
    synth.add_argument("--layout", choices=["imagefolder", "csv", "kaggle", "folders"], default=None,
                       help="classification: imagefolder (default) or csv; imagenet: kaggle (default: Kaggle's "
                            "ILSVRC tree with LOC_val_solution.csv) or folders (train/<wnid>/, val/<wnid>/)")
    synth.add_argument("--name", default="synth-classification", help="classification only: the dataset folder")
    synth.add_argument("--full-size", action="store_true",
                       help="voc07: the real set's 9,963 images (5,011 trainval + 4,952 test) at VOC's resolutions; "
                            "places205: its 205 scenes at 256 x 256 with 100 val images each (--per-class train "
                            "images each). To time and size runs as on the real data (minutes to write)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_data_synth)

    for entry_point in sorted(importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry_point.load()(sub)
    return parser


_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that file system, or choose another place (--out/--cache)",
    errno.EDQUOT: "free space within your quota, or choose another place (--out/--cache)",
    errno.EROFS: "the file system is read-only: copy the folder to a writable place, or choose another (--out)",
    errno.EACCES: "check its permissions (chmod), or choose another place",
    errno.EPERM: "check its permissions (chmod), or choose another place",
    errno.ENOENT: "check the path",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an error of the file system: what failed, on which file, and the fix."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = f" ({' -> '.join(names)})" if names else ""
    fix = _OS_ERROR_FIXES.get(exc.errno, "check the file and the file system holding it")
    return f"{exc.strerror or exc}{where}; {fix}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((action.choices for action in parser._actions if isinstance(action.choices, dict)), {})


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse's parse_args, but an option the (innermost) sub-command does not have is reported
    first, by that sub-command (its usage, not the top-level one), with its closest options: 'did
    you mean ...?'."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command, start = parser, 0
    while True:  # down the sub-commands named: 'data synth voc07 --out ...'
        choices = _subcommands(command)
        position = next((i for i in range(start, len(argv)) if argv[i] in choices), None)
        if position is None:
            break
        command, start = choices[argv[position]], position + 1
    if command is not parser:
        options = [option for action in command._actions for option in action.option_strings]
        unknown = [token for token in argv[start:] if token.startswith("--")
                   and not any(option.startswith(token.split("=", 1)[0]) for option in options)]
        if unknown:
            hints = []
            for token in unknown:
                close = difflib.get_close_matches(token.split("=", 1)[0], options, n=3, cutoff=0.6)
                hints += [f"{token}: did you mean {' or '.join(close)}?"] if close else []
            command.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    configure_console_logging()  # the library's messages on the console, as they were printed
    args = _parse(build_parser(), argv)
    try:
        return args.func(args)
    except BenchmarkError as exc:
        print(f"ssl-bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader stopped early (`ssl-bench list archs | head`): as other command-line tools, stop
        # quietly; stdout goes to /dev/null so that the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool that a closed pipe stopped
    except OSError as exc:  # a file system refused (read-only, full, permissions): one line, no traceback
        print(f"ssl-bench: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except UnicodeError as exc:
        print(f"ssl-bench: error: a file read by 'ssl-bench {args.command}' is not UTF-8 text ({exc}); "
              f"check the files you passed, which must be text saved as UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # results are written atomically, one unit at a time: what finished is on disk and complete
        print(f"ssl-bench: interrupted (Ctrl-C); finished results are kept. {getattr(args, 'interrupted_hint', '')}"
              .rstrip(), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
