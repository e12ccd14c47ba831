"""Validation metrics by task, beside the loss: accuracy, hard Dice and IoU, 1-NN accuracy of embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradprobe import keys as K

Metrics = Callable[[Tensor, Tensor], dict[str, Tensor]]  # (outputs, targets) -> {key: value}


def accuracy(z: Tensor, y: Tensor) -> Tensor:
    """Share of examples whose largest logit is the label."""
    return (z.argmax(-1) == y).float().mean()


def binary_accuracy(z: Tensor, y: Tensor) -> Tensor:
    """Share of examples on the right side of σ(z) = 0.5, i.e. z = 0."""
    return ((z > 0) == (y > 0.5)).float().mean()


def mask_overlap(z: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Hard Dice 2|P∩T|/(|P|+|T|) and IoU |P∩T|/|P∪T| of the masks P = (z > 0), T = (y > 0.5), per
    example (1 when both masks are empty), averaged over the batch."""
    p, t = (z > 0).flatten(1).float(), (y > 0.5).flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    empty = total == 0
    dice = torch.where(empty, 1.0, 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, 1.0, inter / (total - inter).clamp_min(1))
    return {K.VAL_DICE: dice.mean(), K.VAL_IOU: iou.mean()}


def knn_accuracy(e: Tensor, y: Tensor) -> Tensor:
    """Leave-one-out 1-nearest-neighbour accuracy (Recall@1): the share of embeddings whose nearest other
    embedding (Euclidean) has the same label."""
    d = torch.cdist(e.double(), e.double())  # float64: ties and near-ties decided the same on every platform
    d.fill_diagonal_(torch.inf)
    return (y[d.argmin(1)] == y).float().mean()


# Metrics of one validation batch, averaged over the validation set weighted by batch size.
BATCH_METRICS: dict[str, Metrics] = {
    "classification": lambda z, y: {K.VAL_ACC: accuracy(z, y)},
    "binary": lambda z, y: {K.VAL_ACC: binary_accuracy(z, y)},
    "segmentation": mask_overlap,
}
# Metrics that need the whole validation set at once (neighbours may sit in another batch).
SET_METRICS: dict[str, Metrics] = {
    "metric": lambda e, y: {K.VAL_KNN_ACC: knn_accuracy(e, y)},
}
