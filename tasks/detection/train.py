"""Training and inference of the Fast R-CNN detector, resumable and deterministic.

Reference recipe (Detectron defaults + the reference's VOC configs): SGD momentum 0.9, weight decay
1e-4 on weights (none on biases, whose LR is doubled), linear warm-up over 500 iterations from 1/3
of the LR, LR x0.1 at the step; 2 images per GPU on 2 GPUs (batch 4) with LR 0.002; each image
in both orientations (horizontal flip); per image 64 RoIs, 25 % foreground (IoU >= 0.5 with a
ground-truth box; background below 0.5), ground-truth boxes added to the proposals; box targets
encoded with weights (10, 10, 5, 5), smooth-L1 (beta 1) on the true class's deltas, both losses
normalised by the number of RoIs. Difficult boxes are not used for training. Test: softmax
scores, class-specific boxes, per-class NMS 0.3 above score 0.05, at most 100 detections.

Resumption: the data order is a function of (seed, epoch) and the RoI sampling of iteration i is
seeded from (seed, i), the LR is a function of the iteration, so a checkpoint of the weights,
the optimiser state and the iteration is all a resumed run needs to reach the same numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from benchmark.errors import ConfigError
from benchmark.training import (Part, RowsCsv, Schedule, TrainingLoop, atomic_torch_save, build_optimizer, derived_seed,
                                load_matching_checkpoint, progress, stream_items)

from . import NAME
from .box_targets import BELOW_THRESHOLD, decode_boxes, encode_boxes, match_to_ground_truth, sample_balanced
from .data import DetectionData, load_image, transform_boxes
from .evaluate import Detections
from .model import FastRCNNC4

CHECKPOINT_FORMAT = 1
REFERENCE_BATCH = 4  # images per iteration of the reference (2 GPUs x 2 images), LR 0.002
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_ORDER_TAG, _SAMPLE_TAG = 0xD0, 0xD1

# The reference schedules in iterations at batch 4 (fair_ssb Detectron configs).
SCHEDULES = {
    "voc07": {"iterations": 30_000, "milestones": (22_000,)},
    "voc07+12": {"iterations": 80_000, "milestones": (66_000,)},
}


# what the checkpoints' fingerprints have always recorded of a detection schedule
RECORDED = ("name", "iterations", "milestones", "base_lr", "batch_size", "warmup_iterations", "warmup_factor",
            "weight_decay", "momentum", "gamma", "lr")
LOG_COLUMNS = ("iteration", "lr", "loss_cls", "loss_box", "fg_rois")


def resolve_schedule(schedule: str, train_set: str, *, iterations=None, milestones=None, base_lr=None,
                     batch_size=None, warmup_iterations=None, weight_decay=None) -> Schedule:
    """``reference``: the train set's iterations at batch 4; at another batch size iterations,
    milestones and warm-up scale by 4 / batch_size and the LR by batch_size / 4. ``custom``:
    ``iterations`` and ``milestones`` as given (at the chosen batch size)."""
    where = NAME
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    batch = batch_size or REFERENCE_BATCH
    for value, what in ((base_lr, "base_lr"), (weight_decay, "weight_decay")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{where}: {what} must be a non-negative number, got {value!r}")
    if schedule == "reference":
        if iterations is not None or milestones is not None:
            raise ConfigError(f"{where}: iterations / milestones only apply to schedule: custom; the reference "
                              f"schedule fixes them (VOC07 30k step 22k, VOC07+12 80k step 66k at batch 4)")
        spec = SCHEDULES[train_set]
        factor = REFERENCE_BATCH / batch
        total = round(spec["iterations"] * factor)
        steps = tuple(round(m * factor) for m in spec["milestones"])
        warmup = round(500 * factor) if warmup_iterations is None else warmup_iterations
    elif schedule == "custom":
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ConfigError(f"{where}: the custom schedule needs 'iterations' (a positive integer), "
                              f"got {iterations!r}")
        if not isinstance(milestones, (list, tuple)) or list(milestones) != sorted(set(milestones)) or \
                any(isinstance(m, bool) or not isinstance(m, int) or not 0 < m < iterations for m in milestones):
            raise ConfigError(f"{where}: the custom schedule needs 'milestones': increasing integers inside "
                              f"(0, {iterations}), possibly empty; got {milestones!r}")
        total, steps = iterations, tuple(milestones)
        warmup = 0 if warmup_iterations is None else warmup_iterations
    else:
        raise ConfigError(f"{where}: unknown schedule {schedule!r}; expected reference or custom")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"{where}: warmup_iterations must be a non-negative integer, got {warmup!r}")
    return Schedule(schedule, total, float(0.002 if base_lr is None else base_lr), batch,
                    reference_batch=REFERENCE_BATCH, decay="step", milestones=steps, gamma=0.1,
                    warmup_iterations=warmup, warmup="affine", warmup_factor=1.0 / 3.0,
                    weight_decay=float(1e-4 if weight_decay is None else weight_decay), momentum=0.9,
                    recorded=RECORDED)


@dataclass(frozen=True)
class DetectionSetup:
    schedule: Schedule
    seed: int = 0
    scale: int = 600
    max_size: int = 1000
    size_multiple: int = 1  # > 1: image sides rounded to a multiple (the mini suite's CPU speed-up)
    flip: bool = True
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    test_score_threshold: float = 0.05
    test_nms: float = 0.3
    detections_per_image: int = 100
    checkpoint_every: int = 1000
    cache_features_mb: int = 2048  # frozen trunk: keep res4 maps of training images in memory up to this
    fingerprint: str = ""
    desc: str = "detection"
    extra: dict = field(default_factory=dict)


# --- images, features, RoI sampling -----------------------------------------------------------


class ImageFeatures:
    """res4 maps of (image, flip) at the detection scale. With a frozen trunk (freeze_at >= 4)
    the maps do not change during training, so they are computed once and kept in memory (up to
    ``limit_mb``); the values are the same either way (one image per forward pass)."""

    def __init__(self, detector: FastRCNNC4, data: DetectionData, setup: DetectionSetup, device: torch.device,
                 limit_mb: int = 0):
        self.detector, self.data, self.setup, self.device = detector, data, setup, device
        self.cacheable = detector.freeze_at >= 4
        self.limit, self.used = limit_mb * 2**20, 0
        self.cache: dict[tuple[int, bool], tuple[torch.Tensor, np.ndarray, tuple[int, int]]] = {}

    def __call__(self, index: int, flip: bool) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
        """(1, C, h, w) map, box scale factors (x, y, x, y), scaled image (height, width)."""
        key = (index, flip)
        if key in self.cache:
            return self.cache[key]
        image, factor = load_image(self.data.paths[index], self.setup.scale, self.setup.max_size, flip,
                                   self.setup.size_multiple)
        image = image.unsqueeze(0).to(self.device)
        with torch.no_grad() if self.cacheable else contextlib.nullcontext():
            fmap = self.detector.features(image)
        entry = (fmap, factor, tuple(image.shape[-2:]))
        if self.cacheable and self.used + fmap.numel() * fmap.element_size() <= self.limit:
            self.cache[key] = entry
            self.used += fmap.numel() * fmap.element_size()
        return entry


def training_gt(data: DetectionData, index: int) -> tuple[np.ndarray, np.ndarray]:
    gt = data.ground_truth[index]
    keep = ~np.asarray(gt.difficult, dtype=bool)
    return np.asarray(gt.boxes)[keep], np.asarray(gt.labels)[keep]


def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, setup: DetectionSetup):
    """Sampled RoIs, their class labels (0 = background) and regression targets (CPU tensors;
    the sampling draws from torch's global generator, which the caller seeds)."""
    rois = torch.cat([proposals, gt_boxes]) if len(gt_boxes) else proposals
    if len(gt_boxes):
        matched = match_to_ground_truth(box_iou(gt_boxes, rois), setup.fg_iou)
        labels = gt_labels[matched.clamp(min=0)].clone()
        labels[matched == BELOW_THRESHOLD] = 0
        targets_boxes = gt_boxes[matched.clamp(min=0)]
    else:
        labels = torch.zeros(len(rois), dtype=torch.int64)
        targets_boxes = rois
    positive, negative = sample_balanced(labels, setup.rois_per_image, setup.fg_fraction)
    keep = torch.where(positive | negative)[0]
    rois, labels = rois[keep], labels[keep]
    targets = encode_boxes(targets_boxes[keep], rois, BOX_WEIGHTS)
    return rois, labels, targets


def detection_loss(logits, deltas, labels, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over all RoIs; smooth-L1 (beta 1) of the true class's deltas on foreground
    RoIs, summed and divided by the number of RoIs (Detectron)."""
    loss_cls = F.cross_entropy(logits, labels)
    fg = torch.where(labels > 0)[0]
    deltas = deltas.view(len(deltas), -1, 4)[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(deltas, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return loss_cls, loss_box


def batch_items(iteration: int, batch: int, n_images: int, flip: bool, seed: int) -> list[tuple[int, bool]]:
    """The (image, flipped) pairs of ``iteration``: consecutive slices of per-epoch permutations
    of every image (in both orientations when ``flip``), a function of (seed, iteration)."""
    n = n_images * (2 if flip else 1)
    return [(item % n_images, item >= n_images) for item in stream_items(seed, n, iteration * batch, batch, _ORDER_TAG)]


# --- training --------------------------------------------------------------------------------


def make_optimizer(detector: FastRCNNC4, schedule: Schedule) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights only; biases at twice the LR (Detectron)."""
    weights, biases = [], []
    for name, param in detector.named_parameters():
        if param.requires_grad:
            (biases if name.endswith(".bias") else weights).append(param)
    groups = [{"params": weights, "weight_decay": schedule.weight_decay, "lr_mult": 1.0}]
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0, "lr_mult": 2.0})
    return build_optimizer(groups, schedule)


