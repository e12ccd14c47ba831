"""The NumPy reference against finite differences, against torch autograd on the same weights, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.registry import create_model
from oracles import reference as ref

CASES = [(act, loss) for act in sorted(ref.ACTIVATIONS) for loss in ref.LOSSES]


def random_case(sizes: list[int], loss: str, seed: int = 0, batch: int = 5):
    """Weights (n_l, n_{l−1}), biases, inputs (rows are examples) and targets for layer sizes n_0 … n_L."""
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((m, n)) / np.sqrt(n) for n, m in zip(sizes, sizes[1:])]
    biases = [0.1 * rng.standard_normal(m) for m in sizes[1:]]
    x = rng.standard_normal((batch, sizes[0]))
    y = rng.integers(0, sizes[-1], batch) if loss == "ce" else rng.standard_normal((batch, sizes[-1]))
    return weights, biases, x, y


def replaced(arrays: list[np.ndarray], i: int, value: np.ndarray) -> list[np.ndarray]:
    """A copy of the list with entry i swapped for `value`."""
    return [value if j == i else a for j, a in enumerate(arrays)]


# -- against finite differences -------------------------------------------------------------------


@pytest.mark.parametrize("activation, loss", CASES)
def test_backprop_matches_central_differences(activation: str, loss: str) -> None:
    weights, biases, x, y = random_case([3, 4, 2], loss)
    bp = ref.mlp_backprop(x, y, weights, biases, activation, loss)

    def loss_at(ws, bs, xs) -> float:
        return ref.mlp_loss(xs, y, ws, bs, activation, loss)

    assert bp.loss == pytest.approx(loss_at(weights, biases, x), rel=1e-12)
    for i in range(2):
        dw = ref.numerical_gradient(lambda w, i=i: loss_at(replaced(weights, i, w), biases, x), weights[i])
        db = ref.numerical_gradient(lambda b, i=i: loss_at(weights, replaced(biases, i, b), x), biases[i])
        np.testing.assert_allclose(bp.dW[i], dw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(bp.db[i], db, rtol=1e-6, atol=1e-9)
    dx = ref.numerical_gradient(lambda xs: loss_at(weights, biases, xs), x)
    np.testing.assert_allclose(bp.da[0].T, dx, rtol=1e-6, atol=1e-9)
    assert np.abs(bp.dW[0]).max() > 1e-3  # the first layer receives a real gradient: the case tests something


def test_numerical_gradient_of_a_known_function_and_leaves_its_input_alone() -> None:
    x = np.array([[0.5, -1.0], [2.0, 0.1]])
    before = x.copy()
    grad = ref.numerical_gradient(lambda v: float((v**3).sum()), x)
    np.testing.assert_allclose(grad, 3 * x**2, rtol=1e-8)
    np.testing.assert_array_equal(x, before)


# -- against torch autograd on the same weights -----------------------------------------------------


def torch_pass(weights, biases, x, y, activation: str, loss: str) -> dict[str, list[torch.Tensor]]:
    """Autograd through F.linear and torch's own activations and losses, keeping ∂L/∂z and ∂L/∂a."""
    phi = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[activation]
    Ws = [torch.tensor(w, requires_grad=True) for w in weights]
    bs = [torch.tensor(b, requires_grad=True) for b in biases]
    a = torch.tensor(x, requires_grad=True)
    acts, zs = [a], []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = F.linear(acts[-1], W, b)
        zs.append(z)
        if i < len(Ws) - 1:
            acts.append(phi(z))
    logits = zs[-1]
    if loss == "ce":
        value = F.cross_entropy(logits, torch.tensor(y))
    else:
        value = F.mse_loss(logits, torch.tensor(y))
    grads = torch.autograd.grad(value, [*Ws, *bs, *zs, *acts])
    n = len(Ws)
    return {
        "loss": [value.detach()],
        "dW": list(grads[:n]),
        "db": list(grads[n : 2 * n]),
        "delta": list(grads[2 * n : 3 * n]),
        "da": list(grads[3 * n :]),
        "a": [t.detach() for t in acts],
    }


