"""Feature-extraction throughput vs a bare forward pass of the same model on the same batches.

Both sides see identical pre-loaded image batches, so the ratio isolates the engine's own
overhead (staged forward with early stop, per-layer pooling, copies into the memory-mapped cache
arrays). Target: ratio >= 0.9. A ViT (timm) is measured the same way: every block's CLS and
patch-mean features plus DINO's last-4 CLS concatenation against timm's plain forward. On a shared
machine the numbers are indicative only (other processes take cores between the timed runs; the
best of --repeats is kept to damp that).

    python perf/extract.py --arch resnet50 timm/vit_small_patch16_224 --size 112 --images 256
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from benchmark.features import FeatureCache, FeatureKey, forward_batches
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet50", "timm/vit_small_patch16_224"])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in args.arch:
        measure(name, args)


def measure(arch_name: str, args) -> None:
    device = torch.device(args.device)
    arch = get_architecture(arch_name)
    model = create_model(arch_name, seed=0).eval().to(device)
    backbone = FrozenBackbone(arch, model).to(device)
    layers = list(arch.default_layers)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(args.batch_size, args.images - i), 3, args.size, args.size,
                           generator=generator).to(device)
               for i in range(0, args.images, args.batch_size)]
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def bare():
        for batch in batches:
            with autocast():
                model(batch)
        sync()

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp))
        dims = {layer: v.shape[1] for layer, v in backbone(batches[0][:1], layers).items()}

        def engine():
            """The engine's own loop, writing into memory-mapped cache entries as a run does."""
            writers = {layer: cache.writer(FeatureKey("bench", arch_name, layer, "p", "t", "d", "s", "f"),
                                           (args.images, dims[layer])) for layer in layers}
            forward_batches(backbone, batches, layers, args.images, device=device,
                            sinks={layer: w.array for layer, w in writers.items()})
            sync()
            for writer in writers.values():
                writer.commit({})

        bare()
        engine()  # warm-up (allocator, cuDNN autotune)
        times = {"bare forward": [], f"engine ({len(layers)} layers + pooling + cache write)": []}
        for _ in range(args.repeats):
            for name, fn in zip(times, (bare, engine)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:45s} {seconds:7.3f} s  {args.images / seconds:8.1f} img/s")
    bare_s, engine_s = best.values()
    print(f"throughput ratio engine/bare = {bare_s / engine_s:.3f}  (target >= 0.9)  "
          f"[{arch_name} {args.size}px batch {args.batch_size} on {device}; indicative on a shared machine]")


if __name__ == "__main__":
    main()
