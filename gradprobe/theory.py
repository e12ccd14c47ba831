"""Mean-field predictions for one network: forward variance, back-propagated gradient gain, criticality.

Conventions (Poole et al. 2016, Schoenholz et al. 2017):
  h_l = W_l x_{l-1} + b_l,  x_l = φ(h_l),  W_ij ~ (0, σ_w²/fan_in),  b_i ~ (0, σ_b²)
  q_l = per-unit second moment of the pre-activation h_l (the "variance" of the mean-field papers).
Expectations are over z ~ N(0, 1); widths are taken to infinity and the backward pass uses weights
independent of the forward pass (the usual gradient-independence assumption). φ and φ' come from the
activation registry (an entry's `theory`); the lab's own regimes (batch norm, residual, RNN) are in
analysis/theory.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from gradprobe.activations import ACTIVATIONS as _REGISTRY
from gradprobe.activations import Theory

# The activations theory covers, in registry order.
ACTIVATIONS = tuple(name for name, act in _REGISTRY.items() if act.theory is not None)
# 100 nodes integrate polynomials up to degree 199 exactly; an even count keeps z = 0 off the grid, so
# the kinks of ReLU/leaky ReLU split the nodes symmetrically and their moments come out exact.
QUAD_POINTS = 100
_NODES, _WEIGHTS = hermegauss(QUAD_POINTS)
_WEIGHTS = _WEIGHTS / math.sqrt(2.0 * math.pi)  # hermegauss weights integrate against exp(-z²/2)

INITS = (
    "torch_default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "normal",
)


def support(name: str) -> Theory:
    """The registry's theory entry of `name`; ValueError naming the allowed ones when there is none."""
    act = _REGISTRY.get(name)
    if act is None or act.theory is None:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return act.theory


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The named nonlinearity φ as a numpy function."""
    return support(name).phi


def derivative(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The derivative φ' of the named nonlinearity as a numpy function."""
    return support(name).dphi


def max_derivative(name: str) -> float:
    """γ = sup |φ'| (the registry's derivative bound): 1/4 for sigmoid, ≈ 1.1289 for GELU, 1 for the others."""
    support(name)
    return _REGISTRY[name].max_derivative


# ---------------------------------------------------------------------------------------------- init


def weight_variance(init: str, fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """Per-entry variance of a weight matrix drawn by `init` (the schemes of models/init.py)."""
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"fan_in and fan_out must be ≥ 1, got {fan_in}, {fan_out}")
    g2 = gain * gain
    if init in ("xavier_uniform", "xavier_normal"):
        return g2 * 2.0 / (fan_in + fan_out)
    if init in ("kaiming_uniform", "kaiming_normal"):
        return g2 * 2.0 / fan_in
    if init == "normal":
        return g2 / fan_in
    if init == "torch_default":
        # kaiming_uniform_(a=√5): bound = √(6/((1+a²)·fan_in)) = 1/√fan_in, so Var = bound²/3; init.py
        # then multiplies the weights by gain.
        return g2 / (3.0 * fan_in)
    if init == "orthogonal":
        # gain·Q with Q (fan_out × fan_in) having orthonormal rows (fan_out ≤ fan_in) or columns: the
        # squared entries sum to min(fan_in, fan_out), so the mean square entry is 1/max(fan_in, fan_out).
        # It is not Gaussian, but the mean-field second-moment recursions only see this mean square.
        return g2 / max(fan_in, fan_out)
    if init == "identity":
        raise ValueError("'identity' is deterministic (gain·I): it has no mean-field weight variance")
    raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")


