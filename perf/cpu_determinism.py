"""Can a CPU training give the same bits on another x86-64 machine, and at what cost?

A ResNet-18 (or the mini suite's ViT-Tiny) at 64 px (batch 32, SGD momentum 0.9, 20 classes, BatchNorm in train mode) trains for
--iterations steps on seeded data, in one child process per (pin set, emulated machine). A machine
is emulated by the environment a process starts with: ATen's kernel level, oneDNN's and MKL's
instruction sets, the thread count. A pin set is what the training process does to itself before
and after importing torch. For every pin set the script prints, per emulated machine, whether the
final weights are bit-identical to the first machine's, and the median seconds per step beside the
unpinned training's (the cost of the pins, measured in the same run).

    python perf/cpu_determinism.py --iterations 8
    python perf/cpu_determinism.py --arch vit --pin-sets none   # the mini suite's ViT-Tiny (4 blocks)
    python perf/cpu_determinism.py --divergence --iterations 64 [--arch vit] [--lr 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# environment variables that emulate another processor or machine (read when torch loads)
MACHINES = {
    "this machine": {},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen default (no SIMD)": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "MKL SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "1 thread": {"EMULATED_THREADS": "1"},
    "3 threads": {"EMULATED_THREADS": "3"},
}

# what the training process does to itself: env set before torch loads, then torch settings
PIN_SETS = {
    "none": {},
    "cross-vendor": {"env": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}, "gemm_convolutions": True,
                     "threads": 1},
    "AVX2 Intel": {"env": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}, "gemm_convolutions": True, "threads": 1},
}


def build(arch: str):
    """The network: torchvision's ResNet-18, or the mini suite's timm ViT-Tiny cut to 4 blocks at 64 px."""
    if arch == "vit":
        import timm

        return timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4, num_classes=20)
    import torchvision

    return torchvision.models.resnet18(num_classes=20)


def train(iterations: int, pins: dict, arch: str, lr: float = 0.05, probes: str = "") -> dict:
    """The child: pins, then the training; prints the weights' hash and the step times."""
    import hashlib
    import time

    os.environ.update(pins.get("env", {}))
    import torch

    if "EMULATED_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["EMULATED_THREADS"]))
    if pins.get("gemm_convolutions"):  # oneDNN and NNPACK pick kernels by ISA and cache size: im2col + MKL
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
    if pins.get("threads"):
        torch.set_num_threads(pins["threads"])
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(128, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 20, (128,), generator=generator)
    torch.manual_seed(0)
    model = build(arch).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    times, logits = [], {}
    for step in range(iterations):
        if probes and step & (step - 1) == 0:  # steps 0, 1, 2, 4, 8, ...: the model's outputs on a fixed batch
            model.eval()
            with torch.no_grad():
                logits[str(step)] = model(images[:32]).double().numpy()
            model.train()
        batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    if probes:
        import numpy as np

        np.savez(probes, **logits)
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.contiguous().numpy().tobytes())
    return {"weights": digest.hexdigest()[:16], "step_s": statistics.median(times[2:] or times),
            "capability": torch.backends.cpu.get_cpu_capability()}


def run_child(iterations: int, pin_set: str, machine: dict, arch: str, lr: float = 0.05, probes: str = "") -> dict:
    env = {**os.environ, **machine}
    result = subprocess.run([sys.executable, __file__, "--child", pin_set, "--iterations", str(iterations),
                             "--arch", arch, "--lr", str(lr), "--probes", probes],
                            env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def divergence(iterations: int, arch: str, lr: float) -> None:
    """Relative difference of the outputs on a fixed batch, this machine against ATen at avx2 (the
    smallest emulated change), at steps 0, 1, 2, 4, ...: rounding that training damps stays near
    1e-7; rounding it amplifies grows to the size of the outputs themselves."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"{i}.npz") for i in range(2)]
        for path, machine in zip(paths, (MACHINES["this machine"], MACHINES["ATen avx2"])):
            run_child(iterations, "none", machine, arch, lr, path)
        first, second = (np.load(p) for p in paths)
        steps = sorted(first.files, key=int)
        drift = [float(np.linalg.norm(first[s] - second[s]) / np.linalg.norm(first[s])) for s in steps]
    print(f"{arch}, lr {lr}: relative output difference, this machine vs ATen avx2, by step: "
          + ", ".join(f"{s}: {d:.1e}" for s, d in zip(steps, drift)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--pin-sets", nargs="+", default=list(PIN_SETS), choices=list(PIN_SETS))
    parser.add_argument("--arch", choices=["resnet18", "vit"], default="resnet18")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--divergence", action="store_true",
                        help="instead: how far two emulated machines' outputs drift apart over the steps, unpinned")
    parser.add_argument("--child", choices=list(PIN_SETS), help=argparse.SUPPRESS)
    parser.add_argument("--probes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train(args.iterations, PIN_SETS[args.child], args.arch, args.lr, args.probes)))
        return
    if args.divergence:
        divergence(args.iterations, args.arch, args.lr)
        return
    unpinned_step = None
    for pin_set in args.pin_sets:
        results = {name: run_child(args.iterations, pin_set, machine, args.arch) for name, machine in MACHINES.items()}
        first = results["this machine"]
        identical = [name for name, r in results.items() if r["weights"] == first["weights"]]
        step = statistics.median(r["step_s"] for r in results.values())
        unpinned_step = step if pin_set == "none" else unpinned_step
        cost = f", x{step / unpinned_step:.2f} the unpinned step" if unpinned_step and pin_set != "none" else ""
        print(f"pins {pin_set!r}: {len(identical)} of {len(results)} emulated machines give this machine's weights; "
              f"median step {step:.3f} s{cost}")
        for name, r in results.items():
            print(f"  {name:24s} {'same' if r['weights'] == first['weights'] else 'DIFFERENT':9s} "
                  f"{r['step_s']:.3f} s/step (ATen {r['capability']})")


if __name__ == "__main__":
    main()
