"""Deep fully connected networks: Linear → (norm) → activation, `depth` times, then a linear readout."""

from __future__ import annotations

import math

from torch import Tensor, nn

from gradprobe.activations import make_activation
from models.base import Family
from models.norms import make_norm


class DenseBlock(nn.Module):
    """Linear → norm → activation."""

    def __init__(self, in_features: int, out_features: int, activation: str, norm: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = make_norm(norm, out_features, "dense")
        self.act = make_activation(activation)

    @property
    def main_weight(self) -> nn.Parameter:
        return self.linear.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.linear(x)))


class MLP(Family):
    """`depth` dense blocks of `width` units on the flattened input."""

    def __init__(
        self, in_shape: tuple[int, ...], n_outputs: int, *, depth: int, width: int, activation: str, norm: str
    ) -> None:
        super().__init__()
        in_features = math.prod(in_shape)
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(
            DenseBlock(in_features if i == 0 else width, width, activation, norm) for i in range(depth)
        )
        self.readout = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        for block in self.layers:
            x = block(x)
        return self.readout(x)
