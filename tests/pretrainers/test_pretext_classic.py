"""Classic pretext methods (colorization, relative_position, deepcluster, exemplar, context_encoder,
pirl, nat): batch construction against independent computations, optimisation on a fixed batch,
exact state restoration, and a one-epoch run of the shared loop whose checkpoint loads strictly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from benchmark.checkpoint import load_trunk_weights
from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture
from pretrainers.pretext.methods import colorization as col
from pretrainers.pretext.methods import deepcluster as dc
from pretrainers.pretext.methods import nat as nat_mod
from pretrainers.pretext.methods import pirl as pirl_mod
from pretrainers.pretext.methods import relative_position as rp
from pretrainers.pretext.method import PRETEXT_METHODS

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 64
N_IMAGES = 16
# scaled-down options for 64 px images and a handful of images
SMALL = {
    "colorization": {"head_channels": 32},
    "relative_position": {"patch_size": 20, "gap": 6, "jitter": 2, "hidden": 64, "aberration": "none"},
    "deepcluster": {"num_clusters": 4, "pca_dim": 8, "kmeans_iterations": 5},
    "exemplar": {},
    "context_encoder": {"decoder_width": 32},
    "pirl": {"num_negatives": 32, "dim": 16},
    "nat": {"target_dim": 16, "reassign_every": 1},
}


def make_images(n: int = N_IMAGES, seed: int = 0) -> list[Image.Image]:
    """Coloured gradients with a few rectangles: colour, structure and no two images alike."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = int(rng.integers(64, 96)), int(rng.integers(64, 96))
        y, x = np.mgrid[0:h, 0:w] / 96.0
        base = rng.uniform(0, 1, 3) + rng.uniform(-1, 1, 3) * y[..., None] + rng.uniform(-1, 1, 3) * x[..., None]
        for _ in range(3):
            y0, x0 = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            base[y0:y0 + int(rng.integers(8, 16)), x0:x0 + int(rng.integers(8, 16))] = rng.uniform(0, 1, 3)
        images.append(Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    return images


IMAGES = make_images()


class PlainLoader:
    """What the loop's plain loader yields: (normalised images, indices) of the whole dataset."""

    def __init__(self, images, size=SIZE, batch=8):
        transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.tensors = torch.stack([transform(image) for image in images])
        self.dataset, self.batch = list(range(len(images))), batch

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch):
            end = min(start + self.batch, len(self.dataset))
            yield self.tensors[start:start + self.batch], torch.arange(start, end)


