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
    """A nonlinearity: how to build it and its derivative φ'(z), read off the output a = φ(z) where it can be.

    `from_output_` overwrites a = φ(z) with φ'(z), in place: the probe runs it on its own copy of a
    layer's outputs, so that no buffer is allocated (on the CPU a fresh megabyte-sized tensor costs its
    page faults, more than the arithmetic). `from_input` is for φ' that a alone does not tell (GELU).
    """

    make: Callable[[], nn.Module]
    max_derivative: float
    from_output_: Callable[[Tensor], Tensor] | None = None
    from_input: Callable[[Tensor], Tensor] | None = None
    binary: bool = False  # φ' is 0 or 1 only (ReLU): φ' itself says which units pass a gradient

    @property
    def needs_input(self) -> bool:
        """Whether φ' needs the pre-activation z."""
        return self.from_output_ is None

    def derivative(self, z: Tensor | None, a: Tensor, *, overwrite: bool = False) -> Tensor:
        """φ'(z), from a = φ(z) (overwritten if `overwrite`) or, where needed, from z."""
        if self.from_output_ is not None:
            return self.from_output_(a if overwrite else a.clone())
        if z is None:
            raise ValueError("this activation's derivative needs the pre-activation")
        return self.from_input(z)


def _gelu_derivative(z: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(nn.Sigmoid, 0.25, lambda a: a.sub_(0.5).square_().neg_().add_(0.25)),  # a(1 − a)
    "tanh": Activation(nn.Tanh, 1.0, lambda a: a.square_().neg_().add_(1)),  # 1 − a²
    # 1[a > 0] as sign(a) (a ≥ 0), in place: a float kernel, which vectorizes (a bool mask is several times slower).
    "relu": Activation(nn.ReLU, 1.0, lambda a: a.sign_(), binary=True),
    "leaky_relu": Activation(
        lambda: nn.LeakyReLU(LEAKY_SLOPE), 1.0,
        lambda a: a.clamp_(min=0).ceil_().clamp_(max=1).mul_(1 - LEAKY_SLOPE).add_(LEAKY_SLOPE),
    ),  # fmt: skip
    # GELU's derivative peaks at about 1.129 (z ≈ 0.75).
    "gelu": Activation(nn.GELU, 1.1289, from_input=_gelu_derivative),
    "linear": Activation(nn.Identity, 1.0, lambda a: a.fill_(1)),
}


def make_activation(name: str) -> nn.Module:
    """Build the named activation module."""
    return ACTIVATIONS[name].make()


def saturation(name: str, a: Tensor, z: Tensor | None = None, dim: int | None = None, *,
               overwrite: bool = False) -> Tensor:  # fmt: skip
    """Share of units whose local derivative is below SATURATION_SHARE of its maximum (over `dim`, or all).

    `overwrite` lets it use a as its scratch space (the probe's own copy of a layer's outputs).
    """
    act = ACTIVATIONS[name]
    d = act.derivative(z, a, overwrite=overwrite)  # a tensor of our own: a copy, a, or computed from z
    # min(max(⌊φ' / threshold⌋, 0), 1) is 0 exactly where φ' < threshold and 1 elsewhere: the same count
    # as a comparison, in place and in float kernels; a 0-or-1 derivative is that indicator already.
    kept = d if act.binary else d.div_(SATURATION_SHARE * act.max_derivative).floor_().clamp_(0, 1)
    return 1 - (kept.mean() if dim is None else kept.mean(dim))