def sigma_w2(init: str, fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """Mean-field σ_w² = fan_in · Var(W_ij): ‖Wᵀv‖² ≈ σ_w²‖v‖² and q_out = σ_w²·E[x²] + σ_b²."""
    # Orthogonal, square: σ_w² = gain² exactly per unit; expanding (fan_out > fan_in) gives
    # gain²·fan_in/fan_out because Q is then an isometry spreading ‖x‖² over more units.
    return fan_in * weight_variance(init, fan_in, fan_out, gain)


def bias_variance(init: str, fan_in: int) -> float:
    """Mean-field σ_b²: 1/(3·fan_in) for torch_default (uniform ±1/√fan_in, not scaled by gain), else 0."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    return 1.0 / (3.0 * fan_in) if init == "torch_default" else 0.0


# ---------------------------------------------------------------------------------- mean-field maps


def gauss_expect(f: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """E[f(√q·z)], z ~ N(0, 1), by 100-point Gauss–Hermite quadrature (exact for polynomials of degree < 200)."""
    # Smooth f (tanh, sigmoid, GELU) converge to machine precision; a kink at 0 is handled exactly for
    # even moments (φ², φ'² of relu/leaky_relu) but only to ~1e-3 for odd ones such as E[relu(z)].
    if q < 0:
        raise ValueError(f"variance q must be ≥ 0, got {q}")
    return float(np.dot(_WEIGHTS, f(math.sqrt(q) * _NODES)))


def variance_map(activation: str, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """One layer of the length map: q_{l+1} = σ_w²·E[φ(√q z)²] + σ_b²."""
    phi = support(activation).phi
    return sigma_w2 * gauss_expect(lambda h: phi(h) ** 2, q) + sigma_b2


def fixed_point(
    activation: str,
    sigma_w2: float,
    sigma_b2: float = 0.0,
    q0: float = 1.0,
    *,
    max_iter: int = 10_000,
    rtol: float = 1e-12,
    zero: float = 1e-30,
    big: float = 1e150,
) -> float:
    """Limit q* of iterating variance_map from q0: finite q*, 0.0 (collapse), math.inf (blow-up), or the last iterate.

    Returns 0.0 when the iterates collapse (σ_b² = 0 with ReLU at σ_w² < 2, linear at σ_w² < 1, tanh at
    σ_w² < 1) and math.inf when they grow without bound (ReLU at σ_w² > 2, linear at σ_w² > 1, or either at
    its critical σ_w² with σ_b² > 0): these have no finite non-zero fixed point. At exactly the critical σ_w²
    with σ_b² = 0 every q is fixed for ReLU/linear, so q0 comes back. For relu, leaky_relu and linear the map
    is affine and these limits are exact; otherwise it is iterated, with 0.0 below `zero`, inf above `big`,
    and the last iterate if max_iter passes first: that happens where the approach is algebraic, e.g. tanh
    at σ_w² = 1, σ_b² = 0, whose q_l ≈ 1/(2l) → 0 (about 5e-5 after the default 10,000 iterations).
    """
    if support(activation).homogeneous:
        # The map is affine here, q' = s·q + σ_b² with s = σ_w²·E[φ(z)²], so the limit is exact.
        s = variance_map(activation, sigma_w2, 0.0, 1.0)
        if math.isclose(s, 1.0, rel_tol=1e-12):
            return math.inf if sigma_b2 > 0 else float(q0)
        if s > 1.0:
            return 0.0 if q0 == 0 and sigma_b2 == 0 else math.inf
        return sigma_b2 / (1.0 - s)
    q = float(q0)
    for _ in range(max_iter):
        nxt = variance_map(activation, sigma_w2, sigma_b2, q)
        if not math.isfinite(nxt) or nxt > big:
            return math.inf
        if nxt < zero:
            return 0.0
        if abs(nxt - q) <= rtol * nxt:
            return nxt
        q = nxt
    return q


def q_after(activation: str, sigma_w2: float, q0: float, depth: int, sigma_b2: float = 0.0) -> np.ndarray:
    """Pre-activation second moments [q_0, …, q_{depth−1}] of `depth` layers, q_0 = q0 given (input side first)."""
    qs = np.empty(depth)
    q = float(q0)
    for layer in range(depth):
        qs[layer] = q
        q = variance_map(activation, sigma_w2, sigma_b2, q)
    return qs


def chi1(activation: str, sigma_w2: float, q: float) -> float:
    """χ₁ = σ_w²·E[φ'(√q z)²]: per-layer multiplier of the squared back-propagated gradient norm."""
    dphi = support(activation).dphi
    return sigma_w2 * gauss_expect(lambda h: dphi(h) ** 2, q)


def predicted_backprop_gain(
    activation: str,
    init: str,
    fan_in: int,
    fan_out: int,
    gain: float = 1.0,
    q0: float = 1.0,
    depth: int = 1,
    sigma_b2: float | None = None,
) -> np.ndarray:
    """√χ₁(q_l) for layers l = 0…depth−1 (input side first): predicted ‖∂L/∂x_{l−1}‖ / ‖∂L/∂x_l‖.

    x_l is layer l's output (what backprop/l2/<layer> measures, summed over the batch) and q0 the
    pre-activation second moment of layer 0; every layer is Linear(fan_in → fan_out) → φ without norm.
    Entry l is the gain of the norm (not squared) through layer l's φ' and Wᵀ, so the measured ratio
    backprop[L(l−1)]/backprop[L(l)] is compared with entry l for l ≥ 1. σ_b² defaults to bias_variance(init).
    """
    sw2 = sigma_w2(init, fan_in, fan_out, gain)
    sb2 = bias_variance(init, fan_in) if sigma_b2 is None else sigma_b2
    qs = q_after(activation, sw2, q0, depth, sb2)
    return np.sqrt([chi1(activation, sw2, q) for q in qs])


def critical_sigma_w2(activation: str, sigma_b2: float = 0.0, *, q_max: float = 1e6) -> float:
    """σ_w² on the order-to-chaos boundary χ₁(q*) = 1 for the given σ_b² (limit value if only approached)."""
    # Parametrize by the fixed point itself (as in Poole et al.'s phase diagram): a q* > σ_b² is a fixed
    # point for σ_w²(q*) = (q* − σ_b²)/E[φ(√q* z)²]; then find where χ₁(q*) crosses 1 on a log grid.
    phi = support(activation).phi
    phi2 = lambda q: gauss_expect(lambda h: phi(h) ** 2, q)  # noqa: E731
    sw2 = lambda q: (q - sigma_b2) / phi2(q)  # noqa: E731
    excess = lambda q: chi1(activation, sw2(q), q) - 1.0  # noqa: E731
    lo = max(sigma_b2 * (1.0 + 1e-9), 1e-12)
    grid = np.geomspace(lo, q_max, 400)
    values = np.array([excess(q) for q in grid])
    crossing = np.nonzero(np.sign(values[:-1]) != np.sign(values[1:]))[0]
    if crossing.size == 0:
        # No crossing: the boundary sits at an end of the range (tanh at σ_b² = 0 as q* → 0, ReLU as
        # q* → ∞), so report σ_w² there, which is the limiting value.
        end = grid[int(np.argmin(np.abs(values)))]
        return float(sw2(end))
    a, b = grid[crossing[0]], grid[crossing[0] + 1]
    for _ in range(100):  # bisection; χ₁ is smooth in q*
        mid = math.sqrt(a * b)
        if np.sign(excess(mid)) == np.sign(excess(a)):
            a = mid
        else:
            b = mid
    return float(sw2(math.sqrt(a * b)))