def build(name: str, arch: str = "resnet18", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return PRETEXT_METHODS.get(name)(create_model(arch, seed=seed), get_architecture(arch), SIZE,
                                     **{**SMALL[name], **overrides})


def make_batch(method, images=IMAGES[:8], seed=0) -> dict[str, torch.Tensor]:
    examples = [method.sample(image, i, torch.Generator().manual_seed(seed * 1000 + i))
                for i, image in enumerate(images)]
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


# --- colorization --------------------------------------------------------------------------------


def test_lab_conversion_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]],
                       dtype=torch.float64).T
    lab = col.rgb_to_lab(rgb).T
    # CIE Lab (D65) of the sRGB primaries, white, black and 50 % grey (standard published values)
    expected = torch.tensor([[53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602],
                             [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.3889, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(lab, expected, atol=0.01)
    colours = torch.rand(3, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(col.lab_to_rgb(col.rgb_to_lab(colours)), colours, atol=1e-9)
    grey = col.lightness_to_gray(torch.tensor([0.0, 25.0, 53.3889, 100.0], dtype=torch.float64))
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert torch.allclose(col.rgb_to_lab(grey)[0], torch.tensor([0.0, 25.0, 53.3889, 100.0], dtype=torch.float64),
                          atol=1e-3)


def test_lab_conversion_matches_scikit_image_when_installed():
    color = pytest.importorskip("skimage.color")  # not in the project's venv; run where it is installed
    rgb = np.random.default_rng(0).random((5000, 3))
    ours = col.rgb_to_lab(torch.from_numpy(rgb.T.copy())).T.numpy()
    assert np.abs(ours - color.rgb2lab(rgb[None])[0]).max() < 1e-9
    back = col.lab_to_rgb(torch.from_numpy(ours.T.copy())).T.numpy()
    assert np.abs(back - color.lab2rgb(ours[None])[0]).max() < 1e-9


def test_in_gamut_bins():
    occupied, centre = col.gamut_bins(10, "occupied"), col.gamut_bins(10, "centre")
    # not the paper's 313 (see the module docstring): the sRGB gamut of this D65 conversion
    # occupies 261 cells of the 10-unit grid, and 229 cell centres are reachable colours
    assert len(occupied) == 261 and len(centre) == 229
    assert (occupied[:, 0].min(), occupied[:, 0].max(), occupied[:, 1].min(), occupied[:, 1].max()) == (
        -90, 100, -110, 90)
    as_set = {tuple(p) for p in occupied.tolist()}
    assert {tuple(p) for p in centre.tolist()} <= as_set  # a reachable centre lies in its own cell
    # independent: random 8-bit colours all fall in occupied cells
    colours = torch.randint(0, 256, (3, 20000), generator=torch.Generator().manual_seed(1)).double() / 255
    cells = torch.round(col.rgb_to_lab(colours)[1:].T / 10) * 10
    assert {tuple(p) for p in cells.tolist()} <= as_set
    # a centre is reachable: some lightness makes it an sRGB colour
    for a, b in centre[::20].tolist():
        lab = torch.stack([torch.linspace(0, 100, 2001, dtype=torch.float64),
                           torch.full((2001,), a, dtype=torch.float64),
                           torch.full((2001,), b, dtype=torch.float64)])
        rgb = col.lab_to_rgb(lab)
        assert ((rgb >= 0) & (rgb <= 1)).all(0).any()
    assert len(col.gamut_bins(20, "occupied")) < 261  # the grid is configurable


def test_soft_encoding_and_rebalancing():
    centres = col.gamut_bins(10, "occupied").float()
    ab = torch.tensor([[[[13.0, -42.0]], [[-27.0, 71.0]]]])  # (1, 2, 1, 2): two pixels
    encoded = col.soft_encode(ab, centres, 5, 5.0)
    assert torch.allclose(encoded.sum(1), torch.ones(1, 1, 2))
    for pixel in range(2):
        point = ab[0, :, 0, pixel]
        true_bin = torch.round(point / 10) * 10
        peak = centres[encoded[0, :, 0, pixel].argmax()]
        assert torch.equal(peak, true_bin)
        assert int((encoded[0, :, 0, pixel] > 0).sum()) == 5
        # hand computation: Gaussian of the 5 nearest distances, normalised
        d = torch.sort(((centres - point) ** 2).sum(1).sqrt()).values[:5]
        g = torch.exp(-d ** 2 / 50)
        assert torch.allclose(torch.sort(encoded[0, :, 0, pixel], descending=True).values[:5], g / g.sum(), atol=1e-6)
    # rebalancing on three bins in a row, 10 apart: hand smoothing, mixing, normalisation
    three = torch.tensor([[0.0, 0.0], [0.0, 10.0], [0.0, 20.0]])
    counts = torch.tensor([6.0, 3.0, 1.0])
    smoothed, weights = col.rebalancing_weights(counts, three, 5.0, 0.5)
    kernel = torch.tensor([[math.exp(-((i - j) * 10) ** 2 / 50) for j in range(3)] for i in range(3)],
                          dtype=torch.float64)
    hand = kernel @ (counts.double() / 10)
    hand = hand / hand.sum()
    assert torch.allclose(smoothed, hand)
    raw = 1 / (0.5 * hand + 0.5 / 3)
    assert torch.allclose(weights, raw / (hand * raw).sum())
    assert abs(float((smoothed * weights).sum()) - 1) < 1e-12  # expectation 1 under p~
    assert weights[2] > weights[1] > weights[0]  # rare colours weigh more


def test_colorization_batch_and_prior():
    method = build("colorization")
    batch = make_batch(method, IMAGES[:2])
    assert batch["input"].shape == (2, 3, SIZE, SIZE) and batch["ab"].shape == (2, 2, SIZE // 4, SIZE // 4)
    grey = batch["input"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    loader = PlainLoader(IMAGES[:4])
    method.epoch_start(0, loader, torch.device("cpu"))
    # independent histogram: every pixel's nearest bin
    rgb = loader.tensors * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ab = col.rgb_to_lab(rgb.clamp(0, 1).permute(1, 0, 2, 3))[1:].reshape(2, -1).T
    counts = torch.bincount(torch.cdist(ab, method.centres).argmin(1), minlength=len(method.centres))
    smoothed, weights = col.rebalancing_weights(counts.double(), method.centres)
    assert torch.allclose(method.prior.double(), smoothed, atol=1e-6)
    assert torch.allclose(method.class_weights.double(), weights, rtol=1e-5)
    assert abs(float((method.prior.double() * method.class_weights.double()).sum()) - 1) < 1e-5


# --- relative position ---------------------------------------------------------------------------


def test_relative_position_patches_at_labelled_offsets():
    method = build("relative_position")
    patch, gap, jitter = 20, 6, 2
    step = patch + gap
    seen = set()
    for i in range(40):
        image = IMAGES[i % len(IMAGES)]
        out = method.sample(image, i, torch.Generator().manual_seed(i))
        (y1, x1), (y2, x2) = out["corners"].tolist()
        dy, dx = y2 - y1, x2 - x1
        label = int(out["label"])
        seen.add(label)
        assert (round(dy / step), round(dx / step)) == rp.NEIGHBOURS[label]
        assert abs(dy - rp.NEIGHBOURS[label][0] * step) <= 2 * jitter
        assert abs(dx - rp.NEIGHBOURS[label][1] * step) <= 2 * jitter
        assert max(abs(dy), abs(dx)) >= patch + gap - 2 * jitter > patch  # a gap between them, never overlapping
        # the patches are the crops at the exposed corners (aberration off)
        rgb, _, _ = method.patch_pair(image, torch.Generator().manual_seed(i))
        for k, (y, x) in enumerate(out["corners"].tolist()):
            assert 0 <= y and y + patch <= rgb.shape[1] and 0 <= x and x + patch <= rgb.shape[2]
            crop = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(rgb[:, y:y + patch, x:x + patch])
            assert torch.allclose(out["patches"][k], crop, atol=1e-6)
    assert len(seen) >= 6
    with pytest.raises(ConfigError, match="gap"):
        build("relative_position", gap=4)


def test_relative_position_chromatic_aberration_countermeasures():
    generator = torch.Generator().manual_seed(0)
    patch = torch.rand(3, 20, 20, generator=generator)
    dropped = rp.drop_colours(patch, torch.Generator().manual_seed(3))
    kept = [c for c in range(3) if torch.equal(dropped[c], patch[c])]
    assert len(kept) == 1
    for c in set(range(3)) - set(kept):
        assert abs(float(dropped[c].mean()) - 0.5) < 1e-3 and float(dropped[c].std()) < float(patch[kept[0]].std()) / 50
    projected = rp.project_out_green_magenta(patch)
    axis = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6)
    assert float(torch.einsum("c,chw->hw", axis, projected).abs().max()) < 1e-6
    # what is orthogonal to the axis is untouched
    assert torch.allclose(projected.sum(0), patch.sum(0), atol=1e-6)


# --- deepcluster ---------------------------------------------------------------------------------


def test_empty_clusters_are_split():
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 2, generator=generator) * 0.1 + 5,
                   torch.randn(10, 2, generator=generator) * 0.1 - 5]).double()
    centroids = torch.tensor([[5.0, 5.0], [-5.0, -5.0], [100.0, 100.0], [-100.0, 100.0]], dtype=torch.float64)
    assignment = dc.nearest_centroid(x, centroids)
    assert torch.bincount(assignment, minlength=4).tolist() == [10, 10, 0, 0]
    fixed, new_centroids, refilled = dc.split_empty_clusters(x, assignment, centroids, generator)
    sizes = torch.bincount(fixed, minlength=4)
    assert refilled == 2 and (sizes > 0).all() and int(sizes.sum()) == 20
    for empty in (2, 3):  # the refilled cluster's centroid is a perturbed copy of a donor's
        assert min(float((new_centroids[empty] - c).norm()) for c in centroids[:2]) < 0.02
    # identical points: the split cannot separate them by distance and falls back to halves
    same = torch.ones(6, 2, dtype=torch.float64)
    fixed, _, _ = dc.split_empty_clusters(same, torch.zeros(6, dtype=torch.long), torch.ones(2, 2, dtype=torch.float64),
                                          generator)
    assert torch.bincount(fixed, minlength=2).tolist() == [3, 3]
    # k-means on more clusters than natural groups: every cluster non-empty
    assignment, _, _ = dc.kmeans(x, 6, 10, torch.Generator().manual_seed(1))
    assert (torch.bincount(assignment, minlength=6) > 0).all()
    with pytest.raises(ConfigError, match="num_clusters"):
        dc.kmeans(x, 21, 2, generator)


def test_kmeans_and_whitening_match_sklearn():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    data = rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6)) * 3
    ours = dc.pca_whiten(torch.from_numpy(data), 4).numpy()
    theirs = PCA(4, whiten=True, svd_solver="full").fit_transform(data)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    signs = np.sign((ours * theirs).sum(0))  # principal directions are defined up to sign
    assert np.allclose(ours, theirs * signs, atol=1e-4)
    x = torch.from_numpy(ours)
    generator = torch.Generator().manual_seed(0)
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:5]].numpy()
    assignment, centroids, refilled = dc.kmeans(x, 5, 30, generator)
    reference = KMeans(5, init=init, n_init=1, max_iter=30, tol=0, algorithm="lloyd").fit(ours)
    assert refilled == 0
    assert np.array_equal(assignment.numpy(), reference.labels_)
    assert np.allclose(centroids.numpy(), reference.cluster_centers_, atol=1e-8)


