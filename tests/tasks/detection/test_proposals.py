"""Proposal files: Detectron-format round trip, refusal of pickles naming other classes, the
Detectron clean-up (clip, unique, min size, limit), the cache, Selective Search when installed."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tasks.detection.proposals import (
    cache_path,
    cached_proposals,
    clean_proposals,
    read_proposals,
    selective_search,
    selective_search_available,
    to_continuous,
    to_inclusive,
    write_proposals,
)
from benchmark.errors import DatasetError


def _random_proposals(n_images: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(1, n_images + 1)]
    boxes, scores = [], []
    for i in range(n_images):
        xy = rng.uniform(0, 100, (5 + i, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(2, 50, (5 + i, 2))], 1).astype(np.float32))
        scores.append(np.sort(rng.uniform(0, 1, 5 + i)).astype(np.float32)[::-1].copy())
    return ids, boxes, scores


def test_round_trip_is_identical(tmp_path) -> None:
    ids, boxes, scores = _random_proposals()
    path = write_proposals(tmp_path / "p.pkl", ids, boxes, scores)
    table = read_proposals(path)
    assert list(table) == ids
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(table[image_id][0], boxes[i])
        np.testing.assert_array_equal(table[image_id][1], scores[i])
    # the file is a plain Detectron dict
    with open(path, "rb") as handle:
        content = pickle.load(handle)
    assert set(content) == {"boxes", "scores", "indexes"}


def test_detectron_variants_ids_key_integer_ids_and_float64(tmp_path) -> None:
    """Detectron files may name the ids 'ids', hold them as integers and boxes as float64 (protocol 2)."""
    path = tmp_path / "ss.pkl"
    boxes = [np.array([[0, 0, 9, 9], [1, 2, 30, 40]], dtype=np.float64)]
    with open(path, "wb") as handle:
        pickle.dump({"boxes": boxes, "scores": [np.array([1.0, 0.5])], "ids": [np.int64(5)]}, handle, protocol=2)
    table = read_proposals(path)
    np.testing.assert_array_equal(table["000005"][0], boxes[0].astype(np.float32))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_naming_another_class_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"boxes": [np.zeros((1, 4))], "scores": [np.zeros(1)], "indexes": [Evil()]}))
    with pytest.raises(DatasetError, match="refused.*(posix|os|nt).system"):
        read_proposals(path)
    # a plain class of this module is refused as well, without being imported or constructed
    path.write_bytes(pickle.dumps({"boxes": [], "scores": [], "indexes": [], "x": _Plain()}))
    with pytest.raises(DatasetError, match="_Plain' is not allowed"):
        read_proposals(path)


class _Plain:
    pass


def test_malformed_files_are_errors(tmp_path) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cannot be read"):
        read_proposals(path)
    path.write_bytes(pickle.dumps({"boxes": [np.zeros((2, 3))], "indexes": ["1"]}))
    with pytest.raises(DatasetError, match=r"shape \(2, 3\)"):
        read_proposals(path)
    path.write_bytes(pickle.dumps({"boxes": [np.zeros((2, 4))]}))
    with pytest.raises(DatasetError, match="no 'indexes' or 'ids'"):
        read_proposals(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_proposals(tmp_path / "missing.pkl")


def test_clean_clips_deduplicates_filters_small_and_limits() -> None:
    boxes = np.array([[-5, -5, 20, 20],      # clipped to x 0..19 (image 20 wide, 30 high)
                      [0, 0, 25, 20],        # after clipping a duplicate of the first: dropped
                      [3, 3, 3.5, 10],       # 1.5 px wide: below the 2 px minimum
                      [5, 5, 15, 40],        # clipped to y2 = 29
                      [1, 1, 8, 8]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    kept, kept_scores = clean_proposals(boxes, scores, width=20, height=30, limit=2)
    np.testing.assert_array_equal(kept, [[0, 0, 19, 20], [5, 5, 15, 29]])
    np.testing.assert_array_equal(kept_scores, np.float32([0.9, 0.6]))
    # inclusive <-> continuous: a 1-pixel box [3, 3, 3, 3] spans [3, 4)
    np.testing.assert_array_equal(to_continuous([[3, 3, 3, 3]]), [[3, 3, 4, 4]])
    np.testing.assert_array_equal(to_inclusive(to_continuous(kept)), kept)


def test_cache_generates_once(tmp_path) -> None:
    ids, boxes, scores = _random_proposals(3)
    calls = []

    def generate():
        calls.append(1)
        return boxes, scores

    path = cache_path(tmp_path, {"generator": "test", "data": "abc"})
    assert path != cache_path(tmp_path, {"generator": "test", "data": "abd"})
    first = cached_proposals(path, ids, generate)
    second = cached_proposals(path, ids, generate)
    assert len(calls) == 1
    for a, b in zip(first[0], second[0]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DatasetError, match="no proposals for 1 image"):
        cached_proposals(path, ids + ["999999"], generate)


@pytest.mark.skipif(not selective_search_available(), reason="opencv-contrib (cv2.ximgproc) not installed")
def test_selective_search_finds_the_object(tmp_path) -> None:
    from PIL import Image

    image = np.full((64, 80, 3), 200, np.uint8)
    image[20:40, 30:60] = (20, 40, 220)
    Image.fromarray(image).save(tmp_path / "a.png")
    boxes, scores = selective_search(tmp_path / "a.png", "fast", 200)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
    assert np.all(np.diff(scores) < 0)
    assert any(np.allclose(b, [30, 20, 59, 39], atol=1) for b in boxes)
