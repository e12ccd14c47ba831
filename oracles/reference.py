"""NumPy references from first principles: gradient descent for linear regression, backprop of an MLP.

Written straight from the textbook formulas below, in their notation, with no autodiff: the
oracles that the pipeline's gradients and statistics are checked against (`oracles.gradcheck`, tests).

    a⁽⁰⁾ = x,  z⁽ˡ⁾ = W⁽ˡ⁾ a⁽ˡ⁻¹⁾ + b⁽ˡ⁾,  a⁽ˡ⁾ = φ(z⁽ˡ⁾) (hidden),  a⁽ᴸ⁾ = ŷ = softmax(z⁽ᴸ⁾) or z⁽ᴸ⁾
    δ⁽ˡ⁾ = ∂L/∂z⁽ˡ⁾,  δ⁽ᴸ⁾ = ŷ − y (softmax with cross-entropy),  δ⁽ˡ⁾ = ∂L/∂a⁽ˡ⁾ ⊙ φ′(z⁽ˡ⁾)
    ∂L/∂W⁽ˡ⁾ = δ⁽ˡ⁾ (a⁽ˡ⁻¹⁾)ᵀ,  ∂L/∂b⁽ˡ⁾ = sum(δ⁽ˡ⁾),  ∂L/∂a⁽ˡ⁻¹⁾ = (W⁽ˡ⁾)ᵀ δ⁽ˡ⁾

Inside, examples are columns as in the seed (a⁽ˡ⁾ is units × batch), so δ (a)ᵀ sums over the batch by
itself; inputs and targets come in with examples as rows, as datasets and PyTorch hold them. W⁽ˡ⁾ is
(n_l, n_{l−1}), the layout of `nn.Linear.weight`. Losses are means over the batch, like PyTorch's, so
δ⁽ᴸ⁾ carries a factor 1/B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def sigmoid(z: Array) -> Array:
    """σ(z) = 1 / (1 + e^−z), without overflow for large negative z."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


# φ and φ′; φ′ takes z and the cached a = φ(z), as the seed suggests (σ′ = σ(1 − σ) from a).
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array, Array], Array]]] = {
    "sigmoid": (sigmoid, lambda z, a: a * (1 - a)),
    "tanh": (np.tanh, lambda z, a: 1 - a**2),
    "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
}
LOSSES = ("ce", "mse")  # softmax + cross-entropy on integer labels; identity + mean squared error


# -- linear regression by gradient descent -----------------------------------------------------------


@dataclass(frozen=True)
class LinearFit:
    """Where gradient descent ended and the loss before every step and after the last."""

    w: Array
    b: float
    losses: Array  # L(θ_0), …, L(θ_steps)


def linreg_loss(x: Array, y: Array, w: Array, b: float) -> float:
    """Mean squared error L = (1/N) Σᵢ (xᵢ·w + b − yᵢ)²."""
    r = x @ w + b - y
    return float(np.mean(r**2))


def linreg_gradient(x: Array, y: Array, w: Array, b: float) -> tuple[Array, float]:
    """(∂L/∂w, ∂L/∂b) = ((2/N) Xᵀ r, (2/N) Σ r), with residuals r = Xw + b − y."""
    r = x @ w + b - y
    return 2 * x.T @ r / len(y), float(2 * r.sum() / len(y))


def linreg_fit(x: Array, y: Array, lr: float, steps: int, w0: Array | None = None, b0: float = 0.0) -> LinearFit:
    """Full-batch gradient descent θ ← θ − η ∇L(θ) for `steps` steps from (w0, b0) (default zeros)."""
    w = np.zeros(x.shape[1]) if w0 is None else np.array(w0, dtype=float)
    b = float(b0)
    losses = [linreg_loss(x, y, w, b)]
    for _ in range(steps):
        gw, gb = linreg_gradient(x, y, w, b)
        w, b = w - lr * gw, b - lr * gb
        losses.append(linreg_loss(x, y, w, b))
    return LinearFit(w, b, np.array(losses))


def linreg_closed_form(x: Array, y: Array) -> tuple[Array, float]:
    """The least-squares solution (w*, b*) of the same loss, by `lstsq` on [X 1]."""
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.linalg.lstsq(design, y, rcond=None)[0]
    return theta[:-1], float(theta[-1])


# -- an MLP by forward and backward propagation ------------------------------------------------------


@dataclass(frozen=True)
class Backprop:
    """Every intermediate of one forward and backward pass, examples as columns.

    Per layer l = 1 … L, entry l − 1 of `z`, `delta`, `dW`, `db`; per activation l = 0 … L, entry l of
    `a` (a[0] = xᵀ, a[L] = ŷ); `da[l]` = ∂L/∂a⁽ˡ⁾ for l = 0 … L − 1 (da[0] = ∂L/∂x, transposed), so
    the output of hidden block i (0-based) is a[i + 1] and its gradient da[i + 1].
    """

    loss: float
    z: list[Array]
    a: list[Array]
    delta: list[Array]
    dW: list[Array]
    db: list[Array]
    da: list[Array]


