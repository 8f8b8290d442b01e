"""How long the CLI takes to answer: each command in a fresh process, as a user types it.

Prints the median wall time of --repeats runs of each command, beside the bare interpreter's
start-up measured in the same run (the floor no command can go under). `report` writes into the run
it reports, so it is timed on a copy of what it reads (the run's own files and units/): once with
every figure to draw (a fresh copy each time), then again with every figure current.

    python perf/cli_latency.py --run runs/goyal2019-mini --reference results/reference/goyal2019-mini.csv
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark.rows import FIGURE_RECORD_SUFFIX


def seconds(command: list[str], repeats: int, before=None) -> float:
    """Median wall time of ``command``; ``before()`` runs untimed ahead of each repeat."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        began = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def copy_for_report(run: Path, copy: Path) -> None:
    """What `ssl-bench report` reads of ``run`` (its own files and units/), into ``copy``; without
    the figures' records, so that every figure is drawn."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run / "units", copy / "units")
    for path in run.iterdir():
        if path.is_file() and not path.name.endswith(FIGURE_RECORD_SUFFIX):
            shutil.copy2(path, copy / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory")
    parser.add_argument("--reference", type=Path, required=True, help="a reference the run passes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "benchmark.cli"]
    # an error only a plugin's declarations can find: the plugins the suite names are imported first
    scratch = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    typo = scratch / "typo.yaml"
    typo.write_text("suites:\n  s:\n    models: {r: {pretrainer: random, arch: resnet18}}\n"
                    "    tasks: {voc07_svm: {foldz: 3}}\n")
    commands = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "ssl-bench --help": cli + ["--help"],
        "ssl-bench list suites": cli + ["list", "suites"],
        "ssl-bench list tasks": cli + ["list", "tasks"],
        "ssl-bench status RUN": cli + ["status", str(args.run)],
        "ssl-bench check RUN --against REF": cli + ["check", str(args.run), "--against", str(args.reference)],
        "ssl-bench run --suite nosuchsuite (config error)": cli + ["run", "--suite", "nosuchsuite"],
        "ssl-bench run (a task option's typo)": cli + ["run", "--config", str(typo), "--suite", "s"],
    }
    copy = scratch / args.run.name
    report = cli + ["report", str(copy)]
    timed = [(name, command, None) for name, command in commands.items()]
    timed += [("ssl-bench report RUN (every figure drawn)", report, lambda: copy_for_report(args.run, copy)),
              ("ssl-bench report RUN (again: figures current)", report, None)]
    floor = None
    for name, command, before in timed:
        took = seconds(command, args.repeats, before)
        floor = floor or took
        print(f"{name:50s} {took:6.2f} s  (x{took / floor:.1f} the floor)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
