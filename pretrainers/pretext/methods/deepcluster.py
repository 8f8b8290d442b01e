"""`deepcluster`: k-means pseudo-labels every epoch (Caron et al., ECCV 2018, "DeepCluster").

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual Features".

Every epoch (``epoch_start``): the pooled trunk features of the whole dataset (plain loader: resize
+ centre crop, trunk in eval mode) are PCA-whitened to ``pca_dim`` dimensions and L2-normalised,
then clustered by k-means into ``num_clusters`` groups; the cluster of each image is its
pseudo-label for the epoch. Empty clusters are handled as in the paper (and Faiss): a non-empty
cluster is drawn with probability proportional to (size - 1), its centroid copied to the empty one,
the two centroids perturbed in opposite directions (x (1 +- 1/1024)) and the drawn cluster's points
reassigned to the nearer of the two (split at the median when they all fall on one side). The
linear classifier on the pooled feature is re-initialised (N(0, 0.01), zero bias, as in the
reference code) every epoch, since cluster ids are arbitrary from one clustering to the next.

Uniform sampling over clusters (``balance: sampler``, the default, as the reference code's
UnifLabelSampler): every epoch draws N/K' + 1 images from each of the K' non-empty clusters (with
replacement when a cluster has no more than that many), shuffles them and keeps the first N;
seeded by (seed, epoch), so a resumed run draws the same epoch. ``balance: loss`` keeps the loop's
once-per-image order and weighs each example N / (K' x size of its cluster) instead (equal
contribution per cluster in expectation); ``none`` neither. ``sample_weights()`` gives the
per-image probabilities 1 / (size of the image's cluster).

Deviation: the paper feeds Sobel-filtered greyscale images (2 channels); the trunk here must keep
torchvision's 3-channel conv1, so it sees RGB, as DeepCluster-v2 and most ResNet re-implementations.
The classifier's optimiser momentum is not reset with it (the loop owns a single optimiser).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError
from benchmark.training import derived_seed
from benchmark.options import Choice, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from ._trunk import SizedState, dataset_size

SPLIT_EPS = 1.0 / 1024  # Faiss's centroid perturbation when splitting a cluster


def pca_whiten(features: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """Project on the top ``dim`` principal components, each scaled to unit variance, then L2-normalise
    the rows (float64)."""
    x = features.double()
    x = x - x.mean(0)
    values, vectors = torch.linalg.eigh(x.T @ x / len(x))
    values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    return F.normalize(x @ vectors / torch.sqrt(values.clamp_min(0) + eps), dim=1)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    # in chunks of rows: the full N x k distance matrix of a large dataset does not fit in memory
    return torch.cat([torch.cdist(part, centroids).argmin(1) for part in x.split(chunk)])


def split_empty_clusters(x: torch.Tensor, assignment: torch.Tensor, centroids: torch.Tensor,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Refill every empty cluster by splitting a non-empty one; returns (assignment, centroids,
    number of clusters refilled). Needs at least as many points as clusters."""
    k = len(centroids)
    assignment, centroids = assignment.clone(), centroids.clone()
    sizes = torch.bincount(assignment, minlength=k)
    refilled = 0
    for empty in (sizes == 0).nonzero().flatten().tolist():
        donor = int(torch.multinomial((sizes - 1).clamp_min(0).double(), 1, generator=generator))
        sign = torch.ones(centroids.shape[1], dtype=centroids.dtype)
        sign[1::2] = -1  # opposite perturbations, alternating per dimension as in Faiss
        base = centroids[donor].clone()
        centroids[empty], centroids[donor] = base * (1 + SPLIT_EPS * sign), base * (1 - SPLIT_EPS * sign)
        members = (assignment == donor).nonzero().flatten()
        points = x[members]
        margin = (points - centroids[donor]).pow(2).sum(1) - (points - centroids[empty]).pow(2).sum(1)
        to_empty = margin > 0
        if to_empty.all() or not to_empty.any():  # all on one side: split at the median margin
            to_empty = torch.zeros_like(to_empty)
            to_empty[margin.argsort(descending=True)[:len(members) // 2]] = True
        assignment[members[to_empty]] = empty
        sizes[empty], sizes[donor] = int(to_empty.sum()), int((~to_empty).sum())
        refilled += 1
    return assignment, centroids, refilled


def kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator):
    """Lloyd's k-means from k random distinct points, with empty-cluster splitting after every
    assignment. Returns (assignment (N,), centroids (k, D), total clusters refilled)."""
    if len(x) < k:
        raise ConfigError(f"deepcluster: num_clusters ({k}) is larger than the number of images ({len(x)})")
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    refilled = 0
    for _ in range(iterations):
        assignment, centroids, count = split_empty_clusters(x, nearest_centroid(x, centroids), centroids, generator)
        refilled += count
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        centroids = sums / torch.bincount(assignment, minlength=k).unsqueeze(1).to(x)
    assignment, centroids, count = split_empty_clusters(x, nearest_centroid(x, centroids), centroids, generator)
    return assignment, centroids, refilled + count


BALANCE = ("sampler", "loss", "none")
_SAMPLER_TAG = 0xDC5A


class DeepCluster(SizedState, PretextMethod):
    name = "deepcluster"
    options = declare({
        "num_clusters": Int(10000, min=2),   # the paper's k for ImageNet
        "pca_dim": Int(256, min=1),
        "kmeans_iterations": Int(20, min=1),
        "balance": Choice(*BALANCE),  # sampler (uniform over clusters) | loss (1/cluster-size weights) | none
        # random resized crops + flips (the reference code's augmentation)
        "crop_scale": Range(UNIT_INTERVAL, [0.08, 1.0]),
    })
    # the reference code: SGD lr 0.05, momentum 0.9, weight decay 1e-5
    training = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5}
    sized = ("assignments",)

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        if options.pca_dim > self.embed_dim:
            raise ConfigError(f"deepcluster: pca_dim ({options.pca_dim}) exceeds the {arch.name} feature "
                              f"dimension {self.embed_dim}")
        k = options.num_clusters
        self.head = nn.Linear(self.embed_dim, k)
        self.register_buffer("assignments", torch.zeros(0, dtype=torch.long))
        self.register_buffer("cluster_sizes", torch.zeros(k, dtype=torch.long))
        self.register_buffer("kmeans_seed", torch.randint(0, 2**62, ()))  # drawn from the loop's init seed
        self.register_buffer("refilled", torch.zeros((), dtype=torch.long))  # empty clusters split, last epoch
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"image": self.augment(self.transform, image, generator), "index": torch.tensor(index)}

    @torch.no_grad()
    def dataset_features(self, plain_loader, device) -> torch.Tensor:
        was_training = self.training
        self.eval()
        features = torch.zeros(dataset_size(plain_loader), self.embed_dim, dtype=torch.float64)
        for images, indices in plain_loader:
            features[indices] = self.embed(images.to(device)).double().cpu()
        self.train(was_training)
        return features

    def cluster(self, features: torch.Tensor, epoch: int) -> None:
        """k-means on the whitened features; sets the pseudo-labels and re-initialises the head."""
        generator = torch.Generator().manual_seed(int(self.kmeans_seed) + epoch)
        x = pca_whiten(features, self.config.pca_dim)
        assignment, _, refilled = kmeans(x, self.config.num_clusters, self.config.kmeans_iterations, generator)
        self._resize("assignments", (len(assignment),))
        self.assignments.copy_(assignment)
        self.cluster_sizes.copy_(torch.bincount(assignment, minlength=self.config.num_clusters))
        self.refilled.fill_(refilled)
        with torch.no_grad():
            weight = torch.empty(self.head.weight.shape).normal_(0, 0.01, generator=generator)
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def epoch_start(self, epoch, plain_loader, device) -> None:
        self.cluster(self.dataset_features(plain_loader, device), epoch)

    def epoch_indices(self, seed: int, epoch: int, n: int) -> torch.Tensor | None:
        if self.config.balance != "sampler" or self.num_images == 0:
            return None
        if n != self.num_images:
            raise RuntimeError(f"deepcluster: {n} images but {self.num_images} cluster assignments")
        generator = torch.Generator().manual_seed(derived_seed(seed, _SAMPLER_TAG, epoch))
        clusters = torch.nonzero(self.cluster_sizes > 0).flatten()
        per_cluster = n // len(clusters) + 1
        drawn = []
        for cluster in clusters.tolist():
            members = torch.nonzero(self.assignments == cluster).flatten()
            if len(members) <= per_cluster:
                drawn.append(members[torch.randint(len(members), (per_cluster,), generator=generator)])
            else:
                drawn.append(members[torch.randperm(len(members), generator=generator)[:per_cluster]])
        order = torch.cat(drawn)
        return order[torch.randperm(len(order), generator=generator)[:n]]

    def sample_weights(self) -> torch.Tensor | None:
        """Per-image sampling weight 1 / (cluster size): uniform over clusters. None before clustering."""
        if self.num_images == 0:
            return None
        return 1.0 / self.cluster_sizes[self.assignments].double()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.num_images == 0:
            raise RuntimeError("deepcluster: forward before epoch_start clustered the dataset")
        labels = self.assignments[batch["index"]]
        logits = self.head(self.embed(batch["image"]))
        losses = F.cross_entropy(logits, labels, reduction="none")
        if self.config.balance == "loss":
            clusters = int((self.cluster_sizes > 0).sum())
            losses = losses * (self.num_images / (clusters * self.cluster_sizes[labels].to(losses)))
        return losses.mean(), {"acc": float((logits.argmax(1) == labels).float().mean()),
                               "refilled": float(self.refilled)}
