"""Loss functions by name, each for the tasks it fits (classification: integer labels; regression)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
KL_SMOOTHING = 0.1  # soft targets for `kl`: the label gets 1 − ε, the rest ε spread evenly


def _onehot(y: Tensor, like: Tensor) -> Tensor:
    return F.one_hot(y, like.shape[-1]).to(like.dtype)


def _soft_targets(y: Tensor, like: Tensor) -> Tensor:
    return _onehot(y, like) * (1 - KL_SMOOTHING) + KL_SMOOTHING / like.shape[-1]


@dataclass(frozen=True)
class Loss:
    """A loss with one implementation per task it fits."""

    classification: LossFn | None = None
    regression: LossFn | None = None

    def for_task(self, task: str) -> LossFn | None:
        """The implementation for `task`, or None when the loss does not fit it."""
        return getattr(self, task)


LOSSES: dict[str, Loss] = {
    "ce": Loss(classification=F.cross_entropy),
    # MSE/MAE on class probabilities against one-hot targets, the textbook "MSE for classification".
    "mse": Loss(
        classification=lambda z, y: F.mse_loss(z.softmax(-1), _onehot(y, z)),
        regression=F.mse_loss,
    ),
    "mae": Loss(
        classification=lambda z, y: F.l1_loss(z.softmax(-1), _onehot(y, z)),
        regression=F.l1_loss,
    ),
    "huber": Loss(regression=nn.HuberLoss()),
    # One sigmoid per class against the one-hot target (one-vs-rest).
    "bce": Loss(classification=lambda z, y: F.binary_cross_entropy_with_logits(z, _onehot(y, z))),
    "hinge": Loss(classification=nn.MultiMarginLoss()),
    "kl": Loss(
        classification=lambda z, y: F.kl_div(
            z.log_softmax(-1), _soft_targets(y, z), reduction="batchmean"
        )
    ),
}


def tasks_for(name: str) -> list[str]:
    """The tasks loss `name` fits."""
    return [t for t in ("classification", "regression") if LOSSES[name].for_task(t) is not None]
