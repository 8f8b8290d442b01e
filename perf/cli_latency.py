"""How long the CLI takes to answer: each command in a fresh process, as a user types it.

Prints the median wall time of --repeats runs of each command, beside the bare interpreter's
start-up measured in the same run (the floor no command can go under).

    python perf/cli_latency.py --run runs/goyal2019-mini --reference results/reference/goyal2019-mini.csv
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory")
    parser.add_argument("--reference", type=Path, required=True, help="a reference the run passes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "benchmark.cli"]
    # an error only a plugin's declarations can find: the task plugins (and torch) are imported first
    typo = Path(tempfile.mkdtemp(prefix="cli-latency-")) / "typo.yaml"
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
        "ssl-bench report RUN": cli + ["report", str(args.run)],
    }
    floor = None
    for name, command in commands.items():
        took = seconds(command, args.repeats)
        floor = floor or took
        print(f"{name:50s} {took:6.2f} s  (x{took / floor:.1f} the floor)")


if __name__ == "__main__":
    main()
