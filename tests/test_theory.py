"""Mean-field theory in analysis/theory.py against closed forms and small numpy Monte-Carlo networks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import theory as T

PI_RATE = math.pi / (math.pi - 1.0)  # Yang et al. 2019, BN-ReLU as B → ∞


# ------------------------------------------------------------------------------------ quadrature


@pytest.mark.parametrize("q", [0.0, 0.3, 1.0, 4.0])
def test_gauss_expect_matches_gaussian_moments(q: float) -> None:
    assert T.gauss_expect(lambda z: np.ones_like(z), q) == pytest.approx(1.0, rel=1e-13)
    assert T.gauss_expect(lambda z: z, q) == pytest.approx(0.0, abs=1e-13)
    assert T.gauss_expect(lambda z: z**2, q) == pytest.approx(q, rel=1e-12, abs=1e-15)
    assert T.gauss_expect(lambda z: z**4, q) == pytest.approx(3 * q**2, rel=1e-12, abs=1e-15)
    # Not a polynomial: E[cos(√q z)] = exp(−q/2).
    assert T.gauss_expect(np.cos, q) == pytest.approx(math.exp(-q / 2), rel=1e-12)


def test_gauss_expect_rejects_negative_variance() -> None:
    with pytest.raises(ValueError):
        T.gauss_expect(np.tanh, -1.0)


# ------------------------------------------------------------------------------------------ init


@pytest.mark.parametrize("gain", [1.0, 1.7])
def test_sigma_w2_of_each_init(gain: float) -> None:
    g2 = gain**2
    assert T.sigma_w2("kaiming_normal", 64, 32, gain) == pytest.approx(2 * g2)
    assert T.sigma_w2("kaiming_uniform", 64, 64, gain) == pytest.approx(2 * g2)
    assert T.sigma_w2("xavier_normal", 64, 64, gain) == pytest.approx(g2)
    assert T.sigma_w2("xavier_uniform", 64, 192, gain) == pytest.approx(g2 * 2 * 64 / 256)
    assert T.sigma_w2("normal", 64, 10, gain) == pytest.approx(g2)
    assert T.sigma_w2("torch_default", 64, 64, gain) == pytest.approx(g2 / 3)
    assert T.sigma_w2("orthogonal", 64, 64, gain) == pytest.approx(g2)
    assert T.sigma_w2("orthogonal", 64, 32, gain) == pytest.approx(g2)  # rows orthonormal
    assert T.sigma_w2("orthogonal", 32, 64, gain) == pytest.approx(g2 / 2)  # isometry onto more units
    assert T.weight_variance("kaiming_normal", 64, 32, gain) == pytest.approx(2 * g2 / 64)


def test_orthogonal_mean_square_entry_matches_a_real_orthogonal_matrix() -> None:
    rng = np.random.default_rng(0)
    for fan_out, fan_in in [(20, 50), (50, 20)]:
        q, _ = np.linalg.qr(rng.standard_normal((max(fan_in, fan_out), min(fan_in, fan_out))))
        w = q if fan_out > fan_in else q.T  # (fan_out, fan_in), orthonormal columns or rows
        assert (w**2).mean() == pytest.approx(T.weight_variance("orthogonal", fan_in, fan_out))


def test_bias_variance_and_unknown_inits() -> None:
    assert T.bias_variance("torch_default", 48) == pytest.approx(1 / 144)
    assert T.bias_variance("kaiming_normal", 48) == 0.0
    with pytest.raises(ValueError, match="identity"):
        T.weight_variance("identity", 8, 8)
    with pytest.raises(ValueError, match="allowed"):
        T.sigma_w2("glorot", 8, 8)
    with pytest.raises(ValueError, match="allowed"):
        T.chi1("swish", 1.0, 1.0)


# ----------------------------------------------------------------------------------------- χ₁


@pytest.mark.parametrize("q", [0.01, 1.0, 25.0])
def test_relu_chi1_he_is_one_and_xavier_is_half(q: float) -> None:
    assert T.chi1("relu", T.sigma_w2("kaiming_normal", 256, 256), q) == pytest.approx(1.0, rel=1e-12)
    assert T.chi1("relu", T.sigma_w2("xavier_normal", 256, 256), q) == pytest.approx(0.5, rel=1e-12)


def test_predicted_backprop_gain_relu_is_flat_per_init() -> None:
    he = T.predicted_backprop_gain("relu", "kaiming_normal", 128, 128, q0=2.0, depth=6)
    xavier = T.predicted_backprop_gain("relu", "xavier_uniform", 128, 128, q0=1.0, depth=6)
    assert he.shape == (6,)
    np.testing.assert_allclose(he, 1.0, rtol=1e-12)
    np.testing.assert_allclose(xavier, math.sqrt(0.5), rtol=1e-12)


def test_linear_chi1_and_leaky_relu() -> None:
    assert T.chi1("linear", 1.3, 0.7) == pytest.approx(1.3)
    assert T.chi1("leaky_relu", 2.0, 1.0) == pytest.approx(1 + T.LEAKY_SLOPE**2)


# --------------------------------------------------------------------------- fixed points, phases


def test_tanh_at_sigma_w2_one_collapses_and_is_critical() -> None:
    q_star = T.fixed_point("tanh", 1.0, 0.0)
    assert 0 < q_star < 1e-3  # algebraic approach q_l ≈ 1/(2l): the iterate after max_iter
    assert q_star == pytest.approx(1 / (2 * 10_000), rel=0.05)
    assert T.chi1("tanh", 1.0, q_star) == pytest.approx(1.0, abs=1e-3)


def test_tanh_order_to_chaos_boundary_at_zero_bias_is_one() -> None:
    assert T.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    # Ordered side: q* = 0 and χ₁ = σ_w² < 1.
    assert T.fixed_point("tanh", 0.9) == 0.0
    assert T.chi1("tanh", 0.9, 0.0) == pytest.approx(0.9)
    # Chaotic side: a non-zero fixed point with χ₁ > 1.
    q_star = T.fixed_point("tanh", 1.2)
    assert q_star > 0.05
    assert T.chi1("tanh", 1.2, q_star) > 1.0


def test_critical_line_is_self_consistent_with_bias_and_relu_is_two() -> None:
    sw2 = T.critical_sigma_w2("tanh", 0.05)
    assert 1.0 < sw2 < 2.5
    assert T.chi1("tanh", sw2, T.fixed_point("tanh", sw2, 0.05)) == pytest.approx(1.0, abs=1e-6)
    assert T.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, rel=1e-9)


def test_fixed_point_conventions_for_relu_and_linear() -> None:
    assert T.fixed_point("relu", 2.0, 0.0, q0=3.0) == pytest.approx(3.0)  # every q is fixed
    assert T.fixed_point("relu", 1.9) == 0.0
    assert T.fixed_point("relu", 2.1) == math.inf
    assert T.fixed_point("relu", 2.0, 0.1) == math.inf
    assert T.fixed_point("relu", 1.0, 0.1) == pytest.approx(0.2, rel=1e-9)  # σ_b²/(1 − σ_w²/2)
    assert T.fixed_point("linear", 0.5, 1.0) == pytest.approx(2.0, rel=1e-9)
    np.testing.assert_allclose(T.q_after("relu", 2.0, 1.5, 5), 1.5)
    np.testing.assert_allclose(T.q_after("linear", 2.0, 1.0, 4), [1, 2, 4, 8])
    assert T.variance_map("relu", 2.0, 0.25, 1.0) == pytest.approx(1.25)


# ------------------------------------------------------------------------------------ batch norm


@pytest.mark.parametrize("b", [8, 32])
def test_linear_batchnorm_rate(b: int) -> None:
    assert T.bn_gradient_explosion_rate(b, "linear") == pytest.approx((b - 2) / (b - 3))


def test_batchnorm_small_batches_and_invalid() -> None:
    assert T.bn_gradient_explosion_rate(2, "relu") == 0.0
    assert T.bn_gradient_explosion_rate(3, "relu") == math.inf
    with pytest.raises(ValueError):
        T.bn_gradient_explosion_rate(1, "relu")


def test_batchnorm_relu_limit_and_large_batch() -> None:
    assert T.bn_gradient_explosion_rate(math.inf, "relu") == pytest.approx(PI_RATE, rel=1e-12)
    assert T.bn_gradient_explosion_rate(math.inf, "linear") == pytest.approx(1.0, rel=1e-12)
    rates = [T.bn_gradient_explosion_rate(b, "relu") for b in (8, 32, 256)]
    assert rates[0] > rates[1] > rates[2] > PI_RATE  # decreases towards the limit
    assert rates[2] == pytest.approx(PI_RATE, rel=0.01)
    assert T.bn_gradient_explosion_rate(256, "relu") == rates[2]  # seeded


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_batchnorm_explodes_for_every_activation(name: str) -> None:
    # Gaussian Poincaré inequality: E[φ'²] ≥ Var φ, equality only for linear φ.
    assert T.bn_gradient_explosion_rate(math.inf, name) >= 1.0 - 1e-12


def _bn_relu_network_rate(batch: int, width: int = 256, depth: int = 20, seed: int = 0) -> float:
    """Per-layer ‖∂L/∂x‖² growth measured in a random Linear → BN → ReLU stack (numpy, exact backward)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, width))
    cache = []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) / math.sqrt(width)
        h = x @ w.T
        s = np.sqrt(h.var(axis=0) + 1e-5)
        y = (h - h.mean(axis=0)) / s
        cache.append((w, y, s))
        x = np.maximum(y, 0.0)
    g = rng.standard_normal((batch, width))
    sq = []
    for w, y, s in reversed(cache):
        sq.append((g**2).sum())
        gy = g * (y > 0)
        g = ((gy - gy.mean(axis=0) - y * (gy * y).mean(axis=0)) / s) @ w  # BN backward, then Wᵀ
    ratios = np.array(sq[::-1])[:-1] / np.array(sq[::-1])[1:]
    return float(np.exp(np.log(ratios[4:]).mean()))  # skip the layers next to the input


