"""`nat`: Noise As Targets (Bojanowski & Joulin, ICML 2017, "Unsupervised Learning by Predicting Noise").

One fixed target per training image, drawn uniformly on the unit sphere of ``target_dim``
dimensions (normalised Gaussian vectors), and a random initial one-to-one assignment of targets to
images. The network's output (pooled trunk feature -> linear -> L2-normalised) is pulled towards
its image's target with the squared L2 loss. Before each gradient step the targets currently held
by the batch's images are reassigned among them with the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) to minimise the total squared distance, i.e. maximise the
summed cosine similarity, of features to targets: the paper's stochastic batch reassignment. The
reassignment happens in epochs where ``epoch % reassign_every == 0`` (the paper updates the
assignment less often than every epoch; 3 here, set 1 to reassign in every epoch). The targets and
the assignment are buffers: saved and restored with the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.options import Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from ._trunk import SizedState, dataset_size


def best_assignment(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Permutation p maximising sum_i <features_i, targets_p(i)> (Hungarian algorithm)."""
    score = (features.detach().double() @ targets.detach().double().T).cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


class NAT(SizedState, PretextMethod):
    name = "nat"
    options = declare({
        "target_dim": Int(None, min=1),       # None: the trunk's pooled feature dimension
        "reassign_every": Int(3, min=1),      # epochs between reassignment epochs
        "crop_scale": Range(UNIT_INTERVAL, [0.08, 1.0]),
    })
    # NAT: SGD, lr 0.05, momentum 0.9 (the reference's values for AlexNet)
    training = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5}
    sized = ("targets", "assignment")

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        dim = options.target_dim or self.embed_dim
        self.head = nn.Linear(self.embed_dim, dim)
        self.register_buffer("targets", torch.zeros(0, dim))
        self.register_buffer("assignment", torch.zeros(0, dtype=torch.long))  # image -> target row
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("init_seed", torch.randint(0, 2**62, ()))
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def epoch_start(self, epoch, plain_loader, device) -> None:
        self.epoch.fill_(epoch)
        n = dataset_size(plain_loader)
        if self.num_images != n:  # first epoch: targets on the sphere, random assignment
            dim = self.targets.shape[1]
            generator = torch.Generator().manual_seed(int(self.init_seed))
            self._resize("targets", (n, dim))
            self._resize("assignment", (n,))
            self.targets.copy_(F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1))
            self.assignment.copy_(torch.randperm(n, generator=generator))

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"image": self.augment(self.transform, image, generator), "index": torch.tensor(index)}

    @torch.no_grad()
    def reassign(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """Hungarian reassignment of the batch's targets among the batch's images."""
        held = self.assignment[indices]
        permutation = best_assignment(features, self.targets[held]).to(held.device)
        self.assignment[indices] = held[permutation]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.num_images == 0:
            raise RuntimeError("nat: forward before epoch_start drew the targets")
        indices = batch["index"]
        features = F.normalize(self.head(self.embed(batch["image"])), dim=1)
        if int(self.epoch) % self.config.reassign_every == 0:
            self.reassign(indices, features)
        targets = self.targets[self.assignment[indices]]
        loss = (features - targets).pow(2).sum(1).mean()
        return loss, {"cosine": float((features.detach() * targets).sum(1).mean())}