def test_deepcluster_pseudo_labels_and_uniform_cluster_weights():
    method = build("deepcluster", balance="loss")
    loader = PlainLoader(IMAGES)
    method.epoch_start(0, loader, torch.device("cpu"))
    # the pseudo-labels are k-means on the whitened features, with the method's seeded generator
    features = method.dataset_features(loader, torch.device("cpu"))
    expected, _, _ = dc.kmeans(dc.pca_whiten(features, 8), 4, 5, torch.Generator().manual_seed(int(method.kmeans_seed)))
    assert torch.equal(method.assignments, expected)
    sizes = torch.bincount(method.assignments, minlength=4)
    assert (sizes > 0).all() and torch.equal(method.cluster_sizes, sizes)
    weights = method.sample_weights()
    per_cluster = torch.zeros(4, dtype=torch.float64).index_add_(0, method.assignments, weights)
    assert torch.allclose(per_cluster, torch.ones(4, dtype=torch.float64))  # uniform over clusters
    # forward: labels looked up by index, loss weighted N / (K size)
    batch = make_batch(method, IMAGES[:8])
    method.eval()
    loss, _ = method(batch)
    labels = method.assignments[batch["index"]]
    ce_each = F.cross_entropy(method.head(method.embed(batch["image"])), labels, reduction="none")
    assert torch.allclose(loss, (ce_each * 16 / (4 * sizes[labels].float())).mean(), atol=1e-6)
    # the head is re-initialised by the clustering
    assert float(method.head.bias.detach().abs().sum()) == 0.0 and float(method.head.weight.detach().std()) < 0.02


