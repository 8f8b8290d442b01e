"""Optional detectron2 backend: torchvision ResNet weights -> detectron2 R-C4 names, and a run.

``convert_to_detectron2`` renames a torchvision ResNet state dict to the names of detectron2's
C4 model (GeneralizedRCNN with Res5ROIHeads): conv1/bn1 -> backbone.stem.conv1(.norm),
layer1..layer3 -> backbone.res2..res4, layer4 -> roi_heads.res5, bnK -> convK.norm (FrozenBN keeps
weight, bias, running_mean, running_var), downsample.0/1 -> shortcut(.norm); the classifier
(fc) and num_batches_tracked are dropped. torchvision puts the stride in the 3x3 conv, so the
detectron2 config needs RESNETS.STRIDE_IN_1X1 False, and RGB input with torchvision's mean/std.

``run_detectron2`` trains and evaluates detectron2's Faster R-CNN R-C4 (RPN proposals, as VISSL's
detectron2 configs) with the converted weights, after checking that they load strictly (every
converted key is a model key of the same shape; only the RPN and the box predictor are left to
their initialisation). detectron2 is optional: ``make detectron2`` (tools/build_detectron2.py)
builds it from its PyPI sdist, or install it from GitHub; the slow test
tests/tasks/detection/test_detectron2.py runs the backend end to end.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import pickle
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from benchmark.errors import CheckpointError, ConfigError
from benchmark.options import Options
from benchmark.paths import inside

from . import NAME

INSTALL = ("install it with `make detectron2` in the ssl-bench clone (builds detectron2 0.6 from its PyPI sdist "
           "into ~/.cache/ssl-bench/wheelhouse; tools/build_detectron2.py), or where GitHub is reachable with "
           "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
           "(after torch; it builds against the installed torch), or use backend: torchvision (the default)")
# detectron2 model keys that have no counterpart in a classification trunk: the new heads
NEW_HEADS = ("proposal_generator.", "roi_heads.box_predictor.")
# options that do not change the trained detector: a checkpoint made with others is resumed
RESULT_NEUTRAL = ("checkpoint_every", "cache_features_mb", "evaluate_untrained", "modes")

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
            raise ConfigError(f"cannot convert torchvision key {key!r} to detectron2: "
                              f"unknown block part {rest!r}") from None
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
    from benchmark.paths import atomic_write

    content = {"model": convert_to_detectron2(state_dict), "__author__": "ssl-bench", "matching_heuristics": False}
    atomic_write(Path(path), pickle.dumps(content, protocol=4))
    return Path(path)


def check_arch(arch: str) -> int:
    """detectron2's ResNet depth for a registry architecture name; others are an error."""
    depth = {"resnet50": 50, "resnet101": 101, "resnet152": 152}.get(arch)
    if depth is None:
        raise ConfigError(f"{NAME} backend detectron2: detectron2's Res5ROIHeads needs a bottleneck "
                          f"ResNet (resnet50/101/152); {arch} is not. Use backend: torchvision")
    return depth


