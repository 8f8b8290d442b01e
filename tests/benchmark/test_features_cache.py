"""The feature cache: equal to a direct extraction, hits without re-reading images, keys that
change with everything that changes the values, and nothing half-written after a failure."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.datasets.images import svm_transform
from benchmark.datasets.synth_voc import synth_voc07
from benchmark.datasets.voc import load_voc
from benchmark.errors import DatasetError, FeatureError
from benchmark.features import ExtractionStats, FeatureCache, FeatureKey, cached_features, extract_features
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict, weights_hash

CPU = torch.device("cpu")
SIZE = 32
ARCH = get_architecture("resnet18")
DIMS = {"conv1": 64 * 144, "res2": 64 * 36, "res3": 128 * 16, "res4": 256 * 9, "res5": 512 * 4, "pool5": 512}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = synth_voc07(tmp_path_factory.mktemp("voc"), n_images=16)
    return load_voc(root, "trainval")


@pytest.fixture(scope="module")
def backbone() -> FrozenBackbone:
    return FrozenBackbone(ARCH, create_model("resnet18", seed=0))


@pytest.fixture(scope="module")
def weights(backbone) -> str:
    return weights_hash(trunk_state_dict(ARCH, backbone.model))


@pytest.fixture(scope="module")
def direct(voc, backbone):
    """Reference features from one uncached pass over all layers."""
    transform, _ = svm_transform(SIZE)
    return extract_features(backbone, voc.image_paths, list(DIMS), transform, device=CPU, batch_size=4,
                            num_workers=0)


def _cached(backbone, weights, voc, cache, layers, stats, size=SIZE, paths=None, split="trainval"):
    transform, description = svm_transform(size)
    return cached_features(backbone, weights, paths if paths is not None else voc.image_paths, layers, transform,
                           description, size, "voc07", split, voc.fingerprint(), cache, device=CPU,
                           batch_size=4, num_workers=0, stats=stats)


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.npy"))


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_direct_extraction_shapes(voc, direct) -> None:
    assert len(voc.image_paths) == 8
    assert {k: v.shape for k, v in direct.items()} == {k: (8, d) for k, d in DIMS.items()}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in direct.values())
    # different images -> different features
    assert not np.allclose(direct["res5"][0], direct["res5"][1])


def test_direct_extraction_matches_backbone_on_transformed_images(voc, backbone, direct) -> None:
    transform, _ = svm_transform(SIZE)
    from PIL import Image

    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in voc.image_paths[:3]])
    assert batch.shape == (3, 3, SIZE, SIZE)
    expected = backbone(batch, ["res3"])["res3"].numpy()
    np.testing.assert_allclose(direct["res3"][:3], expected, rtol=1e-5, atol=1e-6)


def test_cache_miss_then_hit(tmp_path, voc, backbone, weights, direct) -> None:
    cache, stats = FeatureCache(tmp_path / "cache"), ExtractionStats()
    layers = ["conv1", "res4", "pool5"]
    first = _cached(backbone, weights, voc, cache, layers, stats)
    assert (stats.images, stats.cache_hits, stats.cache_misses) == (8, 0, 3)
    assert len(_entries(cache.root)) == 3
    for layer in layers:
        assert first[layer].shape == (8, DIMS[layer]) and first[layer].dtype == np.float32
        np.testing.assert_array_equal(first[layer], direct[layer])
    # no temporary files left; each entry has its metadata
    assert all(not name.split("/")[-1].startswith(".") for name in _all_files(cache.root))
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in _entries(cache.root)]
    assert sorted((m["layer"], m["n"], m["dim"]) for m in metas) == sorted((k, 8, DIMS[k]) for k in layers)
    assert all(m["weights"] == weights and m["split"] == "trainval" for m in metas)

    second = _cached(backbone, weights, voc, cache, layers, stats)
    assert (stats.images, stats.cache_hits, stats.cache_misses) == (8, 3, 3)  # no image processed
    for layer in layers:
        np.testing.assert_array_equal(second[layer], direct[layer])


def test_cache_hit_does_not_read_images(tmp_path, voc, backbone, weights) -> None:
    cache, stats = FeatureCache(tmp_path / "cache"), ExtractionStats()
    _cached(backbone, weights, voc, cache, ["res2"], stats)
    # a hit must come from the cache alone: make every image unreadable
    broken = []
    for i, path in enumerate(voc.image_paths):
        bad = tmp_path / f"bad{i}.jpg"
        bad.write_bytes(b"garbage")
        broken.append(bad)
    again = _cached(backbone, weights, voc, cache, ["res2"], stats, paths=broken)
    assert again["res2"].shape == (8, DIMS["res2"]) and stats.images == 8


def test_only_missing_layers_are_extracted(tmp_path, voc, backbone, weights, direct, monkeypatch) -> None:
    import benchmark.features as features

    calls: list[list[str]] = []
    real = features.extract_features

    def spy(backbone, image_paths, layers, *args, **kwargs):
        calls.append(list(layers))
        return real(backbone, image_paths, layers, *args, **kwargs)

    monkeypatch.setattr(features, "extract_features", spy)
    cache, stats = FeatureCache(tmp_path / "cache"), ExtractionStats()
    _cached(backbone, weights, voc, cache, ["res2", "res3"], stats)
    subset = _cached(backbone, weights, voc, cache, ["res3"], stats)
    superset = _cached(backbone, weights, voc, cache, ["conv1", "res2", "res3", "res5"], stats)
    assert calls == [["res2", "res3"], ["conv1", "res5"]]  # the subset was a pure hit
    assert (stats.cache_hits, stats.cache_misses, stats.images) == (3, 4, 16)
    np.testing.assert_array_equal(subset["res3"], direct["res3"])
    for layer in ("conv1", "res2", "res3", "res5"):
        np.testing.assert_array_equal(superset[layer], direct[layer])
    assert len(_entries(cache.root)) == 4


def test_cache_keys_change_with_what_changes_values(tmp_path, voc, backbone, weights) -> None:
    cache = FeatureCache(tmp_path / "cache")
    stats = ExtractionStats()
    base = _cached(backbone, weights, voc, cache, ["res5"], stats)["res5"]
    n_entries = len(_entries(cache.root))

    # another image size: another transform and another pooling -> a new entry, other values
    other_size = _cached(backbone, weights, voc, cache, ["res5"], stats, size=48)["res5"]
    assert stats.cache_misses == 2 and len(_entries(cache.root)) == n_entries + 1
    assert not np.allclose(other_size, base)

    # other weights (a different seed) -> a new entry
    other = FrozenBackbone(ARCH, create_model("resnet18", seed=1))
    other_weights = weights_hash(trunk_state_dict(ARCH, other.model))
    assert other_weights != weights
    feats = _cached(other, other_weights, voc, cache, ["res5"], stats)["res5"]
    assert stats.cache_misses == 3 and len(_entries(cache.root)) == n_entries + 2
    assert not np.allclose(feats, base)

    # another split name -> a new entry
    _cached(backbone, weights, voc, cache, ["res5"], stats, split="trainval-copy")
    assert stats.cache_misses == 4 and stats.cache_hits == 0


def test_feature_key_digest_covers_every_field() -> None:
    key = FeatureKey("w", "resnet18", "res5", "adaptive_avg->2x2", "t", "voc07", "trainval", "fp")
    digests = {key.digest()}
    for field in ("weights", "arch", "layer", "pooling", "transform", "dataset", "split", "fingerprint"):
        digests.add(replace(key, **{field: getattr(key, field) + "x"}).digest())
    assert len(digests) == 9
    assert replace(key).digest() == key.digest()


# num_workers=0 only: with worker processes the DatasetError also arrives (checked by hand), but
# torch then needs ~5 s per worker to shut the failed loader down, too slow for a unit test.
def test_corrupt_image_raises_and_leaves_nothing(tmp_path, voc, backbone, weights) -> None:
    bad = tmp_path / "000999.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 20)
    paths = list(voc.image_paths)
    paths[6] = bad  # fails in the second batch, after the first batch was written
    cache = FeatureCache(tmp_path / "cache")
    stats = ExtractionStats()
    with pytest.raises(DatasetError, match="000999.jpg"):
        _cached(backbone, weights, voc, cache, ["conv1", "res5"], stats, paths=paths)
    assert _all_files(cache.root) == []  # no entry, no metadata, no temporary file
    assert stats.images == 0
    # the next attempt with good images works and caches
    _cached(backbone, weights, voc, cache, ["conv1", "res5"], stats)
    assert len(_entries(cache.root)) == 2


def test_nan_weights_raise_and_cache_nothing(tmp_path, voc) -> None:
    model = create_model("resnet18", seed=0)
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    broken = FrozenBackbone(ARCH, model)
    cache = FeatureCache(tmp_path / "cache")
    weights = weights_hash(trunk_state_dict(ARCH, model))
    with pytest.raises(FeatureError, match=r"layer res3 on voc07/trainval: 8 of 8 feature rows contain NaN"):
        _cached(broken, weights, voc, cache, ["res2", "res3"], ExtractionStats())
    assert _all_files(cache.root) == []  # not even res2, which was finite
