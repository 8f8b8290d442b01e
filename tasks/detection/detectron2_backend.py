"""Optional detectron2 backend: torchvision ResNet weights -> detectron2 R-C4 names, and a run.

``convert_to_detectron2`` renames a torchvision ResNet state dict to the names of detectron2's
C4 model (GeneralizedRCNN with Res5ROIHeads): conv1/bn1 -> backbone.stem.conv1(.norm),
layer1..layer3 -> backbone.res2..res4, layer4 -> roi_heads.res5, bnK -> convK.norm (FrozenBN keeps
weight, bias, running_mean, running_var), downsample.0/1 -> shortcut(.norm); the classifier
(fc) and num_batches_tracked are dropped. torchvision puts the stride in the 3x3 conv, so the
detectron2 config needs RESNETS.STRIDE_IN_1X1 False, and RGB input with torchvision's mean/std.

``run_detectron2`` trains and evaluates detectron2's Faster R-CNN R-C4 (RPN proposals, as VISSL's
detectron2 configs) with the converted weights. It runs only where detectron2 is installed; the
test suite checks the renaming, not a detectron2 run (detectron2 is not installed here).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.paths import inside

from . import NAME

INSTALL = ("the detectron2 backend needs detectron2, which is not on PyPI: install it from source, "
           "pip install 'git+https://github.com/facebookresearch/detectron2.git' (matching your torch/CUDA), "
           "or use backend: torchvision (the default)")

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise ConfigError(f"{NAME}: backend: detectron2 requested but detectron2 is not importable; "
                          f"{INSTALL}") from None


def _block_part(rest: str) -> str:
    match = re.match(r"^bn(\d+)\.(weight|bias|running_mean|running_var)$", rest)
    if match:
        return f"conv{match.group(1)}.norm.{match.group(2)}"
    match = re.match(r"^conv(\d+)\.weight$", rest)
    if match:
        return rest
    if rest == "downsample.0.weight":
        return "shortcut.weight"
    match = re.match(r"^downsample\.1\.(weight|bias|running_mean|running_var)$", rest)
    if match:
        return f"shortcut.norm.{match.group(1)}"
    raise KeyError(rest)


def convert_key(key: str) -> str | None:
    """detectron2 C4 name of a torchvision ResNet key; None for keys detectron2 does not use."""
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
        return None
    if key == "conv1.weight":
        return "backbone.stem.conv1.weight"
    match = re.match(r"^bn1\.(weight|bias|running_mean|running_var)$", key)
    if match:
        return f"backbone.stem.conv1.norm.{match.group(1)}"
    match = _BLOCK.match(key)
    if match:
        stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
        try:
            part = _block_part(rest)
        except KeyError:
            raise ConfigError(f"cannot convert torchvision key {key!r} to detectron2: unknown block part {rest!r}") from None
        prefix = "roi_heads.res5" if stage == 4 else f"backbone.res{stage + 1}"
        return f"{prefix}.{block}.{part}"
    raise ConfigError(f"cannot convert torchvision key {key!r} to detectron2 R-C4 names (not a ResNet key)")


def convert_to_detectron2(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        new = convert_key(key)
        if new is not None:
            out[new] = value.detach().cpu().numpy()
    return out


def write_detectron2_checkpoint(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """The .pkl detectron2's DetectionCheckpointer reads (exact names, no matching heuristics)."""
    from benchmark.results import atomic_write_bytes

    content = {"model": convert_to_detectron2(state_dict), "__author__": "ssl-bench", "matching_heuristics": False}
    atomic_write_bytes(Path(path), pickle.dumps(content, protocol=4))
    return Path(path)


def run_detectron2(options: Mapping, splits: Sequence[tuple[str, str]], out_root: Path, ctx, model,
                   mode: str) -> list[dict]:  # pragma: no cover - needs detectron2
    """Train and evaluate detectron2's R-C4 on ``splits`` ((year, split) pairs: the training sets,
    then the test set) with the task's ``options``; files go under ``out_root`` (one folder per
    mode and configuration)."""
    require_detectron2()
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import register_pascal_voc
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
    from detectron2.data import build_detection_test_loader

    from benchmark.config import config_hash
    from benchmark.datasets.voc import VOC_CLASSES, resolve_voc_root
    from .train import resolve_schedule

    cfg_opts = options
    depth = {"resnet50": 50, "resnet101": 101, "resnet152": 152}.get(model.arch.name)
    if depth is None:
        raise ConfigError(f"{NAME} backend detectron2: detectron2's Res5ROIHeads needs a bottleneck "
                          f"ResNet (resnet50/101/152); {model.arch.name} is not. Use backend: torchvision")
    schedule = resolve_schedule(cfg_opts["schedule"], cfg_opts["train_set"],
                                **{k: cfg_opts[k] for k in ("iterations", "milestones", "base_lr", "batch_size",
                                                            "warmup_iterations", "weight_decay")})
    fingerprint = config_hash({"weights": model.weights, "mode": mode, "options": cfg_opts, "seed": ctx.seed})
    out_dir = inside(out_root, f"detectron2-{mode}-{fingerprint}")
    weights = write_detectron2_checkpoint(model.backbone.model.state_dict(), out_dir / "converted.pkl")
    names = []
    for year, split in splits:
        name = f"sslbench_voc_{year}_{split}"
        if name not in MetadataCatalog.list():
            register_pascal_voc(name, str(resolve_voc_root(ctx.data_root, year)), split, int(year), VOC_CLASSES)
        names.append(name)
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = {"frozen": 4, "finetune": 0}[mode] if cfg_opts["freeze_at"] is None else cfg_opts["freeze_at"]
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(VOC_CLASSES)
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (cfg_opts["scale"],), cfg_opts["max_size"]
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = cfg_opts["scale"], cfg_opts["max_size"]
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(names[:-1]), (names[-1],)
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = schedule.batch_size, schedule.lr
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = schedule.iterations, tuple(schedule.milestones)
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.CHECKPOINT_PERIOD = schedule.warmup_iterations, cfg_opts["checkpoint_every"]
    cfg.MODEL.DEVICE = ctx.device.type
    cfg.SEED = ctx.seed
    cfg.OUTPUT_DIR = str(out_dir)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=True)  # detectron2's own checkpoints: resumes after an interruption
    trainer.train()
    evaluator = PascalVOCDetectionEvaluator(names[-1])
    results = inference_on_dataset(trainer.model, build_detection_test_loader(cfg, names[-1]), evaluator)["bbox"]
    common = {"dataset": "voc07", "layer": mode, "mode": mode, "train_set": cfg_opts["train_set"],
              "proposals": "rpn(detectron2 faster r-cnn)", "backend": "detectron2", "schedule": schedule.name,
              "iterations": schedule.iterations, "batch_size": schedule.batch_size, "lr": schedule.lr}
    # detectron2's VOC evaluator: AP50 is the VOC07 11-point mAP for 2007; AP is the mean over IoU 0.5:0.95
    return [{**common, "metric": "mAP", "class": "", "value": float(results["AP50"]),
             "ap_definition": "voc07-11point-iou0.5"},
            {**common, "metric": "mAP50_95", "class": "", "value": float(results["AP"]),
             "ap_definition": "detectron2-voc-0.50:0.95"}]
