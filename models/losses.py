"""Loss functions by name, each for the tasks it fits.

A dataset declares its task: classification (integer labels, one logit per class), regression (real
targets), binary (0/1 targets, one logit), segmentation (a 0/1 mask, one logit per position), metric
(integer labels; the output is an embedding), adversarial (a GAN: the loss is the generator's, with its
discriminator's, in models/gan.py). torch's implementation is used wherever one exists; written
here is only what torch lacks: the binary hinge, soft Dice and IoU, the contrastive loss and the in-batch
mining of pairs and triplets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.gan import NONSATURATING, SATURATING, GanLoss

LossFn = Callable[[Tensor, Tensor], Tensor]
KL_SMOOTHING = 0.1  # soft targets for `kl`: the label gets 1 − ε, the rest ε spread evenly
SMOOTHING = 1.0  # ε of soft Dice/IoU: keeps the ratio defined on empty masks and damps tiny ones
MARGIN = 1.0  # of the contrastive and triplet losses, in embedding units (torch's TripletMarginLoss default)


def _onehot(y: Tensor, like: Tensor) -> Tensor:
    return F.one_hot(y, like.shape[-1]).to(like.dtype)


def _soft_targets(y: Tensor, like: Tensor) -> Tensor:
    return _onehot(y, like) * (1 - KL_SMOOTHING) + KL_SMOOTHING / like.shape[-1]


def binary_hinge(z: Tensor, y: Tensor) -> Tensor:
    """Mean of max(0, 1 − t·z) with t = 2y − 1 ∈ {−1, +1}: the SVM hinge on one logit."""
    # Written by hand: torch's SoftMarginLoss is the logistic loss log(1 + e^(−t·z)), HingeEmbeddingLoss
    # takes distances, and MultiMarginLoss on two logits divides by the class count.
    return F.relu(1 - (2 * y - 1) * z).mean()


def sigmoid_mse(z: Tensor, y: Tensor) -> Tensor:
    """Mean of (σ(z) − y)²: squared error on a sigmoid output, whose gradient σ′ vanishes where σ saturates."""
    return F.mse_loss(torch.sigmoid(z), y)


def _overlaps(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per example: Σ p·t, Σ p, Σ t over every position, with p = σ(z)."""
    p, t = torch.sigmoid(z).flatten(1), y.flatten(1)
    return (p * t).sum(1), p.sum(1), t.sum(1)


def soft_dice(z: Tensor, y: Tensor) -> Tensor:
    """1 − (2Σp·t + ε)/(Σp + Σt + ε) per example on p = σ(z), averaged over the batch (soft Dice)."""
    inter, p, t = _overlaps(z, y)
    return (1 - (2 * inter + SMOOTHING) / (p + t + SMOOTHING)).mean()


def soft_iou(z: Tensor, y: Tensor) -> Tensor:
    """1 − (Σp·t + ε)/(Σp + Σt − Σp·t + ε) per example on p = σ(z), averaged (soft Jaccard, Rahman & Wang 2016)."""
    inter, p, t = _overlaps(z, y)
    return (1 - (inter + SMOOTHING) / (p + t - inter + SMOOTHING)).mean()


