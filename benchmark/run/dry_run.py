"""``ssl-bench run --dry-run``: what a run would do, checked as a run checks it, with nothing written.

Every check a run makes before its lock (devices, writable places, each task's data, every
checkpoint) runs; then, per task: its units (to run / already done), the images its units read
per model, and, where this run directory already holds finished units of that task, the time the
pending ones should take at the median time of those (per architecture where it has some). Last,
the disk the run would write (the same estimate a run checks free space against).
"""

from __future__ import annotations

import statistics


from ..diskspace import FeatureNeed
from ..models.backbone import get_architecture
from ..results import ResultStore
from .driver import estimate_writes, preflight
from .plan import Plan
from .status import finished_units


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe_plan(plan: Plan, executor: str = "local") -> list[str]:
    """The lines ``run --dry-run`` prints. Raises what a run would raise before its lock."""
    ctx = preflight(plan, executor)  # writes nothing
    store = ResultStore(plan.run_dir)
    done = {u.unit_id for u in plan.units if (plan.run_dir / "units").is_dir()
            and store.unit_state(u.unit_id, u.config_hash)[0] == "done"}
    pending = [u for u in plan.units if u.unit_id not in done]
    finished = finished_units(store)
    specs = {m.name: m for m in plan.suite.models}
    lines = [f"dry run of suite '{plan.suite.name}' into {plan.run_dir} (nothing is written)", "",
             f"{len(plan.units)} units: {len(pending)} to run, {len(done)} already done", ""]
    total_time, timed_all = 0.0, True
    for task_name in dict.fromkeys(u.task for u in plan.units):
        units = [u for u in plan.units if u.task == task_name]
        todo = [u for u in units if u.unit_id not in done]
        images = {}
        for model in dict.fromkeys(u.model for u in units):
            arch = get_architecture(specs[model].options["arch"])
            needs: dict[tuple, FeatureNeed] = {(n.dataset, n.split, n.input_size): n
                                               for n in plan.tasks[task_name].feature_needs(ctx, arch)}
            images[model] = sum(n.images for n in needs.values())
        read = sorted(set(images.values()))
        if read == [0]:  # the task trains on the images themselves: nothing goes through the feature cache
            read_text = "trains on the images (no cached features)"
        elif len(read) == 1:
            read_text = f"reads the features of {read[0]:,} images per model"
        else:
            read_text = "reads the features of " + ", ".join(f"{n:,} images for {m}" for m, n in images.items())
        lines.append(f"- {task_name}: {len(units)} unit{'s' * (len(units) != 1)} ({len(todo)} to run); {read_text}")
        if not todo:
            continue
        seconds, untimed = 0.0, 0
        for unit in todo:
            arch = get_architecture(specs[unit.model].options["arch"]).name
            same = finished[finished["task"] == task_name]
            same_arch = same[same["arch"] == arch]
            times = (same_arch if not same_arch.empty else same)["wall_time_s"].astype(float)
            if times.empty:
                untimed += 1
            else:
                seconds += statistics.median(times)
        if untimed < len(todo):
            lines.append(f"    about {_duration(seconds)} for {len(todo) - untimed} unit(s), at the median time of "
                         f"this run's finished units of {task_name}")
        if untimed:
            timed_all = False
            lines.append(f"    {untimed} unit(s) not timed: no finished unit of {task_name} in this run yet")
        total_time += seconds
    estimate = estimate_writes(plan, pending, plan.tasks, ctx) if pending else None
    lines.append("")
    if estimate is not None:
        lines.append(f"disk: {estimate.cache_bytes / 2**20:,.1f} MiB of features under {plan.cache_dir} (at most; "
                     f"entries already cached are reused), {estimate.run_bytes / 2**20:,.1f} MiB under {plan.run_dir}")
        lines += [f"  {detail}" for detail in estimate.detail]
    if total_time:
        lines.append(f"time: about {_duration(total_time)}" + ("" if timed_all else " for the timed units"))
    lines.append("")
    lines.append("checks passed: data, devices, checkpoints and writable places; run without --dry-run to start")
    return lines
