"""The activation registry: everything the probe, the kernels, the theory and the figures know about a nonlinearity.

One `Activation` entry per name in ACTIVATIONS holds all of it; every other table (fused.KINDS, the
theory's list, the figures' colours and SATURATING, models.recurrent.RNN_ACTIVATIONS) is derived from
here, and tests/test_registries.py checks each entry against autograd. Add an activation here only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

# A unit counts as saturated when it passes back less than this share of the largest gradient its
# nonlinearity can pass: sigmoid near 0/1, tanh near ±1, ReLU exactly off (see the README).
SATURATION_SHARE = 0.05
LEAKY_SLOPE = 0.01

NumpyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Theory:
    """The numpy φ and φ' that mean-field theory integrates (gradprobe/theory.py)."""

    phi: NumpyFn
    dphi: NumpyFn
    homogeneous: bool = False  # φ(c·z) = c·φ(z) for c > 0: the length map is affine, its limits exact


@dataclass(frozen=True, kw_only=True)
class Activation:
    """A nonlinearity: how to build and recognise it, its derivative φ'(z), and what the lab does with it.

    `from_output_` overwrites a = φ(z) with φ'(z), in place: the probe runs it on its own copy of a
    layer's outputs, so that no buffer is allocated (on the CPU a fresh megabyte-sized tensor costs its
    page faults, more than the arithmetic). `from_input` is for φ' that a alone does not tell (GELU).
    Every field without a default must be stated, None included, so that an entry is complete by construction.
    """

    make: Callable[[], nn.Module]
    modules: tuple[type[nn.Module], ...]  # classes it is recognised by in a foreign model (name_of)
    max_derivative: float  # sup φ'
    from_output_: Callable[[Tensor], Tensor] | None = None
    from_input: Callable[[Tensor], Tensor] | None = None
    binary: bool = False  # φ' is 0 or 1 only (ReLU): φ' itself says which units pass a gradient
    fused_kind: int | None  # fused.c's saturation branch (`kind`), or None: eager only
    theory: Theory | None  # numpy φ, φ' for mean-field predictions, or None: no prediction
    color: str  # its colour in every figure
    saturating: bool  # φ' → 0 at both ends (sigmoid, tanh), rather than being exactly 0 where a unit is off
    rnn: bool  # usable as a vanilla RNN's nonlinearity

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


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1/(1+e^-z)


_np_erf = np.vectorize(math.erf, otypes=[float])  # numpy has no erf; math.erf keeps scipy optional


def _np_gelu_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _np_erf(z / math.sqrt(2.0)))


def _np_gelu_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# d/dz [Φ(z) + zϕ(z)] = ϕ(z)(2 − z²) vanishes at z = √2: GELU's φ' peaks at Φ(√2) + √2·ϕ(√2) ≈ 1.1289.
GELU_MAX_DERIVATIVE = 0.5 * (1.0 + math.erf(1.0)) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(2.0 * math.pi)

# Colours: seaborn's "colorblind" palette, as hex so that the package needs no plotting library.
ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(
        make=nn.Sigmoid,
        modules=(nn.Sigmoid,),
        max_derivative=0.25,
        from_output_=lambda a: a.sub_(0.5).square_().neg_().add_(0.25),  # a(1 − a)
        fused_kind=2,
        theory=Theory(_np_sigmoid, lambda z: _np_sigmoid(z) * (1.0 - _np_sigmoid(z))),
        color="#029e73",
        saturating=True,
        rnn=True,
    ),
    "tanh": Activation(
        make=nn.Tanh,
        modules=(nn.Tanh,),
        max_derivative=1.0,
        from_output_=lambda a: a.square_().neg_().add_(1),  # 1 − a²
        fused_kind=3,
        theory=Theory(np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
        color="#0173b2",
        saturating=True,
        rnn=True,
    ),
    "relu": Activation(
        make=nn.ReLU,
        modules=(nn.ReLU,),
        max_derivative=1.0,
        # 1[a > 0] as sign(a) (a ≥ 0), in place: a float kernel, which vectorizes (a bool mask is several times slower).
        from_output_=lambda a: a.sign_(),
        binary=True,
        fused_kind=1,
        theory=Theory(lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float), homogeneous=True),
        color="#d55e00",
        saturating=False,
        rnn=True,
    ),
    "leaky_relu": Activation(
        make=lambda: nn.LeakyReLU(LEAKY_SLOPE),
        modules=(nn.LeakyReLU,),
        max_derivative=1.0,
        from_output_=lambda a: a.clamp_(min=0).ceil_().clamp_(max=1).mul_(1 - LEAKY_SLOPE).add_(LEAKY_SLOPE),
        # fused.c's kind 1 counts a ≤ 0 as saturated: right here because LEAKY_SLOPE < SATURATION_SHARE.
        fused_kind=1,
        theory=Theory(
            lambda z: np.where(z > 0, z, LEAKY_SLOPE * z), lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE), homogeneous=True
        ),
        color="#de8f05",
        saturating=False,
        rnn=True,
    ),
    "gelu": Activation(
        make=nn.GELU,
        modules=(nn.GELU,),
        max_derivative=GELU_MAX_DERIVATIVE,
        from_input=_gelu_derivative,
        fused_kind=None,  # φ' needs z, which the kernels do not see
        theory=Theory(lambda z: z * _np_gelu_cdf(z), lambda z: _np_gelu_cdf(z) + z * _np_gelu_pdf(z)),  # exact GELU
        color="#cc78bc",
        saturating=False,
        rnn=False,
    ),
    "linear": Activation(
        make=nn.Identity,
        modules=(nn.Identity,),
        max_derivative=1.0,
        from_output_=lambda a: a.fill_(1),
        fused_kind=0,
        theory=Theory(lambda z: np.asarray(z, dtype=float), lambda z: np.ones_like(z, dtype=float), homogeneous=True),
        color="#949494",
        saturating=False,
        rnn=True,
    ),
}


def make_activation(name: str) -> nn.Module:
    """Build the named activation module."""
    return ACTIVATIONS[name].make()


def _settings(module: nn.Module) -> dict[str, object]:
    """A module's public hyperparameters (negative_slope, approximate, ...), `inplace` aside: it does not change φ."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k not in ("training", "inplace")}


def name_of(module: nn.Module) -> str | None:
    """The registry's name for an activation module of any model (nn.ReLU → 'relu'), or None if it is none of them.

    A module counts only when it computes exactly the registered φ: nn.LeakyReLU(0.2) or
    nn.GELU(approximate='tanh') are not the registry's leaky_relu or gelu, so they get None.
    """
    for name, act in ACTIVATIONS.items():
        if isinstance(module, act.modules) and _settings(module) == _settings(act.make()):
            return name
    return None


def saturation(
    name: str, a: Tensor, z: Tensor | None = None, dim: int | None = None, *, overwrite: bool = False
) -> Tensor:
    """Share of units whose local derivative is below SATURATION_SHARE of its maximum (over `dim`, or all).

    `overwrite` lets it use a as its scratch space (the probe's own copy of a layer's outputs).
    """
    act = ACTIVATIONS[name]
    d = act.derivative(z, a, overwrite=overwrite)  # a tensor of our own: a copy, a, or computed from z
    # min(max(⌊φ' / threshold⌋, 0), 1) is 0 exactly where φ' < threshold and 1 elsewhere: the same count
    # as a comparison, in place and in float kernels; a 0-or-1 derivative is that indicator already.
    kept = d if act.binary else d.div_(SATURATION_SHARE * act.max_derivative).floor_().clamp_(0, 1)
    return 1 - (kept.mean() if dim is None else kept.mean(dim))