def mine_triplets(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """In-batch (anchor, positive, negative) indices: each example with both in the batch, the next one of
    its class and the next one of another class after it in batch order, wrapping around."""
    # Training batches are shuffled, so "the next one" is a random pick made without drawing random
    # numbers: the loss stays a deterministic function of the batch (gradient checks, exact reruns).
    steps = torch.arange(len(y), device=y.device)
    order = (steps[:, None] + steps[None, 1:]) % len(y)  # row i: the other examples, from i + 1 on
    same = y[order] == y[:, None]
    anchor = (same.any(1) & (~same).any(1)).nonzero().squeeze(1)
    if len(anchor) == 0:  # e.g. one class only, or a batch of one (argmax of an empty row fails)
        return anchor, anchor, anchor

    def first(hit: Tensor) -> Tensor:  # argmax returns the first maximum: the first hit after the anchor
        return order[anchor, hit[anchor].int().argmax(1)]

    return anchor, first(same), first(~same)


def contrastive(z: Tensor, y: Tensor) -> Tensor:
    """Hadsell et al. 2006 on the mined pairs: ½d² for (anchor, positive), ½max(0, m − d)² for (anchor,
    negative), d the Euclidean distance of the embeddings; mean over the pairs."""
    # Written by hand: torch has no contrastive loss (HingeEmbeddingLoss lacks the squares).
    a, p, n = mine_triplets(y)
    if len(a) == 0:
        return z.sum() * 0  # no pair in this batch: zero, still part of the graph so backward works
    d_pos = torch.linalg.vector_norm(z[a] - z[p], dim=-1)
    d_neg = torch.linalg.vector_norm(z[a] - z[n], dim=-1)
    return torch.cat([0.5 * d_pos**2, 0.5 * F.relu(MARGIN - d_neg) ** 2]).mean()


_triplet_margin = nn.TripletMarginLoss(margin=MARGIN)


def triplet(z: Tensor, y: Tensor) -> Tensor:
    """torch's TripletMarginLoss, max(0, d(a, p) − d(a, n) + m) averaged, on the mined triplets."""
    a, p, n = mine_triplets(y)
    if len(a) == 0:
        return z.sum() * 0
    return _triplet_margin(z[a], z[p], z[n])


@dataclass(frozen=True)
class Loss:
    """A loss with one implementation per task it fits."""

    classification: LossFn | None = None
    regression: LossFn | None = None
    binary: LossFn | None = None
    segmentation: LossFn | None = None
    metric: LossFn | None = None
    adversarial: GanLoss | None = None

    def for_task(self, task: str) -> LossFn | GanLoss | None:
        """The implementation for `task`, or None when the loss does not fit it."""
        return getattr(self, task)


LOSSES: dict[str, Loss] = {
    "ce": Loss(classification=F.cross_entropy),
    # MSE/MAE on class probabilities against one-hot targets, the textbook "MSE for classification".
    "mse": Loss(
        classification=lambda z, y: F.mse_loss(z.softmax(-1), _onehot(y, z)),
        regression=F.mse_loss,
        binary=sigmoid_mse,  # against bce: the sigmoid + MSE learning slowdown
    ),
    "mae": Loss(
        classification=lambda z, y: F.l1_loss(z.softmax(-1), _onehot(y, z)),
        regression=F.l1_loss,
    ),
    "huber": Loss(regression=nn.HuberLoss()),
    # One sigmoid per class against the one-hot target (one-vs-rest).
    "bce": Loss(
        classification=lambda z, y: F.binary_cross_entropy_with_logits(z, _onehot(y, z)),
        binary=nn.BCEWithLogitsLoss(),
        segmentation=nn.BCEWithLogitsLoss(),  # per position, averaged over every position
    ),
    "hinge": Loss(classification=nn.MultiMarginLoss(), binary=binary_hinge),
    "kl": Loss(classification=lambda z, y: F.kl_div(z.log_softmax(-1), _soft_targets(y, z), reduction="batchmean")),
    "dice": Loss(segmentation=soft_dice),
    "iou": Loss(segmentation=soft_iou),
    "contrastive": Loss(metric=contrastive),
    "triplet": Loss(metric=triplet),
    "gan_saturating": Loss(adversarial=SATURATING),  # G minimizes log(1 − D(G(z)))
    "gan_nonsaturating": Loss(adversarial=NONSATURATING),  # G minimizes −log D(G(z))
}
TASKS = tuple(f.name for f in dataclasses.fields(Loss))


def tasks_for(name: str) -> list[str]:
    """The tasks loss `name` fits."""
    return [t for t in TASKS if LOSSES[name].for_task(t) is not None]
