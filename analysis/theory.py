"""Mean-field predictions of forward variance and back-propagated gradient gain, to check measurements against."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

# Conventions used throughout (Poole et al. 2016, Schoenholz et al. 2017):
#   h_l = W_l x_{l-1} + b_l,  x_l = φ(h_l),  W_ij ~ (0, σ_w²/fan_in),  b_i ~ (0, σ_b²)
#   q_l = per-unit second moment of the pre-activation h_l (the "variance" of the mean-field papers).
# Expectations are over z ~ N(0, 1); widths are taken to infinity and the backward pass uses
# weights independent of the forward pass (the usual gradient-independence assumption).

# Same slope as gradprobe/activations.py; duplicated so this module stays free of torch and the training code.
LEAKY_SLOPE = 0.01
# 100 nodes integrate polynomials up to degree 199 exactly; an even count keeps z = 0 off the grid, so
# the kinks of ReLU/leaky ReLU split the nodes symmetrically and their moments come out exact.
QUAD_POINTS = 100
_NODES, _WEIGHTS = hermegauss(QUAD_POINTS)
_WEIGHTS = _WEIGHTS / math.sqrt(2.0 * math.pi)  # hermegauss weights integrate against exp(-z²/2)

_erf = np.vectorize(math.erf, otypes=[float])  # numpy has no erf; math.erf keeps scipy optional


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1/(1+e^-z)


def _gelu_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _gelu_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
        lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE),
    ),
    "gelu": (lambda z: z * _gelu_cdf(z), lambda z: _gelu_cdf(z) + z * _gelu_pdf(z)),  # exact GELU
    "linear": (lambda z: np.asarray(z, dtype=float), lambda z: np.ones_like(z, dtype=float)),
}
ACTIVATIONS = tuple(_ACTIVATIONS)

# Positively homogeneous of degree 1: E[φ'(√q z)²] and E[φ(√q z)²]/q do not depend on q.
_HOMOGENEOUS = ("relu", "leaky_relu", "linear")

INITS = (
    "torch_default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "normal",
)


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The named nonlinearity φ as a numpy function."""
    return _lookup(name)[0]


