"""``ssl-bench pretrain`` and ``ssl-bench list pretext``: added to the command line through the entry
point groups ``ssl_bench.commands`` and ``ssl_bench.listings``."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path


def add_pretrain_command(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser("pretrain", help="pretrain a trunk with a pretext method on a folder of images "
                                     "(resumes from OUT's .partial.pth)")
    pretrain.add_argument("method", help="rotation, jigsaw, simclr, moco, ... (ssl-bench list pretext)")
    pretrain.add_argument("--data", required=True, help="IMAGE_DIR (searched recursively) or voc07:trainval")
    pretrain.add_argument("--data-root", type=Path, default=Path("data"), help="where NAME:SPLIT datasets live")
    pretrain.add_argument("--arch", default="resnet50")
    pretrain.add_argument("--out", type=Path, required=True, help="checkpoint to write (+ .json, .log.csv)")
    pretrain.add_argument("--epochs", type=int, default=30)
    pretrain.add_argument("--batch-size", type=int, default=64)
    pretrain.add_argument("--lr", type=float, help="default: the method's paper value")
    pretrain.add_argument("--optimizer", choices=["sgd", "lars"], help="default: sgd (with momentum); lars: "
                          "SimCLR's large-batch optimiser (trust ratio on weight tensors, eta 0.001)")
    pretrain.add_argument("--image-size", type=int, default=224)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--device", default="auto")
    pretrain.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    pretrain.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints "
                          "(and one every epoch)")
    pretrain.add_argument("--opt", action="append", metavar="KEY=VALUE", help="a method option (YAML value), "
                          "repeatable, e.g. --opt temperature=0.2")
    pretrain.set_defaults(func=run_pretrain,
                          interrupted_hint="Run the same command again to resume from the last checkpoint.")


def run_pretrain(args) -> int:
    # imported here: building the parser must not load torch for every other sub-command
    from .trainer import parse_opts, train_pretext

    meta = train_pretext(args.method, args.data, args.out, arch=args.arch, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, seed=args.seed,
                         device=args.device, method_options=parse_opts(args.opt), num_workers=args.workers,
                         optimizer=args.optimizer,
                         checkpoint_every=args.checkpoint_every, data_root=args.data_root)
    print(f"wrote {args.out} ({meta['method']}, {meta['arch']}, {meta['epochs']} epochs on {meta['num_images']} "
          f"images; final pretext loss {meta['final_loss']:.4f}, metrics {meta['final_metrics']})")
    print(f"evaluate it with a suite model: {{pretrainer: checkpoint, arch: {meta['arch']}, path: {args.out}}}")
    return 0


def list_pretext_methods(pattern: str | None) -> list[str]:
    """Each registered method whose name matches ``pattern`` (all without one), with the first line
    of its module's docstring."""
    from .method import PRETEXT_METHODS

    lines = []
    for name in PRETEXT_METHODS.names():
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        doc = (sys.modules[PRETEXT_METHODS.get(name).__module__].__doc__ or "").strip()
        lines.append(f"{name:20s} {doc.splitlines()[0] if doc else ''}")
    return lines