def test_batchnorm_relu_rate_matches_a_simulated_network() -> None:
    assert _bn_relu_network_rate(16) == pytest.approx(T.bn_gradient_explosion_rate(16, "relu"), rel=0.04)


# -------------------------------------------------------------------------------------- residual


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1 / math.sqrt(20)])
def test_residual_growth_relu(alpha: float) -> None:
    assert T.residual_variance_growth(alpha) == pytest.approx(1 + alpha**2)


def test_residual_growth_other_activations_and_depth_scaling() -> None:
    assert T.residual_variance_growth(0.5, "linear") == pytest.approx(1 + 2 * 0.25)
    assert math.isnan(T.residual_variance_growth(0.5, "tanh"))
    # α = 1/√L keeps the total growth bounded by e; α = 1 doubles per block.
    for depth in (10, 100, 1000):
        assert T.residual_variance_growth(1 / math.sqrt(depth)) ** depth < math.e
    assert T.residual_variance_growth(1.0) ** 10 == pytest.approx(2.0**10)


def test_residual_forward_drift_exceeds_one_plus_alpha_squared_after_first_block() -> None:
    qs, ms = T.residual_forward_moments(1.0, 5)
    assert qs[1] / qs[0] == pytest.approx(2.0)  # zero-mean stream: exactly 1 + α²
    assert ms[0] == 0.0 and ms[1] > 0
    assert np.all(qs[2:] / qs[1:-1] > 2.0)


