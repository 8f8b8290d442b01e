"""Pretext methods on a timm ViT trunk: simclr, moco and rotation train it and their checkpoint
loads strictly into the benchmark; the others refuse it at load with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.checkpoint import load_trunk_weights
from benchmark.config import load_suite
from benchmark.errors import ConfigError
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture
from pretrainers.pretext import trainer

VIT = "timm/vit_tiny_patch16_224[img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2]"


def _image_dir(root, n: int = 8):
    root.mkdir(parents=True)
    for i in range(n):
        yy, xx = np.mgrid[0:40, 0:48]
        arr = np.stack([(xx * (3 + i) + yy * 2) % 256, (yy * (5 + i)) % 256, (xx * yy // (i + 1)) % 256], -1)
        Image.fromarray(arr.astype(np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.mark.slow  # three short trainings: ~15 s on 2 busy cores
@pytest.mark.parametrize("method,options", [("simclr", {"blur": False}), ("moco", {"queue_size": 16, "dim": 16}),
                                            ("rotation", {})])
def test_vit_trunk_trains_and_loads_strictly(tmp_path, method, options) -> None:
    root = _image_dir(tmp_path / "imgs")
    out = tmp_path / f"{method}.pth"
    meta = trainer.train_pretext(method, root, out, arch=VIT, epochs=1, batch_size=4, image_size=32, device="cpu",
                                 num_workers=0, method_options=options)
    assert meta["arch"] == VIT
    arch = get_architecture(VIT)
    model = create_model(VIT, seed=123)
    load_trunk_weights(model, arch, out)  # strict
    initial = create_model(VIT, seed=0)  # the trunk the loop started from (seed 0)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, initial.blocks[0].attn.qkv.weight)  # it trained
    assert torch.equal(model.head.weight, create_model(VIT, seed=123).head.weight)  # the classifier is no trunk


def test_methods_needing_a_convolutional_trunk_refuse_a_vit_at_load(tmp_path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
suites:
  s:
    models:
      jig: {{pretrainer: pretext, method: jigsaw, arch: "{VIT}", image_size: 32}}
""")
    with pytest.raises(ConfigError) as error:
        load_suite("s", config)
    message = str(error.value)
    assert "suites.s.models.jig" in message and "pretext method 'jigsaw' needs a convolutional trunk" in message
    assert "moco, rotation, simclr" in message
