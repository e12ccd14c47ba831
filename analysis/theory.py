"""Mean-field predictions of forward variance and back-propagated gradient gain, to check measurements against."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The mean-field core a diagnosis of one network needs (φ/φ' from the activation registry, the init
# variances, the length map, χ₁, the predicted gain, criticality) lives in the package, gradprobe/theory.py;
# this module adds the lab's own regimes (batch norm, residual streams, RNNs) and re-exports the core.
from gradprobe import theory as _core
from gradprobe.activations import LEAKY_SLOPE
from gradprobe.theory import (  # noqa: F401 (re-exported: the lab imports the whole theory from here)
    ACTIVATIONS,
    INITS,
    QUAD_POINTS,
    bias_variance,
    chi1,
    critical_sigma_w2,
    derivative,
    fixed_point,
    gauss_expect,
    max_derivative,
    predicted_backprop_gain,
    q_after,
    support,
    variance_map,
    weight_variance,
)

# Bound here rather than imported by name: parameters below are called `activation` and `sigma_w2` too.
activation = _core.activation
sigma_w2 = _core.sigma_w2

# ------------------------------------------------------------------------------------- batch norm


def _mean_activation(name: str) -> float:
    """E[φ(z)], z ~ N(0, 1); closed form for the kinked φ, quadrature for the smooth ones."""
    # Gauss–Hermite converges slowly on odd moments of a kink at 0 (E[relu(z)] is 0.4 % off with 100
    # nodes), while the even moments of relu/leaky_relu come out exact by the symmetry of the nodes.
    if name == "relu":
        return 1.0 / math.sqrt(2.0 * math.pi)
    if name == "leaky_relu":
        return (1.0 - LEAKY_SLOPE) / math.sqrt(2.0 * math.pi)
    return gauss_expect(support(name).phi, 1.0)


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
    phi, dphi = support(activation).phi, support(activation).dphi
    if math.isinf(batch_size):
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
    if not support(activation).homogeneous:
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