def derivative(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The derivative φ' of the named nonlinearity as a numpy function."""
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def max_derivative(name: str) -> float:
    """γ = sup |φ'|: 1/4 for sigmoid, 1 for tanh/relu/leaky_relu/linear, Φ(√2)+√2·ϕ(√2) ≈ 1.1289 for GELU."""
    _lookup(name)
    if name == "sigmoid":
        return 0.25
    if name == "gelu":
        # d/dz [Φ(z) + zϕ(z)] = ϕ(z)(2 − z²) vanishes at z = √2.
        r = math.sqrt(2.0)
        return 0.5 * (1.0 + math.erf(1.0)) + r * math.exp(-1.0) / math.sqrt(2.0 * math.pi)
    return 1.0


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
    phi = _lookup(activation)[0]
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
    if activation in _HOMOGENEOUS:
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
    dphi = _lookup(activation)[1]
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
    phi2 = lambda q: gauss_expect(lambda h: _lookup(activation)[0](h) ** 2, q)  # noqa: E731
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


# ------------------------------------------------------------------------------------- batch norm


def _mean_activation(name: str) -> float:
    """E[φ(z)], z ~ N(0, 1); closed form for the kinked φ, quadrature for the smooth ones."""
    # Gauss–Hermite converges slowly on odd moments of a kink at 0 (E[relu(z)] is 0.4 % off with 100
    # nodes), while the even moments of relu/leaky_relu come out exact by the symmetry of the nodes.
    if name == "relu":
        return 1.0 / math.sqrt(2.0 * math.pi)
    if name == "leaky_relu":
        return (1.0 - LEAKY_SLOPE) / math.sqrt(2.0 * math.pi)
    return gauss_expect(_lookup(name)[0], 1.0)


def bn_gradient_explosion_rate(
    batch_size: float, activation: str = "relu", *, n_samples: int = 20_000, seed: int = 0
) -> float:
    """Per-layer growth of ‖∂L/∂x_l‖² in a Linear → BatchNorm → φ stack (Yang et al. 2019); > 1 explodes.

    Closed forms: linear (B−2)/(B−3); B = 2 gives 0 (BN outputs ±1 whatever the input); B = 3 gives inf
    (E[1/χ²₂] diverges); batch_size = math.inf gives E[φ'(z)²]/Var[φ(z)] (π/(π−1) for ReLU), which is ≥ 1
    for every φ by the Gaussian Poincaré inequality. Otherwise a seeded Monte Carlo over n_samples batches:
    at the permutation-symmetric fixed point the BN outputs y of one unit are uniform on the centred sphere
    ‖y‖² = B, and the rate is E[‖(P−ŷŷᵀ)·diag φ'(y)·P‖_F²] / ((B−3)·E[batch variance of φ(y)]), P the
    centring matrix, ŷ = y/√B. Assumes infinite width, gradient independence, biased batch variance with
    ε → 0 (PyTorch's training mode), and that the net sits at that symmetric fixed point (Yang et al. show
    it attracts for ReLU; for other φ it is assumed). Independent of σ_w², init and gain (BN is scale-free).
    """
    _lookup(activation)
    if math.isinf(batch_size):
        phi, dphi = _lookup(activation)
        var = gauss_expect(lambda z: phi(z) ** 2, 1.0) - _mean_activation(activation) ** 2
        return gauss_expect(lambda z: dphi(z) ** 2, 1.0) / var
    if batch_size != int(batch_size) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer ≥ 2 or math.inf, got {batch_size}")
    b = int(batch_size)
    if b == 2:
        return 0.0
    if b == 3:
        return math.inf
    if activation == "linear":
        return (b - 2) / (b - 3)
    phi, dphi = _lookup(activation)
    rng = np.random.default_rng(seed)
    f_sum = var_sum = 0.0
    chunk = max(1, 2_000_000 // b)  # bounds memory at a few tens of MB whatever B is
    done = 0
    while done < n_samples:
        m = min(chunk, n_samples - done)
        z = rng.standard_normal((m, b))
        z -= z.mean(axis=1, keepdims=True)
        y = z / np.sqrt((z * z).mean(axis=1, keepdims=True))  # BN output: centred, ‖y‖² = B
        d = dphi(y)
        yhat = y / math.sqrt(b)
        d2 = (d * d).sum(axis=1)
        # ‖P D P‖_F² − ‖P D ŷ‖², expanded with P = I − 11ᵀ/B so each batch costs O(B), not O(B²).
        f = d2 * (1.0 - 2.0 / b) + d.sum(axis=1) ** 2 / b**2 - (d * d * yhat * yhat).sum(axis=1)
        f += (d * yhat).sum(axis=1) ** 2 / b
        f_sum += f.sum()
        var_sum += phi(y).var(axis=1).sum()
        done += m
    return float(f_sum / ((b - 3) * var_sum))


# --------------------------------------------------------------------------------------- residual


def residual_variance_growth(res_scale: float, activation: str = "relu", sigma_w2: float = 2.0) -> float:
    """Per-block growth 1 + α²·σ_w²·E[φ'(z)²] of the gradient second moment (1 + α² for ReLU, He init).

    Backward: exact in mean field for the project's block x + α·φ(Wx) (no norm, zero bias), W ~ σ_w²/fan_in.
    Forward: the same factor for the pre-activation form x + α·W·φ(x) (zero-mean stream); for the project's
    post-activation form, ReLU outputs have a positive mean that accumulates in the stream and the forward
    second moment grows faster, see residual_forward_moments. Closed form only for the positively
    homogeneous φ (relu, leaky_relu, linear); for tanh, sigmoid, gelu, E[φ'²] depends on the block's input
    variance, so this returns NaN (use chi1 along the trajectory instead).
    """
    _lookup(activation)
    if activation not in _HOMOGENEOUS:
        return math.nan
    return 1.0 + res_scale**2 * chi1(activation, sigma_w2, 1.0)


def residual_forward_moments(
    res_scale: float, depth: int, q0: float = 1.0, m0: float = 0.0, sigma_w2: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Stream second moment q_k = ‖x_k‖²/n and unit mean m_k over blocks x + α·relu(Wx), k = 0…depth.

    With h = Wx ~ N(0, σ_w²q), relu(h) has mean μ = √(σ_w²q/2π) and second moment σ_w²q/2, and is
    independent of x_i, so q' = q + 2α·m·μ + α²σ_w²q/2 and m' = m + α·μ: the 2α·m·μ term is why the forward
    growth exceeds 1 + α² after the first block.
    """
    qs, ms = np.empty(depth + 1), np.empty(depth + 1)
    q, m = float(q0), float(m0)
    for k in range(depth + 1):
        qs[k], ms[k] = q, m
        mu = math.sqrt(sigma_w2 * q / (2.0 * math.pi))
        q, m = q + 2.0 * res_scale * m * mu + res_scale**2 * sigma_w2 * q / 2.0, m + res_scale * mu
    return qs, ms


# ------------------------------------------------------------------------------------------ RNN


@dataclass(frozen=True)
class RNNRegime:
    """Pascanu et al. (2013) bound λ·γ on ‖∂h_t/∂h_{t−1}‖ and what it implies."""

    bound: float  # λ·γ
    gamma: float  # sup |φ'|
    regime: str  # 'vanishing' (λγ < 1), 'may_explode' (λγ > 1), 'boundary' (λγ = 1)
    guaranteed: bool  # True when λγ < 1 provably makes long-range gradients vanish


def rnn_gradient_regime(
    spectral_radius: float, activation: str = "tanh", *, is_singular_value: bool = False
) -> RNNRegime:
    """Pascanu's conditions for h_t = φ(W_hh h_{t−1} + …): λγ < 1 suffices for vanishing, λγ > 1 is needed to explode.

    The theorem's λ is the largest singular value ‖W_hh‖₂, which is ≥ the spectral radius ρ. So with ρ,
    ργ > 1 still meets the necessary condition for exploding, but ργ < 1 guarantees vanishing only if W_hh is
    normal (orthogonal, symmetric: ρ = ‖W‖₂) or φ is linear (then ρ < 1 suffices asymptotically); pass
    is_singular_value=True when the argument is ‖W_hh‖₂. A random Gaussian H×H matrix has ‖W‖₂ ≈ 2ρ.
    """
    gamma = max_derivative(activation)
    bound = spectral_radius * gamma
    if math.isclose(bound, 1.0, rel_tol=1e-12):
        regime = "boundary"
    else:
        regime = "vanishing" if bound < 1.0 else "may_explode"
    guaranteed = regime == "vanishing" and (is_singular_value or activation == "linear")
    return RNNRegime(bound=bound, gamma=gamma, regime=regime, guaranteed=guaranteed)


# The adding problem's trivial baseline: always predicting the mean of the sum of two U(0, 1) values scores
# its variance, 2 · 1/12 (Hochreiter & Schmidhuber 1997's "≈ 0.167").
ADDING_BASELINE_MSE = 2.0 / 12.0


# ----------------------------------------------------------------------------------- measurement


# The gain measurement and the verdict live in gradprobe/verdict.py (a training run prints its verdict; pipelines
# may not import analysis); they stay importable from here.
from gradprobe.verdict import GainMeasurement, measure_gain, measured_gain, verdict  # noqa: E402, F401