def check_converted_weights(model_shapes: Mapping[str, tuple], converted: Mapping[str, np.ndarray],
                            source: str = "the converted weights") -> list[str]:
    """Strict loading, which detectron2's checkpointer does not do (it logs and skips unknown,
    missing and mis-shaped keys): every converted key must be a model key of the same shape, and
    the model keys left out may only be the new heads (``NEW_HEADS``). Returns those left-out keys
    (what keeps its random initialisation); anything else is an error listing the keys."""
    unexpected = sorted(k for k in converted if k not in model_shapes)
    mismatched = sorted(f"{k}: {tuple(np.shape(converted[k]))} vs model {tuple(model_shapes[k])}"
                        for k in converted
                        if k in model_shapes and tuple(np.shape(converted[k])) != tuple(model_shapes[k]))
    untouched = sorted(k for k in model_shapes if k not in converted)
    missing = [k for k in untouched if not k.startswith(NEW_HEADS)]
    problems = []
    for what, keys in (("not in detectron2's model", unexpected), ("shape differs", mismatched),
                       ("model keys without a converted weight (only the new heads "
                        f"{', '.join(p.rstrip('.') + '.*' for p in NEW_HEADS)} may be)", missing)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            problems.append(f"{len(keys)} {what}: {shown}")
    if problems:
        raise CheckpointError(f"{NAME} backend detectron2: {source} do not load strictly into detectron2's R-C4 "
                              f"model (RESNETS.DEPTH/STRIDE_IN_1X1 or the renaming disagree): " + "; ".join(problems))
    return untouched


def dataloader_workers(requested: int) -> int:
    """The suite's ``num_workers``, capped by the cores this process may use (benchmark.cpus: its
    affinity mask, a cgroup quota, SLURM_CPUS_PER_TASK; not the machine's count) minus one for the
    training process itself; detectron2's default of 4 workers oversubscribes a 2-core machine."""
    from benchmark.cpus import usable_cpus

    return max(0, min(int(requested), usable_cpus()[0] - 1))


def detectron2_version() -> dict[str, str]:
    """detectron2's own version, and its installed distribution's (``0.6+sslbench1`` for the wheel
    that ``make detectron2`` builds; upstream's version for a GitHub install)."""
    import detectron2

    try:
        distribution = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source tree on PYTHONPATH
        distribution = ""
    return {"detectron2_version": str(detectron2.__version__), "detectron2_distribution": distribution}


def detections_from_voc_lines(predictions: Mapping[int, Sequence[str]], ids: Sequence[str]) -> dict[str, np.ndarray]:
    """detectron2's PascalVOCDetectionEvaluator lines (``image_id score xmin+1 ymin+1 xmax ymax`` per
    0-based class index: exactly what its AP is computed from) -> ssl-bench's detections arrays
    (image index into ``ids``, 1-based label, score, continuous 0-based boxes: VOC's
    ``[xmin - 1, ymin - 1, xmax, ymax]``, the convention of tasks/detection/evaluate.py)."""
    index = {image_id: i for i, image_id in enumerate(ids)}
    images, labels, scores, boxes = [], [], [], []
    for cls in sorted(predictions):
        for line in predictions[cls]:
            image_id, score, x1, y1, x2, y2 = line.split(" ")
            images.append(index[image_id])
            labels.append(int(cls) + 1)
            scores.append(float(score))
            boxes.append([float(x1) - 1, float(y1) - 1, float(x2), float(y2)])
    return {"images": np.asarray(images, np.int64), "labels": np.asarray(labels, np.int64),
            "scores": np.asarray(scores, np.float64), "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
            "ids": np.asarray(ids)}


def register_voc_split(data_root: Path, year: str, split: str) -> str:
    """The name of a VOC split in detectron2's DatasetCatalog, registered once. Catalog names are
    global to the process: one per dataset folder, so another data root never reuses this one's."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_pascal_voc

    from benchmark.datasets.voc import VOC_CLASSES, resolve_voc_root

    root = resolve_voc_root(data_root, year)
    name = f"sslbench_voc_{year}_{split}_{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]}"
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, str(root), split, int(year), list(VOC_CLASSES))
    return name


def run_detectron2(options: Options, splits: Sequence[tuple[str, str]], out_root: Path, ctx, model,
                   mode: str) -> list[dict]:  # pragma: no cover - runs in the slow test, where detectron2 is
    """Train and evaluate detectron2's R-C4 on ``splits`` ((year, split) pairs: the training sets,
    then the test set) with the task's ``options``; files go under ``out_root`` (one folder per
    mode and configuration). A rerun resumes from detectron2's last checkpoint there."""
    require_detectron2()
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
    from detectron2.utils.env import seed_all_rng

    from benchmark.config import config_hash
    from benchmark.datasets.voc import VOC_CLASSES, load_voc
    from benchmark.paths import atomic_write
    from .data import DetectionData
    from .train import resolve_schedule

    cfg_opts = options
    depth = check_arch(model.arch.name)
    schedule = resolve_schedule(cfg_opts.schedule, cfg_opts.train_set,
                                **{k: cfg_opts[k] for k in ("iterations", "milestones", "base_lr", "batch_size",
                                                            "warmup_iterations", "weight_decay")})
    version = detectron2_version()
    workers = dataloader_workers(ctx.num_workers)
    fingerprint = config_hash({"weights": model.weights, "arch": model.arch.name, "mode": mode, "seed": ctx.seed,
                               "options": {k: v for k, v in cfg_opts.items() if k not in RESULT_NEUTRAL},
                               "detectron2": version["detectron2_distribution"] or version["detectron2_version"]})
    out_dir = inside(out_root, f"detectron2-{mode}-{fingerprint}")
    converted = convert_to_detectron2(model.backbone.model.state_dict())
    weights = write_detectron2_checkpoint(model.backbone.model.state_dict(), out_dir / "converted.pkl")
    names = [register_voc_split(ctx.data_root, year, split) for year, split in splits]
    freeze_at = {"frozen": 4, "finetune": 0}[mode] if cfg_opts.freeze_at is None else cfg_opts.freeze_at
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [list(cfg_opts.rpn_anchor_sizes)]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = min(cfg_opts.rpn_post_nms, cfg_opts.proposal_limit_train)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = min(cfg_opts.rpn_post_nms, cfg_opts.proposal_limit_test)
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(VOC_CLASSES)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = cfg_opts.rois_per_image
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = cfg_opts.fg_fraction
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = cfg_opts.roi_size
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = cfg_opts.sampling_ratio
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = {"pool": "ROIPool", "align": "ROIAlignV2"}[cfg_opts.roi_op]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (cfg_opts.scale,), cfg_opts.max_size
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = cfg_opts.scale, cfg_opts.max_size
    cfg.INPUT.RANDOM_FLIP = "horizontal" if cfg_opts.flip else "none"
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(names[:-1]), (names[-1],)
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = schedule.batch_size, schedule.lr
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = schedule.iterations, tuple(schedule.milestones)
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = schedule.warmup_iterations, schedule.warmup_factor
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM = schedule.weight_decay, schedule.momentum
    cfg.SOLVER.GAMMA = schedule.gamma
    cfg.SOLVER.CHECKPOINT_PERIOD = cfg_opts.checkpoint_every
    cfg.MODEL.DEVICE = str(ctx.device)
    cfg.SEED = ctx.seed
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.freeze()
    atomic_write(out_dir / "config.yaml", cfg.dump())  # detectron2's full config, for rerunning its tools
    # DefaultTrainer seeds nothing itself (default_setup does, which needs command-line args): the
    # heads' initialisation and the data order (its sampler draws its seed from numpy) follow the run seed
    seed_all_rng(ctx.seed)
    trainer = DefaultTrainer(cfg)
    shapes = {k: tuple(v.shape) for k, v in trainer.model.state_dict().items()}
    initialised = check_converted_weights(shapes, converted, f"the weights of {model.name}")
    trainer.resume_or_load(resume=True)  # detectron2's own checkpoints: resumes after an interruption
    trainer.train()
    evaluator = PascalVOCDetectionEvaluator(names[-1])
    results = inference_on_dataset(trainer.model, build_detection_test_loader(cfg, names[-1]), evaluator)["bbox"]
    test = DetectionData.from_voc([load_voc(ctx.data_root, splits[-1][1], year=splits[-1][0])])
    test_ids = list(test.ids)
    positives = np.zeros(len(VOC_CLASSES), np.int64)
    for gt in test.ground_truth:
        np.add.at(positives, np.asarray(gt.labels, np.int64)[~np.asarray(gt.difficult, bool)] - 1, 1)
    absent = [VOC_CLASSES[c] for c in np.flatnonzero(positives == 0)]
    buffer = io.BytesIO()  # the detections detectron2's AP was computed from, whole or absent
    np.savez_compressed(buffer, **detections_from_voc_lines(evaluator._predictions, test_ids))
    atomic_write(out_dir / "detections.npz", buffer.getvalue())
    atomic_write(out_dir / "initialised_keys.txt", "\n".join(initialised) + "\n")
    common = {"dataset": "voc07", "layer": mode, "mode": mode, "train_set": cfg_opts.train_set,
              "test_set": "voc07_test", "proposals": "rpn(detectron2 faster r-cnn, trained jointly)",
              "backend": "detectron2", **version, "freeze_at": freeze_at, "schedule": schedule.name,
              "iterations": schedule.iterations, "milestones": "/".join(str(m) for m in schedule.milestones),
              "batch_size": schedule.batch_size, "base_lr": schedule.base_lr, "lr": schedule.lr,
              "warmup_iterations": schedule.warmup_iterations, "scale": cfg_opts.scale,
              "max_size": cfg_opts.max_size, "roi_op": cfg_opts.roi_op, "roi_size": cfg_opts.roi_size,
              "rois_per_image": cfg_opts.rois_per_image, "num_workers": workers, "n_test": len(test_ids),
              "initialised_keys": len(initialised), "checkpoint": str(out_dir / "model_final.pth"),
              "detections": str(out_dir / "detections.npz"),
              # detectron2 averages over all 20 classes, a class without test ground truth as AP 0;
              # ssl-bench's evaluator leaves such a class out (VOC07 test has all 20)
              "note": "; ".join(f"{c}: no ground truth in test, counted as AP 0 by detectron2" for c in absent)}
    # detectron2's VOC evaluator: AP50 is the VOC07 11-point mAP for 2007; AP is the mean over IoU 0.5:0.95
    return [{**common, "metric": "mAP", "class": "", "value": float(results["AP50"]),
             "ap_definition": "voc07-11point-iou0.5"},
            {**common, "metric": "mAP50_95", "class": "", "value": float(results["AP"]),
             "ap_definition": "detectron2-voc-11point-iou0.50:0.95"}]
