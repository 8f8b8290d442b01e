"""How often does the regression check fail a clean run? Leave-one-out over same-seed runs of the
mini suite on several machines (real or emulated).

Each machine in turn is held out: a reference is built from the others as the project builds its
own (the first one's values, every further one added with ``check --add-machine-run``), and the
held-out machine's numbers are compared with it. A row the held-out run fails is a false alarm:
the same suite at the same seeds, only another processor. The script prints, per held-out machine,
how many rows the ``machine`` rule held and how many failed, and the largest move seen.

    python perf/check_false_alarms.py --reference results/reference/goyal2019-mini.csv \
        --runs runs/goyal2019-mini /work/runs-emu/goyal2019-mini [...]

The stored reference counts as one machine (the one that made its values); each --runs folder is
another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmark.check import (JOIN, OPTIONAL_JOIN, STEP_COLUMN, add_machine_run, build_reference, compare, load_run,
                             read_reference)


def reference_as_run(path: Path) -> pd.DataFrame:
    """The stored reference's values as a run of the machine that made them."""
    frame, _ = read_reference(path)
    kept = [c for c in JOIN + OPTIONAL_JOIN + ["value", STEP_COLUMN] if c in frame]
    return frame[kept].assign(determinism=frame["determinism"].replace("", "trained"))


def leave_one_out(machines: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    names = list(machines)
    for held_out in names:
        # values from the machine with the most rows: rows only newer runs hold get tested too
        others = sorted((n for n in names if n != held_out), key=lambda n: -len(machines[n]))
        reference = build_reference(machines[others[0]], [])
        for name in others[1:]:
            reference = add_machine_run(reference, machines[name])
        guarded = reference[reference["rule"] == "machine"]
        result = compare(machines[held_out], guarded)["compared"]
        moved = (result["value_run"] - result["value_reference"]).abs()
        rows.append({"held out": held_out, "reference from": " + ".join(others), "machine rows held": len(result),
                     "false alarms": int(result["outside"].sum()), "largest move (points)": moved.max(),
                     "pairs": result[["model", "task"]].drop_duplicates().shape[0]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a stored reference: its values are one machine")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="runs of the same suite on other machines")
    args = parser.parse_args()
    machines = {f"reference ({args.reference.name})": reference_as_run(args.reference)}
    machines.update({str(run): load_run(run) for run in args.runs})
    table = leave_one_out(machines)
    print(table.to_markdown(index=False, floatfmt=".4g"))
    tested, alarms = int(table["machine rows held"].sum()), int(table["false alarms"].sum())
    print(f"\nfalse alarms: {alarms} of {tested} held rows ({alarms / max(tested, 1):.2%}) over {len(table)} "
          f"leave-one-out references")


if __name__ == "__main__":
    main()
