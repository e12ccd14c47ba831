"""Hidden nonlinearities by name, with the derivative the probe needs to measure saturation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# A unit counts as saturated when it passes back less than this share of the largest gradient its
# nonlinearity can pass: sigmoid near 0/1, tanh near ±1, ReLU exactly off (see the README).
SATURATION_SHARE = 0.05
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """A nonlinearity: how to build it and its derivative φ'(z), given z or the output a = φ(z)."""

    make: Callable[[], nn.Module]
    derivative: Callable[[Tensor | None, Tensor], Tensor]  # (z, a) -> φ'(z); z may be None
    max_derivative: float


def _gelu_derivative(z: Tensor | None, a: Tensor) -> Tensor:
    if z is None:
        raise ValueError("the GELU derivative needs the pre-activation")
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(nn.Sigmoid, lambda z, a: a * (1 - a), 0.25),
    "tanh": Activation(nn.Tanh, lambda z, a: 1 - a * a, 1.0),
    "relu": Activation(nn.ReLU, lambda z, a: (a > 0).to(a.dtype), 1.0),
    "leaky_relu": Activation(
        lambda: nn.LeakyReLU(LEAKY_SLOPE),
        lambda z, a: torch.where(a > 0, 1.0, LEAKY_SLOPE).to(a.dtype),
        1.0,
    ),
    # GELU's derivative peaks at about 1.129 (z ≈ 0.75).
    "gelu": Activation(nn.GELU, _gelu_derivative, 1.1289),
    "linear": Activation(nn.Identity, lambda z, a: torch.ones_like(a), 1.0),
}


def make_activation(name: str) -> nn.Module:
    """Build the named activation module."""
    return ACTIVATIONS[name].make()


def saturation(name: str, a: Tensor, z: Tensor | None = None) -> Tensor:
    """Share of units whose local derivative is below SATURATION_SHARE of its maximum (0-d tensor)."""
    act = ACTIVATIONS[name]
    return (act.derivative(z, a) < SATURATION_SHARE * act.max_derivative).float().mean()
