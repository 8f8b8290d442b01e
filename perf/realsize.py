"""The Goyal suite's frozen-feature tasks at the datasets' real sizes, phase by phase.

Runs the real ``goyal2019`` suite's voc07_svm (all layers), lowshot_voc07 and lowshot_places205
with a ResNet-50 at 224 px on data in the real formats (``ssl-bench data synth voc07 --full-size``
and ``ssl-bench data synth places205 --full-size``), each task in its own process, and prints per
task: wall time, extraction speed against a bare forward of the same images (decode + transform +
forward, same batch size and loader workers, measured in the same run), peak memory (RSS of the
task's process tree), and the bytes written against the estimate the run checks free space
against. Then the time ``ssl-bench status`` and ``report`` take on the finished run.

    ssl-bench data synth voc07 --out /data/realsize --full-size
    ssl-bench data synth places205 --out /data/realsize --full-size --per-class 20
    python perf/realsize.py --data /data/realsize --out /tmp/realsize

Smaller sets in the same formats (``--images 1000`` at VOC's resolutions) give the speeds in
minutes; memory and disk need the full size. ``--lowshot-samples`` and ``--lowshot-k`` cut the
low-shot tasks' samples and k values for a subset (the issue's "lowshot_places205 on a subset").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUITE = "goyal2019"


def suite_file(args, folder: Path) -> Path:
    """The repository's goyal2019 suite with its models replaced by one random ResNet-50 (a
    checkpoint's speed is a random model's) and, for a subset, fewer low-shot samples and k."""
    suites = yaml.safe_load((ROOT / "benchmark.yaml").read_text())["suites"]
    suite = suites[SUITE]
    suite.update(data_root=str(args.data), device=args.device, batch_size=args.batch_size,
                 num_workers=args.workers, models={"rn50": {"pretrainer": "random", "arch": args.arch, "seed": 0}})
    for task in ("lowshot_voc07", "lowshot_places205"):
        if args.lowshot_samples:
            suite["tasks"][task]["num_samples"] = args.lowshot_samples
        if args.lowshot_k:
            suite["tasks"][task]["k_values"] = args.lowshot_k
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({"suites": {SUITE: suite}}, sort_keys=False))
    return path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def run_task(config: Path, out: Path, task: str) -> dict:
    """One task in its own process: wall time and its process tree's peak RSS (wait4's rusage)."""
    command = [sys.executable, "-m", "benchmark.cli", "run", "--suite", SUITE, "--config", str(config),
               "--out", str(out), "--tasks", task]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{task} failed: {process.stderr.read()[-2000:]}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}


def dry_run_estimate(config: Path, out: Path, task: str) -> tuple[int, int]:
    """(feature-cache bytes, run-directory bytes) the run's own estimate says the task writes; the
    features are counted as if none were cached yet, the run directory with its fixed reserve."""
    from benchmark.config import load_suite
    from benchmark.run.driver import estimate_writes, preflight
    from benchmark.run.plan import plan_run

    plan = plan_run(load_suite(SUITE, config), out / SUITE, out / "feature-cache", tasks=[task])
    ctx = preflight(plan, "local")
    estimate = estimate_writes(plan, plan.units, plan.tasks, ctx)
    return estimate.cache_bytes, estimate.run_bytes


def extraction_speed(cache: Path, since: float) -> tuple[int, float]:
    """(images, seconds) of the feature-cache entries committed since ``since`` (one pass over a
    split writes all its layers: each pass counted once)."""
    passes = {}
    for meta in cache.rglob("*.json"):
        if meta.stat().st_mtime < since:
            continue
        info = json.loads(meta.read_text())
        key = (info.get("dataset"), info.get("split"), info.get("extract_seconds"))
        passes[key] = (int(info.get("n", 0)), float(info.get("extract_seconds", 0.0)))
    return sum(n for n, _ in passes.values()), sum(s for _, s in passes.values())


def bare_forward(args) -> float:
    """Images per second of decode + transform + forward of the first --bare-images VOC07 trainval
    images: the same loader, batch size and workers as the engine, a plain torchvision forward."""
    import torch
    from torch.utils.data import DataLoader

    from benchmark.datasets.images import ImageFileDataset, svm_transform
    from benchmark.models import create_model

    voc = args.data / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()[: args.bare_images]
    transform, _ = svm_transform(args.size)
    loader = DataLoader(ImageFileDataset([voc / "JPEGImages" / f"{i}.jpg" for i in ids], transform),
                        batch_size=args.batch_size, num_workers=args.workers)
    model = create_model(args.arch, seed=0).eval()
    began, seen = time.perf_counter(), 0
    with torch.inference_mode():
        for images, _ in loader:
            model(images)
            seen += len(images)
    return seen / (time.perf_counter() - began)


def command_seconds(arguments: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmark.cli", *arguments], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="holds VOCdevkit/VOC2007 and Places205")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the run and its feature cache")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bare-images", type=int, default=256)
    parser.add_argument("--tasks", nargs="+", default=["voc07_svm", "lowshot_voc07", "lowshot_places205"])
    parser.add_argument("--lowshot-samples", type=int, help="fewer low-shot samples than the protocol's 5")
    parser.add_argument("--lowshot-k", type=int, nargs="+", help="a subset of the low-shot k values")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = suite_file(args, args.out)
    bare = bare_forward(args)
    print(f"bare forward (decode + transform + forward, {args.arch} at {args.size} px, batch {args.batch_size}, "
          f"{args.workers} workers): {bare:.1f} img/s")
    print("features: MiB written to the cache / the estimate (features a task shares with an earlier one are "
          "estimated but not written again); run dir: MiB written / the estimate with its 64 MiB reserve")
    print(f"{'task':20s} {'wall':>7s} {'extract img/s':>14s} {'vs bare':>8s} {'peak RSS':>9s} "
          f"{'features':>19s} {'run dir':>17s}")
    for task in args.tasks:
        cache_estimate, run_estimate = dry_run_estimate(config, args.out, task)
        cache_before, run_before = folder_bytes(args.out / "feature-cache"), folder_bytes(args.out / SUITE)
        since = time.time()
        measured = run_task(config, args.out, task)
        cache_written = folder_bytes(args.out / "feature-cache") - cache_before
        run_written = folder_bytes(args.out / SUITE) - run_before
        images, seconds = extraction_speed(args.out / "feature-cache", since)
        speed = images / seconds if seconds else float("nan")
        print(f"{task:20s} {measured['wall_s']:6.0f}s {speed:14.1f} {speed / bare:8.2f} "
              f"{measured['peak_rss_gib']:8.2f}G {cache_written / 2**20:9.1f}/{cache_estimate / 2**20:<9.1f} "
              f"{run_written / 2**20:7.1f}/{run_estimate / 2**20:<9.1f}")
    run_dir = args.out / SUITE
    print(f"ssl-bench status: {command_seconds(['status', str(run_dir)]):.2f} s; "
          f"ssl-bench report: {command_seconds(['report', str(run_dir)]):.2f} s "
          f"({sum(1 for _ in (run_dir / 'units').glob('*.csv'))} unit files)")


if __name__ == "__main__":
    main()