def test_deepcluster_sampler_is_uniform_over_clusters():
    """The reference's UnifLabelSampler: N / K' + 1 draws per non-empty cluster (with replacement
    only for clusters no larger than that), shuffled, the first N kept; seeded by (seed, epoch)."""
    method = build("deepcluster")  # balance: sampler, the default
    n = len(IMAGES)
    assert method.epoch_indices(0, 0, n) is None  # nothing clustered yet: the loop's own order
    # hand-made clustering of 16 images: sizes 10, 4, 2 and an empty cluster
    method._resize("assignments", (n,))
    method.assignments.copy_(torch.tensor([0] * 10 + [1] * 4 + [2] * 2))
    method.cluster_sizes.copy_(torch.tensor([10, 4, 2, 0]))
    order = method.epoch_indices(7, 3, n)
    assert len(order) == n and torch.equal(order, method.epoch_indices(7, 3, n))
    assert not torch.equal(order, method.epoch_indices(7, 4, n))
    per_cluster = n // 3 + 1  # 6 draws from each of the 3 non-empty clusters, 18 -> first 16 kept
    counts = torch.bincount(method.assignments[order], minlength=4)
    assert counts[3] == 0 and counts.sum() == n and bool((counts[:3] <= per_cluster).all())
    assert bool((counts[:3] >= per_cluster - 2).all())
    big = order[method.assignments[order] == 0]
    assert len(set(big.tolist())) == len(big)  # 10 members > 6 draws: without replacement
    # repeats of an image in one epoch get their own augmentation keys
    from pretrainers.pretext.trainer import EpochBatches

    keys = [key for batch in EpochBatches(n, 4, 7, 3, order=order) for key in batch]
    assert len(set(keys)) == len(keys) == n and all(key[:2] == (int(i), 3) for key, i in zip(keys, order))
    # the loss is not re-weighted when the sampler balances
    method.eval()
    batch = make_batch(method, IMAGES[:8])
    loss, _ = method(batch)
    labels = method.assignments[batch["index"]]
    assert torch.allclose(loss, F.cross_entropy(method.head(method.embed(batch["image"])), labels), atol=1e-6)


