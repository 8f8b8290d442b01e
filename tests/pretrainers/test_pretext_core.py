"""Pretext methods (rotation, jigsaw, simclr, moco) and the shared training loop: batch
construction against independent oracles, the losses against hand computations, MoCo's queue and
momentum update, loss decrease on a fixed batch, strict loading of the saved checkpoint, and
resume to the uninterrupted weights."""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

import pretrainers.pretext.trainer as trainer
import benchmark.training.loop as training_loop
from benchmark.checkpoint import load_trunk_weights
from benchmark.errors import ConfigError, DatasetError
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture
from pretrainers.pretext.methods import jigsaw as jigsaw_mod
from pretrainers.pretext.methods.moco import MoCo
from pretrainers.pretext.method import PRETEXT_METHODS
from pretrainers.pretext.methods.simclr import nt_xent

pytestmark = pytest.mark.usefixtures("single_thread")
SIZE = 32


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))  # jigsaw permutation sets


def _image(seed: int, w: int = 48, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _method(name: str, **options):
    cls = PRETEXT_METHODS.get(name)
    return trainer.build_method(name, "resnet18", SIZE, 0, {**cls.options, **options})


def _image_dir(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth images with structure (random noise has no orientation to learn)
        yy, xx = np.mgrid[0:40, 0:48]
        arr = np.stack([(xx * (3 + i) + yy * 2) % 256, (yy * (5 + i)) % 256, (xx * yy // (i + 1)) % 256], -1)
        sub = root / ("a" if i % 3 else "") / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        sub.parent.mkdir(exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(sub)
    return root


# --- rotation ------------------------------------------------------------------------------------


def test_rotation_labels_match_the_applied_rotation() -> None:
    method = _method("rotation")
    out = method.sample(_image(1), 0, torch.Generator().manual_seed(3))
    images, labels = out["images"], out["labels"]
    assert images.shape == (4, 3, SIZE, SIZE) and labels.tolist() == [0, 1, 2, 3]
    for k in range(4):
        assert torch.equal(images[k], torch.rot90(images[0], k, dims=(1, 2)))
    # independently of torch.rot90: one quarter turn counter-clockwise moves the top-right
    # pixel to the top-left, and two turns flip both axes
    x = images[0]
    assert torch.equal(images[1][:, 0, :], x[:, :, SIZE - 1])
    assert torch.equal(images[2], x.flip(1).flip(2))
    assert not torch.equal(images[0], images[1])


# --- jigsaw --------------------------------------------------------------------------------------


def _reassemble(tiles: torch.Tensor, perm) -> torch.Tensor:
    inverse = np.argsort(np.asarray(perm))
    rows = [torch.cat([tiles[inverse[r * 3 + c]] for c in range(3)], dim=2) for r in range(3)]
    return torch.cat(rows, dim=1)


def test_jigsaw_tiles_reassemble_under_the_inverse_permutation() -> None:
    crop = torch.rand(3, 30, 30)
    perm = [4, 0, 8, 2, 6, 1, 3, 7, 5]
    tiles = jigsaw_mod.make_tiles(crop, perm, 10, None, normalize=False)
    assert torch.equal(tiles[0], crop[:, 10:20, 10:20])  # position 0 shows cell 4 (the centre)
    assert torch.equal(_reassemble(tiles, perm), crop)


def test_jigsaw_sample_reassembles_to_its_crop_without_gaps() -> None:
    method = _method("jigsaw", num_permutations=20, tile_fraction=1.0, normalize_tiles=False)
    generator = torch.Generator().manual_seed(11)
    replay = torch.Generator().set_state(generator.get_state())
    out = method.sample(_image(2), 0, generator)
    crop = method.puzzle_crop(_image(2), replay)  # the same draws, in the same order
    label = int(torch.randint(0, 20, (1,), generator=replay))
    assert int(out["labels"]) == label
    assert torch.equal(_reassemble(out["tiles"], method.permutations[label].tolist()), crop)


def test_jigsaw_tiles_with_gaps_lie_inside_their_cells_and_are_normalised() -> None:
    method = _method("jigsaw", num_permutations=20, normalize_tiles=False)
    cell, tile = method.cell, method.tile
    assert cell == SIZE // 3 and tile == round(cell * 64 / 75) and tile < cell
    generator = torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(generator.get_state())
    out = method.sample(_image(3), 0, generator)
    crop = method.puzzle_crop(_image(3), replay)
    perm = method.permutations[int(out["labels"])].tolist()
    for position, j in enumerate(perm):
        r, c = divmod(j, 3)
        windows = [crop[:, r * cell + dy:r * cell + dy + tile, c * cell + dx:c * cell + dx + tile]
                   for dy in range(cell - tile + 1) for dx in range(cell - tile + 1)]
        assert any(torch.equal(out["tiles"][position], w) for w in windows)
    normalised = _method("jigsaw", num_permutations=20).sample(_image(3), 0, torch.Generator().manual_seed(5))
    tiles = normalised["tiles"]
    torch.testing.assert_close(tiles.mean(dim=(2, 3)), torch.zeros(9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiles.std(dim=(2, 3)), torch.ones(9, 3), atol=1e-4, rtol=0)


def test_hamming_set_size_distance_and_greedy_choice() -> None:
    perms = jigsaw_mod.permutation_set(12, seed=3)
    assert perms.shape == (12, 9) and len({tuple(p) for p in perms}) == 12
    assert (np.sort(perms, 1) == np.arange(9)).all()
    d = np.rint(cdist(perms, perms, metric="hamming") * 9).astype(int)  # scipy: fraction of positions
    np.fill_diagonal(d, 99)
    assert d.min() == jigsaw_mod.min_hamming(perms) and d.min() >= 8
    # greedy max-min: every chosen permutation has the largest possible minimum distance to the
    # ones before it (checked by brute force over all 9! permutations)
    every = np.array(list(itertools.permutations(range(9))))
    for i in range(1, 5):
        best = (every[:, None, :] != perms[None, :i, :]).sum(-1).min(1).max()
        assert (perms[i] != perms[:i]).sum(-1).min() == best
    # the requested minimum distance is enforced
    method = _method("jigsaw", num_permutations=12, permutation_seed=3, min_distance=8)
    assert method.permutations.shape == (12, 9)
    with pytest.raises(ConfigError, match="minimum Hamming distance"):
        _method("jigsaw", num_permutations=12, permutation_seed=3, min_distance=9)
    # cached on disk: a second process reads the same set back
    jigsaw_mod.permutation_set.cache_clear()
    assert np.array_equal(jigsaw_mod.permutation_set(12, seed=3), perms)
    average = jigsaw_mod.permutation_set(12, seed=3, selection="average")
    assert average.shape == (12, 9) and np.array_equal(average[0], perms[0])  # same seeded start


# --- losses --------------------------------------------------------------------------------------


def test_nt_xent_matches_the_loop_formula() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    tau = 0.3
    z = [v / v.norm() for v in torch.cat([z1, z2])]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + 5) % n2
        numerator = math.exp(float(z[i] @ z[j]) / tau)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(numerator / denominator)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / n2, rel=1e-12)


# --- MoCo ----------------------------------------------------------------------------------------


def _moco(**options) -> MoCo:
    return _method("moco", queue_size=5, dim=4, hidden_dim=8, **options)


def test_moco_momentum_update_exact_values() -> None:
    method = _moco(momentum=0.9)
    with torch.no_grad():
        for i, (q, k) in enumerate(zip(method.query_parameters(), method.key_parameters())):
            q.fill_(2.0 + i)
            k.fill_(1.0)
    method.momentum_update()
    for i, (q, k) in enumerate(zip(method.query_parameters(), method.key_parameters())):
        assert not k.requires_grad
        assert torch.allclose(k, torch.full_like(k, 0.9 * 1.0 + 0.1 * (2.0 + i)), rtol=1e-6, atol=0)
        assert torch.equal(q, torch.full_like(q, 2.0 + i))  # the query encoder is untouched
    assert len(method.query_parameters()) == len(method.key_parameters()) > 60


def test_moco_queue_enqueues_over_the_oldest_and_wraps() -> None:
    method = _moco()
    initial = method.queue.clone()
    a = torch.arange(12, dtype=torch.float32).view(3, 4)
    method.enqueue(a)
    assert int(method.queue_ptr) == 3
    assert torch.equal(method.queue[:3], a) and torch.equal(method.queue[3:], initial[3:])
    b = 100 + torch.arange(12, dtype=torch.float32).view(3, 4)
    method.enqueue(b)
    assert int(method.queue_ptr) == 1  # (3 + 3) mod 5
    assert torch.equal(method.queue, torch.stack([b[2], a[1], a[2], b[0], b[1]]))


def test_moco_training_step_updates_keys_by_momentum_and_enqueues_them() -> None:
    method = _moco(momentum=0.99, shuffle_groups=2)
    batch = {k: torch.stack([method.sample(_image(i), i, torch.Generator().manual_seed(i))[k] for i in range(4)])
             for k in ("query", "key")}
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    key_before = [p.clone() for p in method.key_parameters()]
    loss, _ = method(batch)
    keys = method._keys.clone()
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in method.key_parameters())
    optimizer.step()
    method.after_step()
    for before, q, k in zip(key_before, method.query_parameters(), method.key_parameters()):
        torch.testing.assert_close(k, 0.99 * before + 0.01 * q)
    assert torch.equal(method.queue[:4], keys) and int(method.queue_ptr) == 4
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(4))


# --- learning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,options", [
    ("rotation", {}),
    ("jigsaw", {"num_permutations": 8}),
    ("simclr", {"blur": False}),
    ("moco", {"queue_size": 64, "dim": 16}),
])
def test_a_few_steps_reduce_the_pretext_loss_on_a_fixed_batch(name, options) -> None:
    torch.manual_seed(0)
    method = _method(name, **options)
    samples = [method.sample(_image(i), i, torch.Generator().manual_seed(i)) for i in range(6)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.05, momentum=0.9)
    method.train()
    losses = []
    for _ in range(8):
        loss, metrics = method(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if name == "moco":
            method.momentum_update()  # the queue stays fixed: this batch's keys must not become its negatives
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and 0.0 <= metrics["acc"] <= 1.0
    assert min(losses[-3:]) < 0.8 * losses[0], losses


# --- the loop ----------------------------------------------------------------------------------


def test_image_listing_is_recursive_sorted_and_fingerprinted(tmp_path) -> None:
    root = _image_dir(tmp_path / "imgs", n=6)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "UPPER.JPEG").write_bytes((root / "img00.jpg").read_bytes())
    paths, base, _ = trainer.resolve_images(root)
    rel = [p.relative_to(root).as_posix() for p in paths]
    assert rel == sorted(rel) and "a/UPPER.JPEG" in rel and "notes.txt" not in rel and len(rel) == 7
    expected = hashlib.sha256("".join(f"{r}\t{(root / r).stat().st_size}\n" for r in sorted(rel)).encode())
    assert trainer.data_fingerprint(paths, base) == expected.hexdigest()
    with pytest.raises(DatasetError, match="does not exist"):
        trainer.resolve_images(tmp_path / "nowhere")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_a_dataset_error_naming_it(tmp_path, workers) -> None:
    root = _image_dir(tmp_path / "imgs", n=4)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        trainer.train_pretext("rotation", root, tmp_path / "out.pth", arch="resnet18", epochs=1, batch_size=5,
                              image_size=SIZE, device="cpu", num_workers=workers)


def test_checkpoint_loads_strictly_into_the_benchmark(tmp_path) -> None:
    root = _image_dir(tmp_path / "imgs", n=8)
    out = tmp_path / "rot.pth"
    meta = trainer.train_pretext("rotation", root, out, arch="resnet18", epochs=2, batch_size=4, image_size=SIZE,
                                 device="cpu", num_workers=0)
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"state_dict", "meta"} and saved["meta"] == meta
    assert not any(k.startswith(("fc.", "head.")) for k in saved["state_dict"])
    model = create_model("resnet18", seed=123)
    load_trunk_weights(model, get_architecture("resnet18"), out)  # strict: raises on any mismatch
    for key, value in saved["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value)
    assert not torch.equal(saved["state_dict"]["conv1.weight"], create_model("resnet18", seed=0).conv1.weight)
    assert meta["method"] == "rotation" and meta["arch"] == "resnet18" and meta["epochs"] == 2
    assert len(meta["loss_history"]) == 2 and meta["final_loss"] == meta["loss_history"][-1]
    assert meta["data_fingerprint"] == trainer.data_fingerprint(*trainer.resolve_images(root)[:2])
    assert out.with_suffix(".json").is_file() and not out.with_name("rot.partial.pth").exists()
    rows = out.with_name("rot.log.csv").read_text().splitlines()
    assert rows[0] == "iteration,epoch,lr,loss,acc" and len(rows) == 1 + 4


def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch) -> None:
    root = _image_dir(tmp_path / "imgs", n=12)
    kwargs = dict(arch="resnet18", epochs=2, batch_size=4, image_size=SIZE, device="cpu", checkpoint_every=2,
                  method_options={"queue_size": 8, "dim": 8, "blur": False})
    whole = trainer.train_pretext("moco", root, tmp_path / "a" / "m.pth", num_workers=0, **kwargs)

    saves = []
    real_save = trainer.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 3:  # iterations 2 (every 2), 3 (end of epoch 0), 4: killed mid-epoch 1
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "atomic_torch_save", save_then_die)
    monkeypatch.setattr(training_loop, "atomic_torch_save", save_then_die)  # the loop's checkpoints
    out = tmp_path / "b" / "m.pth"
    with pytest.raises(KeyboardInterrupt):
        trainer.train_pretext("moco", root, out, num_workers=0, **kwargs)
    state = torch.load(saves[-1], weights_only=True)
    assert (state["iteration"], state["epoch"], state["position"]) == (4, 1, 1)
    monkeypatch.setattr(trainer, "atomic_torch_save", real_save)
    monkeypatch.setattr(training_loop, "atomic_torch_save", real_save)
    resumed = trainer.train_pretext("moco", root, out, num_workers=1, **kwargs)  # workers do not matter

    a = torch.load(tmp_path / "a" / "m.pth", weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["loss_history"] == whole["loss_history"] and resumed["final_metrics"] == whole["final_metrics"]
    assert (tmp_path / "a" / "m.log.csv").read_text() == out.with_name("m.log.csv").read_text()


def test_embed_helper_uses_torchvision_trunk_stages() -> None:
    method = _method("rotation")
    x = torch.rand(2, 3, SIZE, SIZE)
    model = method.trunk.eval()
    expected = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(x))))))))).flatten(1)
    assert method.embed_dim == 512 and torch.allclose(method.embed(x), expected)
    alexnet = trainer.build_method("rotation", "alexnet", 64, 0, dict(PRETEXT_METHODS.get("rotation").options))
    assert alexnet.embed_dim == 256 and alexnet.embed(torch.rand(2, 3, 64, 64)).shape == (2, 256)


def test_lars_run_and_its_checkpoint(tmp_path) -> None:
    """--optimizer lars trains through the loop, is recorded, and is part of the run's identity."""
    root = _image_dir(tmp_path / "imgs", n=8)
    kwargs = dict(arch="resnet18", epochs=1, batch_size=4, image_size=SIZE, device="cpu", num_workers=0)
    lars = trainer.train_pretext("simclr", root, tmp_path / "lars.pth", optimizer="lars", **kwargs)
    sgd = trainer.train_pretext("simclr", root, tmp_path / "sgd.pth", **kwargs)
    assert lars["optimizer"] == "lars" and sgd["optimizer"] == "sgd" and lars["run_id"] != sgd["run_id"]
    assert all(math.isfinite(v) for v in lars["loss_history"])
    a = torch.load(tmp_path / "lars.pth", weights_only=True)["state_dict"]["conv1.weight"]
    b = torch.load(tmp_path / "sgd.pth", weights_only=True)["state_dict"]["conv1.weight"]
    assert not torch.equal(a, b)
