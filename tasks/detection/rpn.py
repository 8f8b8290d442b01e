"""Region Proposal Network proposals, for machines without opencv-contrib (no Selective Search).

The Faster R-CNN variant of the benchmark (VISSL's later detectron2 configs) proposes boxes with
an RPN on the res4 map. Here it is trained in the first step of Faster R-CNN's alternating
scheme: an RPN head (3x3 conv + objectness and box deltas per anchor, torchvision's RPNHead,
anchors, matching, sampling and losses of torchvision's RegionProposalNetwork) is trained on
the FROZEN res4 map of the model being benchmarked, on the training split's ground truth; its
proposals for the training and the test split are then written as Detectron-format files and
used exactly like Selective Search proposals. The proposals therefore depend on the model (the
cache key holds its weights hash); only the RPN head is trained, never the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from benchmark.training import derived_seed, progress
from .data import DetectionData
from .model import FEATURE_STRIDE
from .proposals import to_inclusive
from .train import ImageFeatures, batch_items, training_gt

_RPN_TAG = 0xD2


@dataclass(frozen=True)
class RPNSettings:
    iterations: int = 2000
    batch_size: int = 4
    lr: float = 0.01
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms: int = 6000
    post_nms: int = 2000
    nms: float = 0.7

    def describe(self) -> dict:
        return {**self.__dict__, "anchor_sizes": list(self.anchor_sizes), "aspect_ratios": list(self.aspect_ratios)}


def build_rpn(channels: int, settings: RPNSettings, seed: int) -> RegionProposalNetwork:
    anchors = AnchorGenerator((tuple(settings.anchor_sizes),), (tuple(settings.aspect_ratios),))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, _RPN_TAG))
        head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    # Faster R-CNN's defaults: positives IoU >= 0.7, negatives < 0.3, 256 anchors per image, half positive
    return RegionProposalNetwork(anchors, head, 0.7, 0.3, 256, 0.5,
                                 dict(training=settings.pre_nms, testing=settings.pre_nms),
                                 dict(training=settings.post_nms, testing=settings.post_nms), settings.nms)


def _image_list(fmap: torch.Tensor, size: tuple[int, int]) -> ImageList:
    # the anchor stride is derived from tensor size / map size: give a (0-channel) tensor exactly
    # FEATURE_STRIDE times the map, while image_sizes holds the real size used for clipping
    h, w = fmap.shape[-2:]
    return ImageList(fmap.new_empty(1, 0, h * FEATURE_STRIDE, w * FEATURE_STRIDE), [tuple(size)])


def train_rpn(features: ImageFeatures, data: DetectionData, settings: RPNSettings, seed: int, flip: bool,
              device: torch.device) -> RegionProposalNetwork:
    channels = features(0, False)[0].shape[1]
    rpn = build_rpn(channels, settings, seed).to(device).train()
    optimizer = torch.optim.SGD(rpn.parameters(), lr=settings.lr, momentum=0.9, weight_decay=1e-4)
    bar = progress(settings.iterations, "rpn")
    for iteration in range(settings.iterations):
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, _RPN_TAG, iteration))
            # the detector's own data order: with a frozen trunk, the maps computed here are reused
            for index, flipped in batch_items(iteration, settings.batch_size, len(data), flip, seed):
                fmap, factor, size = features(index, flipped)
                boxes, _ = training_gt(data, index)
                boxes = boxes * factor
                if flipped:
                    boxes = np.stack([size[1] - boxes[:, 2], boxes[:, 1], size[1] - boxes[:, 0], boxes[:, 3]], 1)
                target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4)}
                _, loss = rpn(_image_list(fmap, size), {"0": fmap.detach()}, [target])
                losses.append(loss["loss_objectness"] + loss["loss_rpn_box_reg"])
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).mean().backward()
        optimizer.step()
        bar.update(1)
    bar.close()
    return rpn.eval()


@torch.no_grad()
def propose(rpn: RegionProposalNetwork, features: ImageFeatures, data: DetectionData) -> tuple[list, list]:
    """Proposals of every image of ``data`` (not flipped): inclusive-pixel boxes of the original
    image, best first, and their objectness probabilities."""
    boxes_out, scores_out = [], []
    bar = progress(len(data), "rpn proposals", unit="img")
    for index in range(len(data)):
        bar.update(1)
        fmap, factor, size = features(index, False)
        images = _image_list(fmap, size)
        objectness, deltas = rpn.head([fmap])
        anchors = rpn.anchor_generator(images, [fmap])
        counts = [o[0].numel() for o in objectness]
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(1, -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, objectness.detach(), images.image_sizes, counts)
        boxes_out.append(to_inclusive(boxes[0].cpu().numpy() / factor))
        scores_out.append(scores[0].cpu().numpy().astype(np.float32))
    bar.close()
    return boxes_out, scores_out