# --- exemplar ------------------------------------------------------------------------------------


def test_exemplar_labels_and_views():
    method = build("exemplar")
    method.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    assert torch.equal(method.class_of_image, torch.arange(N_IMAGES))
    assert method.class_weight.shape == (N_IMAGES, method.embed_dim)
    batch = make_batch(method, IMAGES[:4])
    assert batch["views"].shape == (4, 2, 3, SIZE, SIZE)
    assert torch.equal(method.class_of_image[batch["index"]], torch.arange(4))
    for i in range(4):
        assert float((batch["views"][i, 0] - batch["views"][i, 1]).abs().mean()) > 0.05  # views differ
    again = make_batch(method, IMAGES[:4])
    assert torch.equal(again["views"], batch["views"])  # a function of the generator
    subset = build("exemplar", num_classes=5)
    subset.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    members = subset.class_of_image[subset.class_of_image >= 0]
    assert sorted(members.tolist()) == list(range(5)) and int((subset.class_of_image == -100).sum()) == 11
    with pytest.raises(ConfigError, match="num_classes"):
        build("exemplar", num_classes=1)


# --- context encoder -----------------------------------------------------------------------------


def test_context_encoder_mask_and_loss():
    method = build("context_encoder")
    out = method.sample(IMAGES[0], 0, torch.Generator().manual_seed(0))
    # central 32 x 32 square predicted; its 4 px border stays visible; 24 x 24 inside is erased
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected[20:44, 20:44] = True
    assert torch.equal(out["erased"], expected)
    assert float(out["input"][:, expected].abs().max()) == 0.0
    assert torch.equal(out["input"][:, ~expected], out["target"][:, ~expected])
    weights = torch.zeros(SIZE, SIZE)
    weights[16:48, 16:48] = 10.0
    weights[20:44, 20:44] = 1.0
    assert torch.equal(out["weights"], weights)
    target = out["target"][None]
    w = out["weights"][None]
    assert float(method.reconstruction_loss(target.clone(), target, w)) == 0.0
    # hand value: an error of 1 everywhere costs the mean weight over the predicted square
    hand = (24 * 24 + 10 * (32 * 32 - 24 * 24)) / 1024
    assert abs(float(method.reconstruction_loss(target + 1, target, w)) - hand) < 1e-5
    blocks = build("context_encoder", mask="random_blocks")
    out = blocks.sample(IMAGES[0], 0, torch.Generator().manual_seed(0))
    assert out["erased"].any() and torch.equal(out["weights"], out["erased"].float())
    assert float(out["input"][:, out["erased"]].abs().max()) == 0.0