@pytest.mark.parametrize("activation, loss", CASES)
@pytest.mark.parametrize("sizes", [[3, 4, 2], [5, 6, 4, 3]], ids=["one-hidden", "two-hidden"])
def test_every_intermediate_matches_autograd(activation: str, loss: str, sizes: list[int]) -> None:
    weights, biases, x, y = random_case(sizes, loss, seed=1)
    bp = ref.mlp_backprop(x, y, weights, biases, activation, loss)
    expected = torch_pass(weights, biases, x, y, activation, loss)
    assert bp.loss == pytest.approx(expected["loss"][0].item(), rel=1e-12)
    # Examples are columns in the reference, rows in torch: compare the transposes.
    for name in ("dW", "db"):
        for got, want in zip(getattr(bp, name), expected[name], strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-14)
    for got, want in zip(bp.delta, expected["delta"], strict=True):
        np.testing.assert_allclose(got.T, want.numpy(), rtol=1e-10, atol=1e-14)
    for got, want in zip(bp.da, expected["da"], strict=True):
        np.testing.assert_allclose(got.T, want.numpy(), rtol=1e-10, atol=1e-14)
    for got, want in zip(bp.a[:-1], expected["a"], strict=True):
        np.testing.assert_allclose(got.T, want.numpy(), rtol=1e-12)


def test_the_weight_layout_is_the_pipeline_mlps() -> None:
    """The reference on the registry's MLP weights gives the MLP's own autograd gradients."""
    torch.manual_seed(0)
    net = create_model(
        "mlp", in_shape=(6,), layout="vector", n_outputs=3, depth=2, width=5, activation="tanh", norm="none"
    ).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    F.cross_entropy(net(x), y).backward()
    linears = [b.linear for b in net.layers] + [net.readout]
    weights = [m.weight.detach().numpy() for m in linears]
    biases = [m.bias.detach().numpy() for m in linears]
    bp = ref.mlp_backprop(x.numpy(), y.numpy(), weights, biases, "tanh", "ce")
    for m, dW, db in zip(linears, bp.dW, bp.db, strict=True):
        np.testing.assert_allclose(dW, m.weight.grad.numpy(), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db, m.bias.grad.numpy(), rtol=1e-10, atol=1e-14)


# -- by hand --------------------------------------------------------------------------------------


def test_one_unit_sigmoid_mse_by_hand() -> None:
    # x = 3, z¹ = 0·3 + 0 → a¹ = σ(0) = ½; ŷ = 2·½ + 0 = 1; y = 0 → L = 1.
    # δ² = 2(ŷ − y) = 2; ∂L/∂W² = δ²·a¹ = 1; ∂L/∂b² = 2; ∂L/∂a¹ = W²·δ² = 4;
    # δ¹ = 4·σ′(0) = 4·¼ = 1; ∂L/∂W¹ = δ¹·x = 3; ∂L/∂b¹ = 1; ∂L/∂x = W¹·δ¹ = 0.
    bp = ref.mlp_backprop(
        np.array([[3.0]]),
        np.array([[0.0]]),
        [np.array([[0.0]]), np.array([[2.0]])],
        [np.zeros(1), np.zeros(1)],
        "sigmoid",
        "mse",
    )
    assert bp.loss == 1.0
    assert [float(g.item()) for g in bp.dW] == [3.0, 1.0]
    assert [float(g.item()) for g in bp.db] == [1.0, 2.0]
    assert [float(d.item()) for d in bp.delta] == [1.0, 2.0]
    assert [float(d.item()) for d in bp.da] == [0.0, 4.0]