def test_residual_backward_growth_matches_a_simulated_network() -> None:
    rng = np.random.default_rng(0)
    alpha, width, depth, batch = 0.5, 512, 10, 32
    x = rng.standard_normal((batch, width))
    cache = []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(2.0 / width)
        h = x @ w.T
        cache.append((w, h))
        x = x + alpha * np.maximum(h, 0.0)
    g = rng.standard_normal((batch, width))
    sq = [(g**2).sum()]
    for w, h in reversed(cache):
        g = g + alpha * ((g * (h > 0)) @ w)
        sq.append((g**2).sum())
    per_block = math.exp(math.log(sq[-1] / sq[0]) / depth)
    assert per_block == pytest.approx(T.residual_variance_growth(alpha), rel=0.03)


# ------------------------------------------------------------------------------------------- RNN


def test_rnn_regimes() -> None:
    r = T.rnn_gradient_regime(0.9, "tanh")
    assert (r.regime, r.bound, r.gamma, r.guaranteed) == ("vanishing", pytest.approx(0.9), 1.0, False)
    assert T.rnn_gradient_regime(0.9, "tanh", is_singular_value=True).guaranteed
    assert T.rnn_gradient_regime(1.5, "tanh").regime == "may_explode"
    assert T.rnn_gradient_regime(3.0, "sigmoid").regime == "vanishing"  # 3 · 1/4 < 1
    assert T.rnn_gradient_regime(4.0, "sigmoid").regime == "boundary"
    assert T.rnn_gradient_regime(0.99, "linear").guaranteed
    assert T.max_derivative("gelu") == pytest.approx(1.1289, abs=1e-4)  # as in models/activations.py


# ------------------------------------------------------------------------ Monte Carlo χ₁ cross-check


