"""NYUv2 reader: MATLAB v7.3 layout, splits, normals files in both layouts, normals from depth,
the generator's output read back, and errors that name the missing file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from benchmark.cli import main
from benchmark.datasets.nyuv2 import (
    NYU_INTRINSICS,
    Intrinsics,
    load_nyuv2,
    normals_from_depth,
    write_normals_from_depth,
)
from benchmark.datasets.synth_nyuv2 import render_room, synth_nyuv2, write_mat73
from benchmark.errors import DatasetError
from tasks.normals.metrics import angular_errors


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("nyu")
    return synth_nyuv2(out, n_images=12, seed=3, width=48, height=36)


def tilted_plane_depth(normal: np.ndarray, offset: float, camera: Intrinsics) -> np.ndarray:
    """Depth of the plane normal . P = -offset seen through ``camera``: P = z * ray."""
    return -offset / (camera.rays() @ normal)


def test_normals_from_depth_of_a_tilted_plane() -> None:
    normal = np.array([0.3, -0.5, -0.8])
    normal /= np.linalg.norm(normal)  # faces the camera: normal . P < 0 for points in front
    depth = tilted_plane_depth(normal, 2.0, NYU_INTRINSICS)
    assert depth.shape == (480, 640) and depth.min() > 0
    depth[100:110, 200:230] = 0  # missing depth
    normals, mask = normals_from_depth(depth, NYU_INTRINSICS, window=5)
    assert not mask[100:110, 200:230].any() and mask.mean() > 0.97
    errors = angular_errors(normals[mask], np.broadcast_to(normal, normals[mask].shape))
    assert errors.max() < 0.5
    assert errors.max() < 1e-3  # a least-squares plane fit is exact on a plane


def test_intrinsics_scale_with_the_frame() -> None:
    small = NYU_INTRINSICS.scaled(80, 60)
    assert small.fx == pytest.approx(518.857901 / 8) and small.fy == pytest.approx(519.469611 / 8)
    # the principal point moves with pixel centres: (c + 0.5) / 8 - 0.5
    assert small.cx == pytest.approx((325.582449 + 0.5) / 8 - 0.5)
    # a plane seen in a downscaled frame: normals_from_depth scales the intrinsics itself
    normal = np.array([0.0, -0.6, -0.8])
    normals, mask = normals_from_depth(tilted_plane_depth(normal, 1.5, small), NYU_INTRINSICS, window=3)
    assert angular_errors(normals[mask], np.broadcast_to(normal, normals[mask].shape)).max() < 1e-3


def test_orientation_of_a_matlab_v73_file(tmp_path) -> None:
    """A hand-made file in MATLAB's layout: an H x W x 3 x N array as MATLAB holds it is stored with
    its dimensions reversed; pixel (row 1, column 2) of image 2 is red, and its depth is 7."""
    n, h, w = 3, 4, 5
    matlab_images = np.zeros((h, w, 3, n), np.uint8)  # MATLAB's own indexing
    matlab_images[1, 2, 0, 2] = 255
    matlab_depths = np.ones((h, w, n), np.float32)
    matlab_depths[1, 2, 2] = 7.0
    root = tmp_path / "NYUv2"
    root.mkdir()
    write_mat73(root / "nyu_depth_v2_labeled.mat", {"images": (matlab_images.transpose(3, 2, 1, 0), "uint8"),
                                                   "depths": (matlab_depths.transpose(2, 1, 0), "single")})
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[3.0], [1.0]]), "testNdxs": np.array([[2.0]])})
    split = load_nyuv2(root, "train", normals="depth", depth_window=3)
    assert split.indices.tolist() == [2, 0] and (split.height, split.width) == (h, w)
    image = split.image(0)  # item 0 of train = image 3 (1-based) = index 2
    assert image.shape == (h, w, 3) and image[1, 2].tolist() == [255, 0, 0] and image.sum() == 255
    assert split.depth(0)[1, 2] == 7.0 and split.depth(1)[1, 2] == 1.0
    with open(root / "nyu_depth_v2_labeled.mat", "rb") as handle:
        assert handle.read(19) == b"MATLAB 7.3 MAT-file"
    with pytest.raises(NotImplementedError):  # scipy recognises a v7.3 file and defers to HDF5
        scipy.io.loadmat(root / "nyu_depth_v2_labeled.mat")


def test_reader_reads_what_synth_writes(synth) -> None:
    train, test = load_nyuv2(synth, "train"), load_nyuv2(synth, "test")
    splits = scipy.io.loadmat(synth / "splits.mat")
    assert train.indices.tolist() == (splits["trainNdxs"].ravel().astype(int) - 1).tolist()
    assert test.indices.tolist() == (splits["testNdxs"].ravel().astype(int) - 1).tolist()
    assert len(train) == 7 and len(test) == 5  # 795/1449 of 12 images
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(12))
    with h5py.File(synth / "nyu_depth_v2_labeled.mat", "r") as handle:
        assert handle["images"].shape == (12, 3, 48, 36) and handle["depths"].shape == (12, 48, 36)
        assert handle["images"].attrs["MATLAB_class"] == b"uint8"
    # the image, depth and normals of item 0 are those the renderer made for its index
    index = int(train.indices[0])
    image, depth, normals, mask = render_room(np.random.default_rng((3, index)), NYU_INTRINSICS.scaled(48, 36).rays())
    assert np.array_equal(train.image(0), image) and np.array_equal(train.depth(0), depth)
    got_normals, got_mask = train.normals(0)
    assert np.array_equal(got_mask, mask.astype(bool))
    assert np.allclose(got_normals, normals, atol=1e-6)
    assert np.allclose(np.linalg.norm(got_normals[got_mask], axis=-1), 1.0, atol=1e-5)


def test_synth_floor_is_at_the_bottom_facing_up(synth) -> None:
    """Camera frame y points down: the floor, seen in the bottom rows, has normal y close to -1."""
    split = load_nyuv2(synth, "train")
    for j in range(len(split)):
        normals, mask = split.normals(j)
        bottom = normals[-1][mask[-1]]
        assert np.median(bottom[:, 1]) < -0.5, j
        depth = split.depth(j)
        assert (depth[mask] > 0).all() and (depth[~mask] == 0).all()


def test_normals_from_synth_depth_match_the_analytic_normals(synth) -> None:
    split = load_nyuv2(synth, "train")
    computed = load_nyuv2(synth, "train", normals="depth", depth_window=3)
    errors = np.concatenate([angular_errors(computed.normals(j)[0].reshape(-1, 3), split.normals(j)[0].reshape(-1, 3),
                                            (computed.normals(j)[1] & split.normals(j)[1]).ravel())
                             for j in range(len(split))])
    assert np.median(errors) < 0.1  # exact on planes; only windows across edges differ


def test_normals_written_from_depth_equal_those_computed_on_the_fly(synth, tmp_path) -> None:
    root = tmp_path / "NYUv2"
    root.mkdir()
    for name in ("nyu_depth_v2_labeled.mat", "splits.mat"):
        (root / name).symlink_to(synth / name)
    path = write_normals_from_depth(root, "from_depth.mat", depth_window=3)
    with open(path, "rb") as handle:
        assert handle.read(19) == b"MATLAB 7.3 MAT-file"
    written = load_nyuv2(root, "test", normals_file="from_depth.mat")
    on_the_fly = load_nyuv2(root, "test", normals="depth", depth_window=3)
    for j in range(len(written)):
        (a, mask_a), (b, mask_b) = written.normals(j), on_the_fly.normals(j)
        assert np.array_equal(mask_a, mask_b) and mask_a.any()
        assert np.allclose(a, b, atol=1e-6)


def test_c_layout_normals_file_reads_the_same(synth, tmp_path) -> None:
    root = tmp_path / "NYUv2"
    root.mkdir()
    for name in ("nyu_depth_v2_labeled.mat", "splits.mat"):
        (root / name).symlink_to(synth / name)
    with h5py.File(synth / "normals_gt.mat", "r") as handle:
        normals, masks = handle["normals"][()], handle["masks"][()]
    with h5py.File(root / "my_normals.h5", "w") as handle:
        handle["normals"] = normals.transpose(0, 3, 2, 1)  # (N, H, W, 3)
        handle["masks"] = masks.transpose(0, 2, 1)
    c_layout = load_nyuv2(root, "test", normals_file="my_normals.h5")
    assert c_layout.normals_layout == "c"
    reference = load_nyuv2(synth, "test")
    for j in range(len(reference)):
        for got, want in zip(c_layout.normals(j), reference.normals(j)):
            assert np.array_equal(got, want)
    assert c_layout.fingerprint() != reference.fingerprint()  # another file, another identity


def test_missing_files_are_named(synth, tmp_path) -> None:
    with pytest.raises(DatasetError, match="NYUv2 folder .* does not exist"):
        load_nyuv2(tmp_path / "nowhere", "train")
    root = tmp_path / "NYUv2"
    root.mkdir()
    with pytest.raises(DatasetError, match="nyu_depth_v2_labeled.mat does not exist.*download"):
        load_nyuv2(root, "train")
    (root / "nyu_depth_v2_labeled.mat").symlink_to(synth / "nyu_depth_v2_labeled.mat")
    with pytest.raises(DatasetError, match="splits.mat does not exist"):
        load_nyuv2(root, "train")
    (root / "splits.mat").symlink_to(synth / "splits.mat")
    with pytest.raises(DatasetError, match="normals_gt.mat do not exist.*normals: depth"):
        load_nyuv2(root, "train")
    assert len(load_nyuv2(root, "train", normals="depth")) == 7
    scipy.io.savemat(root / "bad_splits.mat", {"trainNdxs": np.array([[13.0]]), "testNdxs": np.array([[1.0]])})
    with pytest.raises(DatasetError, match="refers to image 13 but .* holds 12 images"):
        load_nyuv2(root, "train", normals="depth", splits_file="bad_splits.mat")
    (root / "garbage.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="garbage.mat is not a MATLAB v7.3"):
        load_nyuv2(root, "train", normals="file", normals_file="garbage.mat")


def test_cli_writes_the_dataset(tmp_path, capsys) -> None:
    assert main(["data", "synth", "nyuv2", "--out", str(tmp_path), "--seed", "1"]) == 0
    assert "NYUv2" in capsys.readouterr().out
    train = load_nyuv2(tmp_path / "NYUv2", "train")
    assert len(train) == 110 and (train.height, train.width) == (60, 80)


def test_generated_files_are_byte_identical_for_a_seed(tmp_path) -> None:
    a = synth_nyuv2(tmp_path / "a", n_images=4, seed=5, width=32, height=24)
    b = synth_nyuv2(tmp_path / "b", n_images=4, seed=5, width=32, height=24)
    c = synth_nyuv2(tmp_path / "c", n_images=4, seed=6, width=32, height=24)
    names = ("nyu_depth_v2_labeled.mat", "splits.mat", "normals_gt.mat")
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / names[0]).read_bytes() != (c / names[0]).read_bytes()
