"""`detection_voc07`: Fast R-CNN ResNet-C4 object detection, VOC07 test 11-point mAP (Goyal et al.
2019, Section 6 and Table 6; the protocol is written up in docs/tasks/detection.md).

One unit per mode: ``frozen`` (conv1..res4 frozen, res5 box head and predictors trained, the
reference's FREEZE_AT 4) and ``finetune`` (every layer trained; BatchNorm frozen in both). The
detector is a copy of the benchmark's backbone (tasks.detection.model); proposals come from
Detectron-format files (the reference's Selective Search pickles), from Selective Search run
here (opencv-contrib), or from an RPN trained on the frozen res4 map (tasks.detection.rpn),
cached on disk. Training resumes from ``RUN_DIR/detection_voc07/<model>/<mode>-<fingerprint>/``.
Rows: VOC07 11-point AP (``AP``/``mAP``), all-point AP (``AP_all``/``mAP_all``) and COCO-style
AP50:95 (``AP50_95``/``mAP50_95``) per class and averaged, x100.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.config import config_hash
from benchmark.datasets.voc import VOC_CLASSES, load_voc
from benchmark.diskspace import training_checkpoint_bytes
from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.errors import ConfigError
from benchmark.options import Bool, Choice, Float, Int, ListOf, MappingOf, Str, declare
from benchmark.paths import atomic_write, inside

from . import NAME
from .evaluate import evaluate_detections, perturbed_ground_truth
from .proposals import (
    SS_INSTALL,
    cache_path,
    cached_proposals,
    clean_proposals,
    proposals_for,
    read_proposals,
    selective_search,
    selective_search_available,
    to_continuous,
)

if TYPE_CHECKING:
    from benchmark.models import Architecture

    from .data import DetectionData
    from .model import FastRCNNC4
    from .train import DetectionSetup

MODES = {"frozen": 4, "finetune": 0}  # mode -> default freeze_at
TRAIN_SETS = {"voc07": [("2007", "trainval")], "voc07+12": [("2007", "trainval"), ("2012", "trainval")]}
PROPOSAL_SOURCES = ("auto", "selective_search", "rpn", "files")
PROPOSAL_FILE_KEYS = ("voc07_trainval", "voc12_trainval", "voc07_test")
# the rows of the AP code scoring jittered ground truth (evaluator_check_rows), not the detector
PERTURBED_GROUND_TRUTH = "perturbed_ground_truth"
# options that do not change the trained detector (a checkpoint made with others is resumed)
RESULT_NEUTRAL = ("checkpoint_every", "cache_features_mb", "evaluate_untrained", "modes")
SCHEDULE_KEYS = ("iterations", "milestones", "base_lr", "batch_size", "warmup_iterations", "weight_decay")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class DetectionVOC07(Task):
    name = NAME
    dataset = "voc07"
    needs_gpu = True
    detail_title = "Detection (VOC07 test)"
    evaluator_checks = (PERTURBED_GROUND_TRUTH,)
    options = declare({
        "modes": ListOf(Choice(*MODES), ["frozen", "finetune"], min_length=1, unique=True),  # one unit each
        # voc07 (VOC2007 trainval) | voc07+12 (+ VOC2012 trainval); test: VOC2007 test
        "train_set": Choice(*TRAIN_SETS, default="voc07"),
        # torchvision | detectron2 (optional: `make detectron2`; its own jointly trained RPN, R50/101/152 only)
        "backend": Choice("torchvision", "detectron2"),
        # proposals: auto = selective_search when opencv-contrib is importable, else rpn; files = proposal_files
        "proposals": Choice(*PROPOSAL_SOURCES, default="auto"),
        # {voc07_trainval: path, voc12_trainval: path, voc07_test: path} (Detectron .pkl)
        "proposal_files": MappingOf({key: Str() for key in PROPOSAL_FILE_KEYS}, None),
        "proposal_limit_train": Int(2000, min=1),  # Detectron TRAIN/TEST.PROPOSAL_LIMIT
        "proposal_limit_test": Int(2000, min=1),
        "selective_search_mode": Choice("fast", "quality"),
        "rpn_iterations": Int(2000, min=1), "rpn_batch_size": Int(4, min=1),
        "rpn_lr": Float(0.01, min=0, min_open=True),
        "rpn_anchor_sizes": ListOf(Int(min=1), [32, 64, 128, 256, 512], min_length=1), "rpn_post_nms": Int(2000, min=1),
        # reference (VOC07 30k step 22k / VOC07+12 80k step 66k, batch 4) | custom
        "schedule": Choice("reference", "custom"),
        "iterations": Int(None, min=1), "milestones": ListOf(Int(min=1), None, increasing=True),
        "base_lr": Float(None, min=0), "batch_size": Int(None, min=1),
        "warmup_iterations": Int(None, min=0), "weight_decay": Float(None, min=0),
        "freeze_at": Int(None, min=0, max=5),  # None: the mode's (frozen 4, finetune 0)
        "scale": Int(600, min=1), "max_size": Int(1000, min=1), "flip": Bool(True),
        "size_multiple": Int(1, min=1),  # > 1: round image sides to a multiple (few shapes: faster CPU convolutions)
        "roi_op": Choice("pool", "align"),  # pool (Detectron's default RoIPoolF, the reference) | align
        "roi_size": Int(14, min=1), "sampling_ratio": Int(0, min=0), "rois_per_image": Int(64, min=1),
        "fg_fraction": Float(0.25, min=0, max=1, min_open=True),
        "checkpoint_every": Int(1000, min=1),
        # frozen mode: res4 maps of training images kept in memory up to this
        "cache_features_mb": Int(2048, min=0),
        "evaluate_untrained": Bool(False),  # also report the mAP of the untrained head (a floor)
    })

    # --- configuration -------------------------------------------------------------------------

    def modes(self) -> list[str]:
        return list(self.config.modes)

    def checkpoint_bytes(self, arch: Architecture) -> int:
        return training_checkpoint_bytes(arch.name)

    def units(self, arch: Architecture) -> list[str]:
        from .model import check_c4

        if arch.feature_maps is not None:  # the timm/<model> family (ViTs, ConvNeXt, timm's own ResNets)
            raise ConfigError(f"{self.name} is ResNet-only for now (a torchvision ResNet-C4 trunk); {arch.name} is a "
                              f"timm architecture. Use resnet50 (or resnet18/34/101/152) for this task, or give it "
                              f"a 'models:' list without this model")
        check_c4(arch.build(), arch.name)  # fail at planning time for a non-ResNet architecture
        if self.config.backend == "detectron2":
            from .detectron2_backend import check_arch

            check_arch(arch.name)
        return self.modes()

    def check_options(self) -> None:
        """What the declarations cannot say alone: installed back ends, and a schedule that fits."""
        from .train import resolve_schedule

        cfg = self.config
        if cfg.backend == "detectron2":
            from .detectron2_backend import require_detectron2

            require_detectron2()
            if cfg.proposals not in ("auto", "rpn"):
                raise ConfigError(f"{self.name}: backend: detectron2 trains its own RPN jointly (Faster R-CNN); "
                                  f"proposals: {cfg.proposals} applies to backend: torchvision only. Use "
                                  f"proposals: rpn (or auto) with detectron2, or backend: torchvision")
        if cfg.proposals == "selective_search" and not selective_search_available():
            raise ConfigError(f"{self.name}: proposals: selective_search, but cv2.ximgproc is not importable. "
                              f"{SS_INSTALL}; or use proposals: rpn / files")
        resolve_schedule(cfg.schedule, cfg.train_set, **{k: cfg[k] for k in SCHEDULE_KEYS})

    def split_names(self) -> list[tuple[str, str, str]]:
        """(year, split, proposal_files key) of the training splits and the test split."""
        train = [(year, split, f"voc{year[2:]}_{split}") for year, split in TRAIN_SETS[self.config.train_set]]
        return train + [("2007", "test", "voc07_test")]

    def proposal_file(self, ctx: RunContext, key: str) -> Path:
        files = self.config.proposal_files or {}
        if not isinstance(files, dict) or key not in files:
            raise ConfigError(f"{self.name}: proposals: files needs proposal_files.{key} (a Detectron-format "
                              f".pkl of that split); given: {sorted(files) if isinstance(files, dict) else files!r}")
        path = Path(files[key]).expanduser()
        return path if path.is_absolute() else ctx.data_root / path

    def check_data(self, ctx: RunContext) -> None:
        self.check_options()
        for year, split, key in self.split_names():
            load_voc(ctx.data_root, split, year=year)
            if self.config.proposals == "files":
                path = self.proposal_file(ctx, key)
                if not path.is_file():
                    raise ConfigError(f"{self.name}: proposal file {path} (proposal_files.{key}) does not exist")

    # --- proposals -----------------------------------------------------------------------------

    def source(self) -> str:
        source = self.config.proposals
        if source == "auto":
            return "selective_search" if selective_search_available() else "rpn"
        return source

    def proposals(self, ctx: RunContext, model: LoadedModel, splits: dict, features: dict | None,
                  setup: DetectionSetup) -> tuple[dict, dict]:
        """{part: list of inclusive-pixel box arrays, list of scores} for 'train' and 'test', and the
        identity of the proposals (part of the run's fingerprint)."""
        cfg, source = self.config, self.source()
        root = ctx.cache.root
        out, identity = {}, {"source": source}
        if source == "files":
            for part, entries in splits.items():
                boxes, scores = [], []
                for key, data in entries:
                    path = self.proposal_file(ctx, key)
                    b, s = proposals_for(read_proposals(path), data.ids, f"proposal file {path}")
                    boxes += b
                    scores += s
                    identity[key] = _file_digest(path)
                out[part] = (boxes, scores)
        elif source == "selective_search":
            mode, limit = cfg.selective_search_mode, max(cfg.proposal_limit_train, cfg.proposal_limit_test)
            for part, entries in splits.items():
                boxes, scores = [], []
                for key, data in entries:
                    ident = {"generator": "selective_search", "mode": mode, "max": limit, "data": data.fingerprint()}
                    b, s = cached_proposals(cache_path(root, ident), data.ids,
                                            lambda d=data: _selective_search_all(d, mode, limit))
                    boxes += b
                    scores += s
                    identity[key] = ident
                out[part] = (boxes, scores)
        else:
            out, identity = self.rpn_proposals(ctx, model, splits, features, setup)
        return out, identity

    def rpn_proposals(self, ctx, model, splits, features, setup):
        from .model import FastRCNNC4
        from .rpn import RPNSettings, propose, train_rpn
        from .train import ImageFeatures

        cfg = self.config
        settings = RPNSettings(iterations=cfg.rpn_iterations, batch_size=cfg.rpn_batch_size, lr=cfg.rpn_lr,
                               anchor_sizes=tuple(cfg.rpn_anchor_sizes), post_nms=cfg.rpn_post_nms)
        train_data = _joined([d for _, d in splits["train"]])
        test_data = splits["test"][0][1]
        ident = {"generator": "rpn", "weights": model.weights, "arch": model.arch.name, "rpn": settings.describe(),
                 "scale": setup.scale, "max_size": setup.max_size, "flip": setup.flip, "seed": ctx.seed,
                 "train": train_data.fingerprint()}
        paths = {part: cache_path(ctx.cache.root, {**ident, "part": part, "data": data.fingerprint()})
                 for part, data in (("train", train_data), ("test", test_data))}
        if not all(p.exists() for p in paths.values()):
            if features is None:  # fine-tuning: the RPN still sees the frozen, unchanged res4 map
                frozen = FastRCNNC4(model.backbone.model, model.arch.name, freeze_at=4).to(ctx.device)
                features = {"train": ImageFeatures(frozen, train_data, setup, ctx.device, setup.cache_features_mb),
                            "test": ImageFeatures(frozen, test_data, setup, ctx.device)}
            rpn = train_rpn(features["train"], train_data, settings, ctx.seed, setup.flip, ctx.device)
            boxes = {part: propose(rpn, features[part], data) for part, data in (("train", train_data),
                                                                                 ("test", test_data))}
        else:
            boxes = {}
        out = {}
        for part, data in (("train", train_data), ("test", test_data)):
            out[part] = cached_proposals(paths[part], data.ids, lambda p=part: boxes[p])
        return out, {"source": "rpn", **ident}

    # --- running -------------------------------------------------------------------------------

    def setup(self, ctx: RunContext, model: LoadedModel, mode: str, fingerprint: str = "") -> DetectionSetup:
        from .train import DetectionSetup, resolve_schedule

        cfg = self.config
        schedule = resolve_schedule(cfg.schedule, cfg.train_set, **{k: cfg[k] for k in SCHEDULE_KEYS})
        return DetectionSetup(schedule=schedule, seed=ctx.seed, scale=cfg.scale, max_size=cfg.max_size,
                              size_multiple=cfg.size_multiple,
                              flip=bool(cfg.flip), rois_per_image=cfg.rois_per_image,
                              fg_fraction=cfg.fg_fraction, checkpoint_every=cfg.checkpoint_every,
                              cache_features_mb=cfg.cache_features_mb, fingerprint=fingerprint,
                              desc=f"detection {model.name} {mode}")

    def detector(self, ctx: RunContext, model: LoadedModel, mode: str) -> FastRCNNC4:
        import torch

        from benchmark.training import derived_seed

        from .model import FastRCNNC4

        cfg = self.config
        freeze_at = MODES[mode] if cfg.freeze_at is None else cfg.freeze_at
        generator = torch.Generator().manual_seed(derived_seed(ctx.seed, 0xDE7))
        return FastRCNNC4(model.backbone.model, model.arch.name, num_classes=len(VOC_CLASSES), roi_size=cfg.roi_size,
                          roi_op=cfg.roi_op, sampling_ratio=cfg.sampling_ratio, freeze_at=freeze_at,
                          generator=generator)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from .data import DetectionData
        from .train import ImageFeatures, detect, mark_evaluated, train_detector

        self.check_options()
        if unit not in self.modes():
            raise ConfigError(f"{self.name}: unknown unit {unit!r}; units are the modes {self.modes()}")
        if self.config.backend == "detectron2":
            from .detectron2_backend import run_detectron2

            return run_detectron2(self.config, [(year, split) for year, split, _ in self.split_names()],
                                  inside(ctx.run_dir, self.name, model.name), ctx, model, unit)
        cfg, mode = self.config, unit
        names = self.split_names()
        loaded = [(key, DetectionData.from_voc([load_voc(ctx.data_root, split, year=year)]))
                  for year, split, key in names]
        splits = {"train": loaded[:-1], "test": loaded[-1:]}
        train_data, test_data = _joined([d for _, d in splits["train"]]), loaded[-1][1]
        detector = self.detector(ctx, model, mode).to(ctx.device)
        setup = self.setup(ctx, model, mode)
        # a frozen trunk's res4 maps are computed once, shared by the RPN, training and testing
        features = {"train": ImageFeatures(detector, train_data, setup, ctx.device, setup.cache_features_mb),
                    "test": ImageFeatures(detector, test_data, setup, ctx.device, setup.cache_features_mb)} \
            if detector.freeze_at >= 4 else None
        raw, identity = self.proposals(ctx, model, splits, features, setup)
        train_props = _cleaned(raw["train"], train_data, cfg.proposal_limit_train)
        test_props = _cleaned(raw["test"], test_data, cfg.proposal_limit_test)

        fingerprint = config_hash({"weights": model.weights, "arch": model.arch.name, "mode": mode,
                                   "freeze_at": detector.freeze_at, "seed": ctx.seed,
                                   "options": {k: v for k, v in cfg.items() if k not in RESULT_NEUTRAL},
                                   "setup": setup.__dict__ | {"schedule": setup.schedule.describe()},
                                   "proposals": identity, "train": train_data.fingerprint(),
                                   "test": test_data.fingerprint()})
        setup = self.setup(ctx, model, mode, fingerprint)
        out_dir = inside(ctx.run_dir, self.name, model.name, f"{mode}-{fingerprint}")
        untrained = None
        if cfg.evaluate_untrained:
            untrained = evaluate_detections(detect(detector, test_data, test_props, setup, ctx.device, "untrained",
                                                   features and features["test"]),
                                            test_data.ground_truth, len(VOC_CLASSES))
            detector.train()
        state = train_detector(detector, train_data, train_props, setup, out_dir, ctx.device,
                               features and features["train"])
        metrics = state.get("metrics")
        if metrics is None:
            detections = detect(detector, test_data, test_props, setup, ctx.device, f"detect {model.name}",
                                features and features["test"])
            buffer = io.BytesIO()  # whole or absent, also on a full disk
            np.savez_compressed(buffer, images=detections.images, labels=detections.labels,
                                scores=detections.scores, boxes=detections.boxes, ids=np.array(test_data.ids))
            atomic_write(out_dir / "detections.npz", buffer.getvalue())
            metrics = {k: torch.as_tensor(v) for k, v in
                       evaluate_detections(detections, test_data.ground_truth, len(VOC_CLASSES)).items()}
            mark_evaluated(out_dir, metrics)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        return self.rows(model, mode, detector, setup, identity, metrics, untrained, train_data, test_data,
                         train_props, test_props, out_dir) + evaluator_check_rows(test_data, mode)

    def rows(self, model, mode, detector, setup, identity, metrics, untrained, train_data, test_data,
             train_props, test_props, out_dir) -> list[dict]:
        cfg, schedule = self.config, setup.schedule
        common = {
            "dataset": "voc07", "layer": mode, "mode": mode, "train_set": cfg.train_set, "test_set": "voc07_test",
            "proposals": identity["source"], "backend": "torchvision", "freeze_at": detector.freeze_at,
            "schedule": schedule.name, "iterations": schedule.iterations,
            "milestones": "/".join(str(m) for m in schedule.milestones), "batch_size": schedule.batch_size,
            "base_lr": schedule.base_lr, "lr": schedule.lr, "warmup_iterations": schedule.warmup_iterations,
            "scale": setup.scale, "max_size": setup.max_size, "size_multiple": setup.size_multiple,
            "roi_op": cfg.roi_op, "roi_size": cfg.roi_size,
            "rois_per_image": setup.rois_per_image, "n_train": len(train_data), "n_test": len(test_data),
            "proposals_per_image_train": round(float(np.mean([len(p) for p in train_props])), 1),
            "proposals_per_image_test": round(float(np.mean([len(p) for p in test_props])), 1),
            "checkpoint": str(out_dir / "checkpoint.pt"), "log_csv": str(out_dir / "log.csv"),
        }
        rows = []
        for key, per_class, mean, definition in (("ap11", "AP", "mAP", "voc07-11point-iou0.5"),
                                                  ("ap_all", "AP_all", "mAP_all", "all-point-iou0.5"),
                                                  ("ap50_95", "AP50_95", "mAP50_95", "coco101-iou0.50:0.95")):
            values = metrics[key]
            for c, name in enumerate(VOC_CLASSES):
                rows.append({**common, "metric": per_class, "class": name, "value": 100 * float(values[c]),
                             "ap_definition": definition, "positives": int(metrics["positives"][c]),
                             "detections": int(metrics["detections"][c])})
            rows.append({**common, "metric": mean, "class": "", "value": 100 * float(np.nanmean(values)),
                         "ap_definition": definition, "positives": int(metrics["positives"].sum()),
                         "detections": int(metrics["detections"].sum()),
                         "note": "; ".join(f"{VOC_CLASSES[c]}: no ground truth in test, left out"
                                           for c in np.where(np.isnan(values))[0])})
        if untrained is not None:
            rows.append({**common, "metric": "mAP_untrained_head", "class": "",
                         "value": 100 * float(np.nanmean(untrained["ap11"])), "ap_definition": "voc07-11point-iou0.5"})
        return rows


def evaluator_check_rows(test_data: DetectionData, mode: str) -> list[dict]:
    """The evaluator on seeded, perturbed ground truth of the test set: exact rows that catch a
    change in the annotation reader or the AP computation even where trained numbers are noisy."""
    metrics = evaluate_detections(perturbed_ground_truth(test_data.ground_truth, len(VOC_CLASSES), seed=0),
                                  test_data.ground_truth, len(VOC_CLASSES))
    return [{"dataset": "voc07", "layer": mode, "metric": mean, "class": "",
             "value": 100 * float(np.nanmean(metrics[key])),
             "evaluation": PERTURBED_GROUND_TRUTH, "determinism": "exact", "ap_definition": definition,
             "n_test": len(test_data), "note": "ground truth with seeded jitter, misses and false positives: "
                                                "independent of the model"}
            for key, mean, definition in (("ap11", "mAP", "voc07-11point-iou0.5"),
                                          ("ap_all", "mAP_all", "all-point-iou0.5"),
                                          ("ap50_95", "mAP50_95", "coco101-iou0.50:0.95"))]


def _joined(parts: list[DetectionData]) -> DetectionData:
    from .data import DetectionData

    if len(parts) == 1:
        return parts[0]
    return DetectionData(sum((p.ids for p in parts), []), sum((p.paths for p in parts), []),
                         sum((p.sizes for p in parts), []), sum((p.ground_truth for p in parts), []),
                         sum((p.fingerprints for p in parts), []))


def _cleaned(raw: tuple[list, list], data: DetectionData, limit: int) -> list[np.ndarray]:
    """File/generator proposals -> continuous boxes after Detectron's clip/unique/min-size/limit."""
    out = []
    for (boxes, scores), (width, height) in zip(zip(*raw), data.sizes):
        kept, _ = clean_proposals(boxes, scores, width, height, limit)
        out.append(to_continuous(kept))
    return out


def _selective_search_all(data: DetectionData, mode: str, limit: int) -> tuple[list, list]:
    from benchmark.training import progress

    results = []
    with progress(len(data.paths), "selective search", unit="img") as bar:
        for path in data.paths:
            results.append(selective_search(path, mode, limit))
            bar.update(1)
    return [b for b, _ in results], [s for _, s in results]