def test_context_encoder_adversarial_gradients_reach_each_player_only_from_its_loss():
    method = build("context_encoder", adversarial=True)
    batch = make_batch(method, IMAGES[:4])
    _, metrics = method(batch)
    # generator side: d(adv term)/d(discriminator) must be zero, so the discriminator's gradient
    # equals that of its own BCE loss alone
    method.zero_grad()
    loss, _ = method(batch)
    loss.backward()
    total = [p.grad.clone() for p in method.discriminator.parameters()]
    method.zero_grad()
    prediction = method.decoder(method.trunk_features(batch["input"]))
    composite = torch.where((batch["weights"] > 0).unsqueeze(1), prediction, batch["input"]).detach()
    real = torch.ones(4, 1)
    d_loss = (F.binary_cross_entropy_with_logits(method.discriminator(batch["target"]), real)
              + F.binary_cross_entropy_with_logits(method.discriminator(composite), 0 * real))
    d_loss.backward()
    for a, p in zip(total, method.discriminator.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert {"rec", "adv", "d_loss"} <= set(metrics)


# --- PIRL ----------------------------------------------------------------------------------------


def test_pirl_memory_update_and_nce_by_hand():
    method = build("pirl")
    method.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    memory = F.normalize(torch.randn(N_IMAGES, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    method.memory.copy_(memory)
    features = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    method.update_memory(torch.tensor([3, 7]), features)
    for row, i in enumerate((3, 7)):
        mixed = [0.5 * float(m) + 0.5 * float(f) for m, f in zip(memory[i], features[row])]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert torch.allclose(method.memory[i], torch.tensor([v / norm for v in mixed]), atol=1e-6)
    untouched = [i for i in range(N_IMAGES) if i not in (3, 7)]
    assert torch.equal(method.memory[untouched], memory[untouched])
    # NCE loss on known vectors, by hand with python floats
    m_pos, x, negs = memory[:2], features, memory[4:7]
    tau, n, z = 0.07, 16, 2.5
    value = float(pirl_mod.nce_loss(m_pos, x, negs, tau, n, z))
    noise = 3 / 16
    total = 0.0
    for b in range(2):
        p = math.exp(float(m_pos[b] @ x[b]) / tau) / z
        term = -math.log(p / (p + noise))
        for k in range(3):
            q = math.exp(float(negs[k] @ x[b]) / tau) / z
            term -= math.log(1 - q / (q + noise))
        total += term
    assert abs(value - total / 2) < 1e-4 * max(1.0, abs(total))


def test_pirl_tiles_are_shuffled_cells():
    method = build("pirl")
    view = torch.arange(3 * SIZE * SIZE, dtype=torch.float32).view(3, SIZE, SIZE)
    tiles = method.tiles(view, torch.Generator().manual_seed(0))
    cell, tile = SIZE // 3, method.tile_size
    assert tiles.shape == (9, 3, tile, tile)
    cells = []
    for t in tiles:  # locate each tile in the view from its top-left value
        y, x = divmod(int(t[0, 0, 0]), SIZE)
        assert torch.equal(view[:, y:y + tile, x:x + tile], t)
        assert y // cell == (y + tile - 1) // cell and x // cell == (x + tile - 1) // cell  # inside one cell
        cells.append((y // cell) * 3 + x // cell)
    assert sorted(cells) == list(range(9)) and cells != list(range(9))


# --- NAT -----------------------------------------------------------------------------------------


def test_nat_hungarian_is_optimal_against_brute_force():
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    targets = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    scores = (features @ targets.T).tolist()
    best = max(itertools.permutations(range(6)), key=lambda p: sum(scores[i][p[i]] for i in range(6)))
    assert nat_mod.best_assignment(features, targets).tolist() == list(best)
    # the method reassigns only among the batch's targets and reaches the optimum
    method = build("nat")
    method.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    assert sorted(method.assignment.tolist()) == list(range(N_IMAGES))
    assert torch.allclose(method.targets.norm(dim=1), torch.ones(N_IMAGES))
    indices = torch.tensor([1, 4, 6, 9, 12, 15])
    before = method.assignment.clone()
    feats = F.normalize(torch.randn(6, 16, generator=generator), dim=1)
    method.reassign(indices, feats)
    assert sorted(method.assignment[indices].tolist()) == sorted(before[indices].tolist())
    others = torch.ones(N_IMAGES, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(method.assignment[others], before[others])
    held = before[indices]
    s = (feats @ method.targets[held].T).tolist()
    optimum = max(sum(s[i][p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
    achieved = float((feats * method.targets[method.assignment[indices]]).sum())
    assert abs(achieved - optimum) < 1e-5


# --- every method: optimisation, state round trip, the shared loop -------------------------------

CLASSIC = ("colorization", "relative_position", "deepcluster", "exemplar", "context_encoder", "pirl", "nat")


@pytest.mark.parametrize("name", CLASSIC)
def test_steps_reduce_the_loss_on_a_fixed_batch(name):
    method = build(name)
    method.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    batch = make_batch(method)
    lr = {"colorization": 0.1}.get(name, 0.01)  # its 261-way per-pixel loss moves slowly at 0.01
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=lr, momentum=0.9)
    method.train()
    losses = []
    for _ in range(5):
        loss, _ = method(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        # no after_step: PIRL's bank update moves its own targets, so the loss is measured with the bank fixed
    assert all(math.isfinite(v) for v in losses)
    # colorization's 261-way soft cross-entropy per pixel starts near log(261) and falls slowly with
    # SGD (the paper used Adam): asked for a steady decrease instead of a 10 % drop
    if name == "colorization":
        assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.96 * losses[0], losses
    else:
        assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", CLASSIC)
def test_state_dict_round_trip_restores_the_method_exactly(name, tmp_path):
    method = build(name, seed=3)
    method.epoch_start(0, PlainLoader(IMAGES), torch.device("cpu"))
    batch = make_batch(method)
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.01, momentum=0.9)
    loss, _ = method(batch)
    loss.backward()
    optimizer.step()
    method.after_step()
    torch.save(method.state_dict(), tmp_path / "state.pth")
    fresh = build(name, seed=7)  # other initial weights; per-image state not sized yet
    fresh.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True), strict=True)
    saved, restored = method.state_dict(), fresh.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    method.eval()
    fresh.eval()
    torch.manual_seed(0)
    expected, _ = method(batch)
    torch.manual_seed(0)
    got, _ = fresh(batch)
    assert torch.equal(expected, got)


@pytest.mark.parametrize("name", CLASSIC)
def test_one_epoch_of_the_shared_loop_gives_a_strictly_loadable_checkpoint(name, tmp_path):
    from pretrainers.pretext.trainer import train_pretext

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for i, image in enumerate(IMAGES):
        image.save(image_dir / f"{i:02d}.png")
    out = tmp_path / f"{name}.pth"
    meta = train_pretext(name, image_dir, out, arch="resnet18", epochs=1, batch_size=8, image_size=SIZE, seed=0,
                         device="cpu", method_options=SMALL[name], num_workers=0, lr=0.01)
    assert meta["iterations"] == 2 and math.isfinite(meta["final_loss"])
    model = create_model("resnet18", seed=123)
    load_trunk_weights(model, get_architecture("resnet18"), out)  # strict: raises on any mismatch
    saved = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])


@pytest.mark.parametrize("name", CLASSIC)
def test_alexnet_trunk(name):
    options = {"relative_position": {"patch_size": 64}, "pirl": {"tile_fraction": 1.0},
               "deepcluster": {"pca_dim": 8}}.get(name, {})
    if name == "pirl":
        with pytest.raises(ConfigError, match="too small"):
            build(name, arch="alexnet")  # 21 px tiles cannot go through AlexNet's strided layers
        return
    method = build(name, arch="alexnet", **options)
    method.epoch_start(0, PlainLoader(IMAGES[:8]), torch.device("cpu"))
    loss, _ = method(make_batch(method, IMAGES[:4]))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and method.trunk.conv1[0].weight.grad is not None


@pytest.mark.parametrize("name", ["deepcluster", "pirl"])
def test_resume_in_the_middle_of_an_epoch_reaches_the_uninterrupted_weights(name, tmp_path, monkeypatch):
    """Per-image state (cluster assignments; memory bank and NCE constant) is restored from the
    checkpoint without epoch_start, so a killed run ends with the weights of an uninterrupted one."""
    from pretrainers.pretext.trainer import train_pretext

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for i, image in enumerate(IMAGES):
        image.save(image_dir / f"{i:02d}.png")
    args = dict(arch="resnet18", epochs=2, batch_size=8, image_size=SIZE, seed=0, device="cpu",
                method_options=SMALL[name], num_workers=0, lr=0.01, checkpoint_every=1)
    train_pretext(name, image_dir, tmp_path / "straight.pth", **args)
    cls = PRETEXT_METHODS.get(name)
    original, calls = cls.after_step, []

    def killed(self):
        calls.append(1)
        if len(calls) == 4:  # during iteration 3: the last checkpoint is mid-epoch 1 (position 1)
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(cls, "after_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_pretext(name, image_dir, tmp_path / "resumed.pth", **args)
    monkeypatch.setattr(cls, "after_step", original)
    starts = []
    epoch_start = cls.epoch_start
    monkeypatch.setattr(cls, "epoch_start", lambda self, *a: (starts.append(a[0]), epoch_start(self, *a)))
    train_pretext(name, image_dir, tmp_path / "resumed.pth", **args)
    assert starts == []  # resumed at position 1 of the last epoch: no clustering / bank creation again
    straight = torch.load(tmp_path / "straight.pth", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
