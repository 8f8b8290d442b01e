"""`relative_position`: where is the second patch? (Doersch, Gupta & Efros, ICCV 2015).

"Unsupervised Visual Representation Learning by Context Prediction".

A 3x3 grid of ``patch_size`` patches separated by ``gap`` pixels is laid on the image (resized so
its shorter side is the grid's extent plus the jitter margin, the grid placed at a random position
along the longer side); the centre patch and one of its 8 neighbours (label 0..7, row-major order
of the neighbours: up-left, up, up-right, left, right, down-left, down, down-right) are cut out,
each shifted by an independent random jitter of up to ``jitter`` pixels in x and y. The gap and
the jitter keep low-level cues (edges continuing across the border, texture) from giving the
answer away; patches never overlap since gap > 2 x jitter is required. Both patches go through
the shared trunk; their pooled features are concatenated and a 3-layer MLP (fc7, fc8 of
``hidden`` units in the paper, then 8 outputs) classifies the neighbour's position.

Chromatic aberration countermeasure (``aberration``): ``drop`` (default, the paper's "color
dropping"): per patch, two of the three colour channels are replaced by Gaussian noise with a
standard deviation of 1/100 of the kept channel's; ``project``: the green-magenta component
(RGB direction (-1, 2, -1)/sqrt 6) is projected out of every pixel; ``none``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmark.errors import ConfigError
from benchmark.options import Choice, Int, declare

from ..method import PretextMethod
from ._trunk import check_input_size, normalize

# (row, column) offset of the neighbour of label k relative to the centre patch
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / 6 ** 0.5


def grid_extent(patch_size: int, gap: int, jitter: int) -> int:
    """Side of the square the jittered 3x3 grid needs."""
    return 3 * patch_size + 2 * gap + 2 * jitter


def drop_colours(patch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep one random channel of a [0, 1] RGB patch; the other two become N(0.5, (std/100)^2)."""
    keep = int(torch.randint(3, (1,), generator=generator))
    std = float(patch[keep].std()) / 100
    out = 0.5 + std * torch.randn(patch.shape, generator=generator)
    out[keep] = patch[keep]
    return out


def project_out_green_magenta(patch: torch.Tensor) -> torch.Tensor:
    axis = _GREEN_MAGENTA.to(patch)
    return patch - axis.view(3, 1, 1) * torch.einsum("c,chw->hw", axis, patch)[None]


class RelativePosition(PretextMethod):
    name = "relative_position"
    options = declare({
        "patch_size": Int(96, min=1),      # the paper's 96 px patches ...
        "gap": Int(48, min=0),             # ... half a patch apart ...
        "jitter": Int(7, min=0),           # ... each moved by up to 7 px
        "aberration": Choice("drop", "project", "none"),
        "hidden": Int(4096, min=1),        # fc7/fc8 width of the pair classifier
    })
    # Doersch et al.: SGD, batch normalisation, lr 0.01 (batch 128), momentum 0.9, weight decay 5e-4
    training = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        patch, gap, jitter = options.patch_size, options.gap, options.jitter
        if gap <= 2 * jitter:
            raise ConfigError(f"relative_position: gap ({gap}) must be larger than 2 x jitter ({jitter}) "
                              f"so that patches never touch")
        check_input_size(self, patch, "patch_size")
        dim, hidden = self.embed_dim, options.hidden
        self.head = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, len(NEIGHBOURS)))

    def patch_pair(self, image: Image.Image, generator: torch.Generator):
        """(rgb image tensor, top-left (y, x) of the centre and neighbour patch, label)."""
        patch, gap, jitter = self.config.patch_size, self.config.gap, self.config.jitter
        extent = grid_extent(patch, gap, jitter)
        width, height = image.size
        scale = extent / min(width, height)
        size = (max(extent, round(height * scale)), max(extent, round(width * scale)))
        rgb = torch.from_numpy(np.array(image.resize(size[::-1], Image.BILINEAR))).permute(2, 0, 1)
        rgb = rgb.float() / 255
        origin_y = int(torch.randint(size[0] - extent + 1, (1,), generator=generator)) + jitter
        origin_x = int(torch.randint(size[1] - extent + 1, (1,), generator=generator)) + jitter
        label = int(torch.randint(len(NEIGHBOURS), (1,), generator=generator))
        corners = []
        for row, col in ((1, 1), (1 + NEIGHBOURS[label][0], 1 + NEIGHBOURS[label][1])):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
            corners.append((origin_y + row * (patch + gap) + dy, origin_x + col * (patch + gap) + dx))
        return rgb, torch.tensor(corners), label

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rgb, corners, label = self.patch_pair(image, generator)
        size = self.config.patch_size
        patches = []
        for y, x in corners.tolist():
            patch = rgb[:, y:y + size, x:x + size]
            if self.config.aberration == "drop":
                patch = drop_colours(patch, generator)
            elif self.config.aberration == "project":
                patch = project_out_green_magenta(patch)
            patches.append(normalize(patch))
        return {"patches": torch.stack(patches), "label": torch.tensor(label), "corners": corners}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        patches = batch["patches"]  # (B, 2, 3, P, P): both patches through the trunk in one pass
        features = self.embed(patches.flatten(0, 1)).view(patches.shape[0], -1)
        logits = self.head(features)
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"acc": float((logits.argmax(1) == batch["label"]).float().mean())}
