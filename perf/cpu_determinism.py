"""Can a CPU training give the same bits on another x86-64 machine, and at what cost?

A ResNet-18 (or the mini suite's ViT-Tiny) at 64 px (batch 32, SGD momentum 0.9, 20 classes,
BatchNorm in train mode) trains for --iterations steps on seeded data, in one child process per
(pin set, emulated machine). A machine is emulated by the environment a process starts with: ATen's
kernel level, oneDNN's and MKL's instruction sets, the thread count. A pin set is what the training
process does to itself before and after importing torch. For every pin set the script prints, per
emulated machine, whether the final weights are bit-identical to the first machine's, and the
median seconds per step beside the unpinned training's (the cost of the pins, measured in the same
run).

    python perf/cpu_determinism.py --iterations 8
    python perf/cpu_determinism.py --arch vit --pin-sets none   # the mini suite's ViT-Tiny (4 blocks)
    python perf/cpu_determinism.py --divergence --iterations 64 [--arch vit] [--lr 0.005] [--dtype float64]
    python perf/cpu_determinism.py --amplification --iterations 32 [--dtype float64]
    python perf/cpu_determinism.py --voc data/synth --iterations 1 --dtype float64   # epochs here
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

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


def train(iterations: int, pins: dict, arch: str, lr: float = 0.05, probes: str = "", dtype: str = "float32") -> dict:
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
    images = torch.randn(128, 3, 64, 64, generator=generator).to(getattr(torch, dtype))
    labels = torch.randint(0, 20, (128,), generator=generator)
    torch.manual_seed(0)
    model = build(arch).to(getattr(torch, dtype)).train()
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


def run_child(iterations: int, pin_set: str, machine: dict, arch: str, lr: float = 0.05, probes: str = "",
              dtype: str = "float32") -> dict:
    env = {**os.environ, **machine}
    result = subprocess.run([sys.executable, __file__, "--child", pin_set, "--iterations", str(iterations),
                             "--arch", arch, "--lr", str(lr), "--probes", probes, "--dtype", dtype],
                            env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def divergence(iterations: int, arch: str, lr: float, dtype: str = "float32") -> None:
    """Relative difference of the outputs on a fixed batch, this machine against ATen at avx2 (the
    smallest emulated change), at steps 0, 1, 2, 4, ...: rounding that training damps stays near
    1e-7; rounding it amplifies grows to the size of the outputs themselves."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"{i}.npz") for i in range(2)]
        for path, machine in zip(paths, (MACHINES["this machine"], MACHINES["ATen avx2"])):
            run_child(iterations, "none", machine, arch, lr, path, dtype)
        first, second = (np.load(p) for p in paths)
        steps = sorted(first.files, key=int)
        drift = [float(np.linalg.norm(first[s] - second[s]) / np.linalg.norm(first[s])) for s in steps]
    print(f"{arch} {dtype}, lr {lr}: relative output difference, this machine vs ATen avx2, by step: "
          + ", ".join(f"{s}: {d:.1e}" for s, d in zip(steps, drift)))


