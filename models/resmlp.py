"""Residual MLP: a linear stem, then `depth` blocks x + α·act(norm(Linear(x))), then a linear readout."""

from __future__ import annotations

import math

from torch import Tensor, nn

from models.base import Family
from models.mlp import DenseBlock


class ResidualBlock(nn.Module):
    """x + res_scale · branch(x), the branch being one dense block."""

    def __init__(self, width: int, activation: str, norm: str, res_scale: float) -> None:
        super().__init__()
        self.branch = DenseBlock(width, width, activation, norm)
        self.act = self.branch.act
        self.res_scale = res_scale

    @property
    def main_weight(self) -> nn.Parameter:
        return self.branch.linear.weight

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.branch(x)


class ResMLP(Family):
    """Residual blocks on a `width`-wide stream; α = res_scale (1/√depth keeps the variance bounded)."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        n_outputs: int,
        *,
        depth: int,
        width: int,
        activation: str,
        norm: str,
        res_scale: float,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        # The stem only changes the width; it is not a hidden block (the probe still counts it in
        # the global norm), so L000 is the first residual block as the contract says.
        self.stem = nn.Linear(math.prod(in_shape), width)
        self.layers = nn.ModuleList(ResidualBlock(width, activation, norm, res_scale) for _ in range(depth))
        self.readout = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.flatten(x))
        for block in self.layers:
            x = block(x)
        return self.readout(x)
