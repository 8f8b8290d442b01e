"""Training-iteration time of all linear heads from ONE trunk pass vs one trunk pass per head.

Same model, same pre-generated batches, same heads and optimiser settings, in one run:

- one pass:  trunk forward once (all layers) -> every head -> one backward/step;
- separate:  for each layer, its own trunk forward, head, backward and optimiser step, as when
  each layer is trained on its own. Two variants: the trunk stopped at the layer (what this
  engine's staged forward would do) and the full trunk (a plain network run per head).

Expected ratio separate(full trunk) / one pass: close to the number of layers, since the frozen
trunk dominates and the heads are small.

    python perf/multihead.py --arch resnet50 --size 112 --batch-size 32 --iterations 5
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from tasks.linear.heads import MultiHead, make_optimizer, resolve_schedule
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=205)
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    arch = get_architecture(args.arch)
    backbone = FrozenBackbone(arch, create_model(args.arch, seed=0)).to(device)
    layers = list(arch.layers)
    cuda = device.type == "cuda"
    if cuda:
        backbone = backbone.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    generator = torch.Generator().manual_seed(0)
    total = args.warmup + args.iterations
    batches = [(torch.randn(args.batch_size, 3, args.size, args.size, generator=generator),
                torch.randint(0, args.classes, (args.batch_size,), generator=generator)) for _ in range(total)]
    batches = [(x.to(device).contiguous(memory_format=torch.channels_last) if cuda else x.to(device), y.to(device))
               for x, y in batches]
    schedule = resolve_schedule("reference", args.arch, num_train=10**6, batch_size=args.batch_size)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def fresh():
        heads = MultiHead.build(backbone, layers, args.classes, args.size, seed=0).to(device).train()
        return heads

    def one_pass() -> float:
        heads = fresh()
        optimizer, _ = make_optimizer(heads, schedule)

        def step(x, y):
            with torch.no_grad(), autocast():
                maps = backbone.feature_maps(x, layers)
            logits = heads(maps)
            loss = sum(F.cross_entropy(logits[layer].float(), y) for layer in layers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return timed(step)

    def separate(full_trunk: bool) -> float:
        heads = fresh()
        per_layer = {layer: make_optimizer(type(heads)({layer: heads.heads[layer]}), schedule)[0] for layer in layers}

        def step(x, y):
            for layer in layers:
                with torch.no_grad(), autocast():
                    fmap = backbone.feature_maps(x, layers if full_trunk else [layer])[layer]
                loss = F.cross_entropy(heads.heads[layer](fmap).float(), y)
                per_layer[layer].zero_grad(set_to_none=True)
                loss.backward()
                per_layer[layer].step()

        return timed(step)

    def timed(step) -> float:
        for x, y in batches[:args.warmup]:
            step(x, y)
        sync()
        start = time.perf_counter()
        for x, y in batches[args.warmup:]:
            step(x, y)
        sync()
        return (time.perf_counter() - start) / args.iterations

    results = {
        "one pass, all heads": one_pass(),
        "one pass per head, trunk up to the layer": separate(full_trunk=False),
        "one pass per head, full trunk": separate(full_trunk=True),
    }
    threads = f", {torch.get_num_threads()} threads" if not cuda else ""
    print(f"{args.arch} at {args.size} px, batch {args.batch_size}, {len(layers)} heads ({', '.join(layers)}), "
          f"{args.iterations} timed iterations after {args.warmup} warm-up, {device}{threads}")
    base = results["one pass, all heads"]
    for name, seconds in results.items():
        print(f"  {name:42s} {1000 * seconds:9.1f} ms/iteration  {args.batch_size / seconds:8.1f} images/s  "
              f"x{seconds / base:.2f}")
    print(f"ratio separate(full trunk) / one pass: {results['one pass per head, full trunk'] / base:.2f} "
          f"(number of layers: {len(layers)})")


if __name__ == "__main__":
    main()