def _proposal_tensor(boxes: np.ndarray, factor, width: int, flip: bool) -> torch.Tensor:
    return torch.as_tensor(transform_boxes(boxes, factor, width, flip))


def train_detector(detector: FastRCNNC4, data: DetectionData, proposals: list[np.ndarray], setup: DetectionSetup,
                   out_dir: Path, device: torch.device, features: ImageFeatures | None = None,
                   on_iteration: Callable[[int], None] | None = None) -> dict:
    """Train ``detector`` in place on ``data`` with ``proposals`` (continuous boxes of the original
    images, one array per image); resume from ``out_dir/checkpoint.pt``. Returns the checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "checkpoint.pt"
    schedule = setup.schedule
    detector.to(device).train()
    optimizer = make_optimizer(detector, schedule)
    state = load_matching_checkpoint(path, CHECKPOINT_FORMAT, setup.fingerprint, "detection")
    if state is not None and state["done"]:
        detector.load_state_dict(state["model"])
        return state
    log = []
    loop = TrainingLoop(path, iterations=schedule.iterations, desc=setup.desc, optimizer=optimizer, schedule=schedule,
                        fingerprint=setup.fingerprint, fmt=CHECKPOINT_FORMAT, tag="detection",
                        checkpoint_every=setup.checkpoint_every,
                        log=RowsCsv(out_dir / "log.csv", LOG_COLUMNS, log, lambda iteration, row: row),
                        parts={"model": Part.weights(detector), "optimizer": optimizer, "log": lambda loop: log,
                               "schedule": schedule.describe()})
    if state is not None:
        loop.restore(state)
        log.extend(state["log"])
    features = features or ImageFeatures(detector, data, setup, device, setup.cache_features_mb)
    gts = [training_gt(data, i) for i in range(len(data))]

    def step(_, iteration):
        maps, rois, labels, targets = [], [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(setup.seed, _SAMPLE_TAG, iteration))
            for index, flip in batch_items(iteration, schedule.batch_size, len(data), setup.flip, setup.seed):
                fmap, factor, (height, width) = features(index, flip)
                gt_boxes, gt_labels = gts[index]
                r, lab, t = sample_rois(_proposal_tensor(proposals[index], factor, width, flip),
                                        _proposal_tensor(gt_boxes, factor, width, flip),
                                        torch.as_tensor(gt_labels), setup)
                maps.append(fmap)
                rois.append(r.to(device))
                labels.append(lab)
                targets.append(t)
        labels_t, targets_t = torch.cat(labels).to(device), torch.cat(targets).to(device)
        logits, deltas = detector.box_head(maps, rois)
        loss_cls, loss_box = detection_loss(logits, deltas, labels_t, targets_t)
        return loss_cls + loss_box, (loss_cls, loss_box, labels_t)

    def record(iteration, lr, loss, recorded):
        loss_cls, loss_box, labels_t = recorded
        log.append([iteration, f"{lr:.6g}", f"{loss_cls.item():.5f}", f"{loss_box.item():.5f}",
                    int((labels_t > 0).sum())])

    # the batches are made in step(): a function of (seed, iteration)
    loop.run(range(loop.start, schedule.iterations), step, record=record, on_iteration=on_iteration)
    return torch.load(path, map_location="cpu", weights_only=True)


def mark_evaluated(out_dir: Path, metrics: dict) -> None:
    """Store the test metrics in the finished checkpoint, so a rerun does not evaluate again."""
    path = Path(out_dir) / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["metrics"] = metrics
    atomic_torch_save(state, path)


# --- inference -------------------------------------------------------------------------------


@torch.no_grad()
def detect(detector: FastRCNNC4, data: DetectionData, proposals: list[np.ndarray], setup: DetectionSetup,
           device: torch.device, desc: str = "detect", features: ImageFeatures | None = None) -> Detections:
    """Detections on every image of ``data`` (continuous boxes of the original images).
    ``features``: res4 maps of ``data`` to reuse (a frozen trunk's, computed for the proposals)."""
    detector.to(device).eval()
    features = features or ImageFeatures(detector, data, setup, device)
    parts = []
    with progress(len(data), desc, unit="img") as bar:
        for index in range(len(data)):
            bar.update(1)
            fmap, factor, (height, width) = features(index, False)
            boxes = _proposal_tensor(proposals[index], factor, width, False).to(device)
            if len(boxes) == 0:
                continue
            logits, deltas = detector.box_head([fmap], [boxes])
            scores = F.softmax(logits.float(), dim=1)
            classes = scores.shape[1]
            decoded = decode_boxes(deltas.float(), boxes, BOX_WEIGHTS).view(-1, classes, 4)
            decoded = clip_boxes_to_image(decoded, (height, width))
            labels = torch.arange(classes, device=device).expand(len(boxes), classes)
            # column 0 is the background class
            decoded, scores = decoded[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > setup.test_score_threshold)[0]
            decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
            keep = batched_nms(decoded, scores, labels, setup.test_nms)[: setup.detections_per_image]
            decoded, scores, labels = (decoded[keep].cpu().numpy() / factor, scores[keep].cpu().numpy(),
                                       labels[keep].cpu().numpy())
            parts.append(Detections(np.full(len(keep), index, np.int64), labels.astype(np.int64),
                                    scores.astype(np.float64), decoded.astype(np.float64)))
    return Detections.concat(parts)