def _mlp_backprop_sq_ratios(activation: str, sw2: float, width: int = 512, depth: int = 10) -> np.ndarray:
    """‖∂L/∂x_{l−1}‖²/‖∂L/∂x_l‖², l = 1…depth−1, in a random numpy MLP with a random output gradient."""
    rng = np.random.default_rng(0)
    phi, dphi = T.activation(activation), T.derivative(activation)
    x = rng.standard_normal((64, width))  # unit-variance Gaussian input: q_0 = σ_w²
    cache = []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(sw2 / width)
        h = x @ w.T
        cache.append((w, h))
        x = phi(h)
    g = rng.standard_normal(x.shape)
    sq = np.empty(depth)
    for layer in reversed(range(depth)):
        sq[layer] = (g**2).sum()  # gradient w.r.t. layer `layer`'s output, over the whole batch
        w, h = cache[layer]
        g = (g * dphi(h)) @ w
    return sq[:-1] / sq[1:]


def test_monte_carlo_relu_he_mlp_matches_chi1() -> None:
    ratios = _mlp_backprop_sq_ratios("relu", 2.0)
    chi = T.chi1("relu", T.sigma_w2("kaiming_normal", 512, 512), 2.0)
    assert math.exp(np.log(ratios).mean()) == pytest.approx(chi, rel=0.03)
    np.testing.assert_allclose(ratios, chi, rtol=0.1)


def test_monte_carlo_tanh_mlp_matches_predicted_gain_along_trajectory() -> None:
    sw2 = T.sigma_w2("xavier_normal", 512, 512, gain=1.2)
    predicted = T.predicted_backprop_gain("tanh", "xavier_normal", 512, 512, gain=1.2, q0=sw2, depth=10)
    measured = np.sqrt(_mlp_backprop_sq_ratios("tanh", sw2))
    np.testing.assert_allclose(measured, predicted[1:], rtol=0.03)


# ------------------------------------------------------------------------------ measurement, verdict


def test_verdict_thresholds() -> None:
    assert T.verdict(0.94) == "vanishing"
    assert T.verdict(0.95) == "healthy"  # the bounds themselves are healthy
    assert T.verdict(1.0) == "healthy"
    assert T.verdict(1.05) == "healthy"
    assert T.verdict(1.06) == "exploding"
    assert T.verdict(0.0) == "vanishing"
    assert T.verdict(math.inf) == "exploding"
    assert T.verdict(0.85, tolerance=0.2) == "healthy"
    assert T.verdict(0.85, tolerance=0.1) == "vanishing"
    with pytest.raises(ValueError):
        T.verdict(math.nan)


def test_measured_gain_direction_and_edge_cases() -> None:
    # Input side first: norms shrinking towards the input → gain < 1 → vanishing.
    assert T.measured_gain([1.0, 2.0, 4.0, 8.0]) == pytest.approx(0.5)
    assert T.verdict(T.measured_gain([1.0, 2.0, 4.0, 8.0])) == "vanishing"
    assert T.measured_gain([8.0, 4.0, 2.0, 1.0]) == pytest.approx(2.0)
    assert T.verdict(T.measured_gain([8.0, 4.0, 2.0, 1.0])) == "exploding"
    assert T.measured_gain(np.array([3.0, 2.9, 3.1, 3.0])) == pytest.approx(1.0)
    assert math.isnan(T.measured_gain([0.0, 1.0]))  # one usable layer: no ratio
    assert math.isnan(T.measured_gain([1.0, 0.0]))
    assert T.measured_gain([1.0, math.nan, 4.0]) == pytest.approx(0.5)  # L001 left out, L000…L002 spanned
    with pytest.raises(ValueError):
        T.measured_gain([1.0])


def test_a_gain_leaves_out_layers_whose_norm_is_zero_or_not_finite_and_says_so() -> None:
    """Two input-side layers recorded 0 (below float32) and one inf: the gain is that of the others, not 0."""
    norms = [0.0, 0.0, 1e-3, 1e-2, math.inf, 1.0]
    got = T.measure_gain(norms)
    # The usable layers L002, L003, L005: (1e-3 / 1)^(1/3) per layer, by hand.
    assert got.gain == pytest.approx(0.1, rel=1e-12) and got.gain > 0
    assert (got.first, got.last) == (2, 5)
    assert got.left_out == ((0, "norm 0"), (1, "norm 0"), (4, "norm inf"))
    assert got.note() == "3 layers left out of the gain (norm 0, norm inf): L000, L001, L004"
    assert T.measure_gain([1.0, 2.0]).note() == ""
    assert (
        T.measure_gain([-1.0, math.nan, 2.0, 4.0]).note()
        == "2 layers left out of the gain (norm NaN, norm negative): L000, L001"
    )