def softmax(z: Array) -> Array:
    """Softmax over the classes (axis 0: examples are columns), shifted by the max for stability."""
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def targets(y: Array, n_outputs: int, loss: str) -> Array:
    """The target matrix Y (outputs × batch): one-hot labels for `ce`, the targets transposed for `mse`."""
    if loss == "ce":
        return np.eye(n_outputs)[:, np.asarray(y, dtype=int)]
    return np.asarray(y, dtype=float).reshape(len(y), n_outputs).T


def mlp_forward(
    x: Array, weights: list[Array], biases: list[Array], activation: str, loss: str
) -> tuple[list[Array], list[Array]]:
    """(z, a): z⁽ˡ⁾ = W⁽ˡ⁾ a⁽ˡ⁻¹⁾ + b⁽ˡ⁾; a⁽ˡ⁾ = φ(z⁽ˡ⁾), the output a⁽ᴸ⁾ = softmax (ce) or identity (mse)."""
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}; allowed: {', '.join(LOSSES)}")
    phi = ACTIVATIONS[activation][0]
    a = [np.asarray(x, dtype=float).reshape(len(x), -1).T]
    z: list[Array] = []
    for layer, (W, b) in enumerate(zip(weights, biases), start=1):
        z.append(W @ a[-1] + b[:, None])
        if layer < len(weights):
            a.append(phi(z[-1]))
        else:
            a.append(softmax(z[-1]) if loss == "ce" else z[-1])
    return z, a


def mlp_loss(x: Array, y: Array, weights: list[Array], biases: list[Array], activation: str, loss: str) -> float:
    """The batch-mean loss: cross-entropy −(1/B) Σ y log ŷ, or squared error averaged over every entry."""
    _, a = mlp_forward(x, weights, biases, activation, loss)
    y_hat = a[-1]
    Y = targets(y, y_hat.shape[0], loss)
    if loss == "ce":
        return float(-(Y * np.log(y_hat)).sum() / y_hat.shape[1])
    return float(np.mean((y_hat - Y) ** 2))


def mlp_backprop(
    x: Array, y: Array, weights: list[Array], biases: list[Array], activation: str = "tanh", loss: str = "ce"
) -> Backprop:
    """Forward, then backward by the seed formulas; any depth (one hidden layer: two weights)."""
    z, a = mlp_forward(x, weights, biases, activation, loss)
    dphi = ACTIVATIONS[activation][1]
    y_hat = a[-1]
    Y = targets(y, y_hat.shape[0], loss)
    B = y_hat.shape[1]
    if loss == "ce":
        delta = (y_hat - Y) / B  # δᴸ = ŷ − y per example; the batch mean divides by B
        value = -(Y * np.log(y_hat)).sum() / B
    else:
        delta = 2 * (y_hat - Y) / y_hat.size  # ∂/∂ŷ of the mean over all B·K squared errors
        value = np.mean((y_hat - Y) ** 2)
    deltas: list[Array] = []
    dW: list[Array] = []
    db: list[Array] = []
    da: list[Array] = []
    for i in range(len(weights) - 1, -1, -1):  # entry i is layer l = i + 1, from the output down
        deltas.append(delta)
        dW.append(delta @ a[i].T)  # ∂L/∂W⁽ˡ⁾ = δ⁽ˡ⁾ (a⁽ˡ⁻¹⁾)ᵀ
        db.append(delta.sum(axis=1))  # ∂L/∂b⁽ˡ⁾ = sum(δ⁽ˡ⁾) over the batch
        da.append(weights[i].T @ delta)  # ∂L/∂a⁽ˡ⁻¹⁾ = (W⁽ˡ⁾)ᵀ δ⁽ˡ⁾
        if i > 0:
            delta = da[-1] * dphi(z[i - 1], a[i])  # δ⁽ˡ⁻¹⁾ = ∂L/∂a⁽ˡ⁻¹⁾ ⊙ φ′(z⁽ˡ⁻¹⁾)
    return Backprop(float(value), z, a, deltas[::-1], dW[::-1], db[::-1], da[::-1])


# -- finite differences -------------------------------------------------------------------------------


def numerical_gradient(f: Callable[[Array], float], x: Array, eps: float = 1e-6) -> Array:
    """Central differences (f(x + εeᵢ) − f(x − εeᵢ)) / 2ε for every entry i of x (x is left unchanged)."""
    x = np.array(x, dtype=float)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad
