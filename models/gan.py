"""GAN pieces without Lightning: the losses on discriminator logits, the discriminator, mode coverage.

With l = D's logit on a point and σ the logistic function (Goodfellow et al. 2014):
    discriminator      −log σ(l_real) − log(1 − σ(l_fake))      BCE with logits: real → 1, generated → 0
    saturating G       log(1 − σ(l)) = −softplus(l)              minimized; ∂/∂l = −σ(l)
    non-saturating G   −log σ(l) = softplus(−l)                  minimized; ∂/∂l = −(1 − σ(l))
When the discriminator wins (σ(l) → 0 on generated points) the saturating generator gradient vanishes
while the non-saturating one tends to −1 per point: the reason the non-saturating loss is used in practice.
Both are written with softplus, which stays finite where log(1 − σ(l)) and log σ(l) would round to log 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.mlp import MLP

# The discriminator: a fixed small MLP (not the run's architecture, which is the generator's), PyTorch's
# default init. Three hidden layers of 128 leaky-ReLU units on 2-D points: enough to separate a generator
# stuck near the origin from the ring of modes within a few dozen steps, i.e. to win early.
D_DEPTH, D_WIDTH, D_ACTIVATION = 3, 128, "leaky_relu"
HQ_SIGMAS = 3.0  # a generated point is high quality within this many σ (Euclidean) of a mode's centre
MODE_SHARE = 0.01  # a mode is covered when at least this share of the generated points are high quality at it


def saturating_generator(fake_logits: Tensor) -> Tensor:
    """Mean of log(1 − σ(l)) = −softplus(l): Goodfellow's minimax generator loss, to be minimized."""
    return -F.softplus(fake_logits).mean()


def nonsaturating_generator(fake_logits: Tensor) -> Tensor:
    """Mean of −log σ(l) = softplus(−l): the non-saturating generator loss (maximize log D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE with logits, real points labelled 1 and generated ones 0, each half averaged, then summed."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


@dataclass(frozen=True)
class GanLoss:
    """The adversarial task's implementation of a loss: the generator's loss and the discriminator's."""

    generator: Callable[[Tensor], Tensor]  # D's logits on generated points -> loss
    discriminator: Callable[[Tensor, Tensor], Tensor] = discriminator_loss  # (real logits, fake logits) -> loss


SATURATING = GanLoss(saturating_generator)
NONSATURATING = GanLoss(nonsaturating_generator)


def make_discriminator(in_features: int) -> MLP:
    """The fixed discriminator: D_DEPTH × D_WIDTH D_ACTIVATION MLP, one logit out."""
    return MLP((in_features,), 1, depth=D_DEPTH, width=D_WIDTH, activation=D_ACTIVATION, norm="none")


def mode_counts(points: Tensor, centers: Tensor, std: float) -> Tensor:
    """Per mode, how many points lie within HQ_SIGMAS·std of its centre (modes are assumed ≫ 6σ apart)."""
    dist, nearest = torch.cdist(points.detach().float(), centers.float()).min(dim=1)
    return torch.bincount(nearest[dist <= HQ_SIGMAS * std], minlength=len(centers))


def coverage(counts: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """(share of points that are high quality, number of modes holding at least MODE_SHARE of the points)."""
    share = counts.double() / max(total, 1)
    return share.sum(), (share >= MODE_SHARE).sum().double()