def train_on_voc(data_root: str, epochs: int, dtype: str, out: str) -> None:
    """The child of --voc: the supervised pretrainer's recipe (ResNet-18, 64 px crops, BCE, SGD
    with Nesterov momentum) on the generated VOC07 trainval through the project's data pipeline;
    saves the eval-mode outputs on the first batch and prints a hash of every input batch."""
    import hashlib

    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from benchmark.datasets.images import ImageFileDataset, train_transform
    from benchmark.datasets.voc import load_voc
    from benchmark.models import create_model
    from benchmark.training import seed_everything, seed_worker
    from pretrainers.supervised import replace_head

    dtype = getattr(torch, dtype)
    data = load_voc(Path(data_root), "trainval")
    generator = seed_everything(0)
    model = create_model("resnet18", seed=0)
    replace_head(model, data.labels.shape[1])
    model = model.to(dtype).train()
    targets = torch.as_tensor(data.labels == 1, dtype=dtype)
    loader = DataLoader(ImageFileDataset(data.image_paths, train_transform(64, (0.35, 1.0)), targets), batch_size=32,
                        shuffle=True, drop_last=True, num_workers=2, worker_init_fn=seed_worker, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    first, digest = None, hashlib.sha256()
    for _ in range(epochs):
        for images, labels in loader:
            images = images.to(dtype)
            digest.update(images.numpy().tobytes())
            first = images if first is None else first
            optimizer.zero_grad(set_to_none=True)
            nn.functional.binary_cross_entropy_with_logits(model(images), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        torch.save(model(first).double(), out)
    print(json.dumps({"inputs": digest.hexdigest()[:16]}))


def voc_divergence(data_root: str, epochs: int, dtype: str) -> None:
    """This machine against ATen, oneDNN and MKL at AVX2: are the input batches the same bits, and
    how far apart are the two trainings' outputs after ``epochs`` epochs?"""
    import tempfile

    import torch

    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    with tempfile.TemporaryDirectory() as folder:
        results = []
        for index, machine in enumerate(({}, avx2)):
            out = os.path.join(folder, f"{index}.pt")
            child = subprocess.run([sys.executable, __file__, "--voc-child", data_root, "--iterations", str(epochs),
                                    "--dtype", dtype, "--probes", out], env={**os.environ, **machine},
                                   capture_output=True, text=True, check=True)
            results.append((json.loads(child.stdout.strip().splitlines()[-1])["inputs"], torch.load(out)))
    (inputs_a, a), (inputs_b, b) = results
    print(f"supervised recipe on {data_root}, {epochs} epoch(s), {dtype}: input batches "
          f"{'bit-identical' if inputs_a == inputs_b else 'DIFFERENT'}; relative output difference, this machine "
          f"vs AVX2: {float((a - b).norm() / a.norm()):.1e}")


def amplification(iterations: int, lr: float, dtype: str) -> None:
    """In one process: ResNet-18 trained twice, on the same images and on the images times
    (1 + 1e-7 noise), and the relative difference of the two weight updates (weights minus the
    initial ones) by step; for torchvision's ResNet-18 and for variants without its switches
    (ReLU replaced by GELU, the max-pool removed, BatchNorm replaced by GroupNorm)."""
    import torch
    import torchvision
    from torch import nn

    torch.set_num_threads(1)
    dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(128, 3, 64, 64, generator=generator).to(dtype)
    labels = torch.randint(0, 20, (128,), generator=generator)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(5)).to(dtype)

    def build(variant: str) -> nn.Module:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=20)
        if "no max-pool" in variant:
            model.maxpool = nn.Identity()
        for module in list(model.modules()):
            for name, child in module.named_children():
                if "GELU" in variant and isinstance(child, nn.ReLU):
                    setattr(module, name, nn.GELU())
                if "GroupNorm" in variant and isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, nn.GroupNorm(8, child.num_features))
        return model.to(dtype).train()

    def updates(variant: str, inputs: torch.Tensor) -> dict[int, torch.Tensor]:
        model = build(variant)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        initial = torch.cat([p.detach().flatten().double() for p in model.parameters()])
        seen = {}
        for step in range(1, iterations + 1):
            batch = slice(32 * ((step - 1) % 4), 32 * ((step - 1) % 4 + 1))
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
            if step & (step - 1) == 0:
                seen[step] = torch.cat([p.detach().flatten().double() for p in model.parameters()]) - initial
        return seen

    for variant in ("ResNet-18", "GELU", "no max-pool", "GroupNorm", "GELU, no max-pool"):
        clean, perturbed = updates(variant, images), updates(variant, images * (1 + 1e-7 * noise))
        drift = {s: float((clean[s] - perturbed[s]).norm() / clean[s].norm()) for s in clean}
        print(f"{variant:18s} {dtype}: relative difference of the weight updates after a 1e-7 input change, by step: "
              + ", ".join(f"{s}: {d:.1e}" for s, d in drift.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--pin-sets", nargs="+", default=list(PIN_SETS), choices=list(PIN_SETS))
    parser.add_argument("--arch", choices=["resnet18", "vit"], default="resnet18")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="the training's floating-point type (float64: rounding starts 1e9 times smaller)")
    parser.add_argument("--divergence", action="store_true",
                        help="instead: how far two emulated machines' outputs drift apart over the steps, unpinned")
    parser.add_argument("--amplification", action="store_true",
                        help="instead: how much a 1e-7 change of the images moves ResNet-18's training, and "
                             "variants without ReLU / max-pool / BatchNorm (one process, one thread)")
    parser.add_argument("--voc", metavar="DATA_ROOT",
                        help="instead: the supervised recipe on generated VOC07 (ssl-bench data synth voc07) for "
                             "--iterations epochs, this machine against AVX2 (input bits and output drift)")
    parser.add_argument("--voc-child", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=list(PIN_SETS), help=argparse.SUPPRESS)
    parser.add_argument("--probes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train(args.iterations, PIN_SETS[args.child], args.arch, args.lr, args.probes, args.dtype)))
        return
    if args.divergence:
        divergence(args.iterations, args.arch, args.lr, args.dtype)
        return
    if args.voc_child:
        train_on_voc(args.voc_child, args.iterations, args.dtype, args.probes)
        return
    if args.voc:
        voc_divergence(args.voc, args.iterations, args.dtype)
        return
    if args.amplification:
        amplification(args.iterations, args.lr, args.dtype)
        return
    unpinned_step = None
    for pin_set in args.pin_sets:
        results = {name: run_child(args.iterations, pin_set, machine, args.arch, dtype=args.dtype)
                   for name, machine in MACHINES.items()}
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