def test_one_unit_tanh_softmax_cross_entropy_by_hand() -> None:
    # x = 2, z¹ = 0 → a¹ = 0; z² = (0, 0) → ŷ = (½, ½); label 0 → L = ln 2, δ² = ŷ − y = (−½, ½).
    # ∂L/∂W² = δ²·a¹ = 0; ∂L/∂b² = δ²; ∂L/∂a¹ = W²ᵀδ² = 1·(−½) + 3·½ = 1; δ¹ = 1·(1 − 0²) = 1;
    # ∂L/∂W¹ = δ¹·x = 2; ∂L/∂b¹ = 1.
    bp = ref.mlp_backprop(
        np.array([[2.0]]),
        np.array([0]),
        [np.array([[0.0]]), np.array([[1.0], [3.0]])],
        [np.zeros(1), np.zeros(2)],
        "tanh",
        "ce",
    )
    assert bp.loss == pytest.approx(math.log(2), rel=1e-15)
    np.testing.assert_array_equal(bp.a[-1], [[0.5], [0.5]])
    np.testing.assert_array_equal(bp.delta[1], [[-0.5], [0.5]])
    np.testing.assert_array_equal(bp.dW[1], [[0.0], [0.0]])
    np.testing.assert_array_equal(bp.db[1], [-0.5, 0.5])
    assert (bp.da[1].item(), bp.delta[0].item(), bp.dW[0].item(), bp.db[0].item()) == (1.0, 1.0, 2.0, 1.0)


def test_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="loss 'hinge'"):
        ref.mlp_backprop(np.zeros((1, 1)), np.zeros(1), [np.zeros((1, 1))], [np.zeros(1)], "tanh", "hinge")


# -- linear regression by gradient descent ----------------------------------------------------------


def test_linear_regression_loss_and_gradient_by_hand() -> None:
    # X = (1, 2)ᵀ, y = (1, 2), w = b = 0: r = (−1, −2), L = (1 + 4)/2, ∂L/∂w = (2/2)(−1 − 4), ∂L/∂b = (2/2)(−3).
    x, y = np.array([[1.0], [2.0]]), np.array([1.0, 2.0])
    assert ref.linreg_loss(x, y, np.zeros(1), 0.0) == 2.5
    gw, gb = ref.linreg_gradient(x, y, np.zeros(1), 0.0)
    assert (gw.tolist(), gb) == ([-5.0], -3.0)


def _regression(seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Noisy linear data and the largest eigenvalue of the loss's Hessian (2/N)[X 1]ᵀ[X 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 3)) * [1.0, 2.0, 0.5] + [0.5, 0.0, -1.0]
    y = x @ np.array([2.0, -1.0, 3.0]) + 0.7 + 0.2 * rng.standard_normal(40)
    design = np.hstack([x, np.ones((40, 1))])
    return x, y, float(np.linalg.eigvalsh(2 * design.T @ design / 40).max())


def test_gradient_matches_central_differences() -> None:
    x, y, _ = _regression()
    w, b = np.array([0.3, -0.2, 1.0]), 0.5
    gw, gb = ref.linreg_gradient(x, y, w, b)
    np.testing.assert_allclose(gw, ref.numerical_gradient(lambda v: ref.linreg_loss(x, y, v, b), w), rtol=1e-7)
    fb = ref.numerical_gradient(lambda v: ref.linreg_loss(x, y, w, float(v[0])), np.array([b]))
    assert gb == pytest.approx(fb[0], rel=1e-7)


def test_gradient_descent_converges_to_the_least_squares_solution() -> None:
    x, y, lam_max = _regression()
    fit = ref.linreg_fit(x, y, lr=1 / lam_max, steps=3000)
    w_star, b_star = ref.linreg_closed_form(x, y)
    np.testing.assert_allclose(fit.w, w_star, rtol=1e-8)
    assert fit.b == pytest.approx(b_star, rel=1e-8)
    assert np.all(np.diff(fit.losses) <= 1e-12)  # η ≤ 1/λ_max: the loss never goes up
    assert fit.losses[-1] == pytest.approx(ref.linreg_loss(x, y, w_star, b_star), rel=1e-10)
    # The closed form is where the gradient vanishes, and it recovers the generating weights roughly.
    gw, gb = ref.linreg_gradient(x, y, w_star, b_star)
    assert np.abs(gw).max() < 1e-10 and abs(gb) < 1e-10
    np.testing.assert_allclose(w_star, [2.0, -1.0, 3.0], atol=0.2)


def test_gradient_descent_diverges_above_two_over_the_largest_curvature() -> None:
    x, y, lam_max = _regression()
    stable = ref.linreg_fit(x, y, lr=1.9 / lam_max, steps=200).losses
    unstable = ref.linreg_fit(x, y, lr=2.1 / lam_max, steps=200).losses
    assert stable[-1] < stable[0] and unstable[-1] > 1e3 * unstable[0]
