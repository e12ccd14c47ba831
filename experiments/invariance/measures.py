"""Shift invariance and equivariance of a network, and the invariances that shape its gradients: pure measures.

A model f is invariant to a transformation T when f(T x) = f(x) and equivariant when f(T x) = T f(x).
T is a shift by k along every spatial axis (1-D signals: k samples; 2-D images: k rows and k columns,
a diagonal shift), either circular (`torch.roll`) or non-circular: the content moves, what leaves the
frame is lost and the vacated border is filled with the background (the median of the inputs' border
values, ≈ 0 for mnist1d, the blank paper of digits).

Every function here is pure (it never changes the network it is given); the experiment that trains the
zoo and logs these numbers is experiments/invariance/zoo.py.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradprobe import keys as K
from models.base import layer_name

LossFn = Callable[[Tensor, Tensor], Tensor]

# ------------------------------------------------------------------------------------------- shifts


def spatial_dims(x: Tensor) -> tuple[int, ...]:
    """The spatial axes of a (B, C, L) or (B, C, H, W) batch."""
    return tuple(range(2, x.dim()))


def shift(x: Tensor, k: int | Sequence[int], *, circular: bool = True, fill: float = 0.0) -> Tensor:
    """x shifted by k along every spatial axis (or by k[i] along axis i): circular, or with `fill` entering."""
    dims = spatial_dims(x)
    ks = tuple(k) if isinstance(k, Sequence) else (k,) * len(dims)
    if circular:
        return torch.roll(x, ks, dims)
    out = torch.full_like(x, fill)
    src, dst = [slice(None)] * x.dim(), [slice(None)] * x.dim()
    for d, kd in zip(dims, ks):
        n = x.shape[d]
        if abs(kd) >= n:
            return out
        src[d], dst[d] = (slice(0, n - kd), slice(kd, n)) if kd >= 0 else (slice(-kd, n), slice(0, n + kd))
    out[tuple(dst)] = x[tuple(src)]
    return out


def background(x: Tensor) -> float:
    """The fill value of non-circular shifts: the median of the inputs' border entries (the blank background)."""
    border = torch.zeros(x.shape[2:], dtype=torch.bool)
    for d in range(border.dim()):
        index = [slice(None)] * border.dim()
        for edge in (0, -1):
            index[d] = edge
            border[tuple(index)] = True
    return float(x[..., border].median())


# ------------------------------------------------------------------------------ shift invariance


@torch.no_grad()
def probabilities(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Softmax outputs of `net` in eval mode (its mode is restored), in chunks."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([F.softmax(net(part), dim=-1) for part in x.split(batch)])
    finally:
        net.train(was_training)


def _agreement(p0: Tensor, p1: Tensor) -> float:
    return float((p0.argmax(-1) == p1.argmax(-1)).double().mean())


def _top_prob_change(p0: Tensor, p1: Tensor) -> float:
    top = p0.argmax(-1, keepdim=True)
    return float((p1.gather(-1, top) - p0.gather(-1, top)).abs().double().mean())


def accuracy_vs_shift(
    net: nn.Module, x: Tensor, y: Tensor, shifts: Iterable[int], *, circular: bool = True, fill: float = 0.0
) -> dict[int, float]:
    """Accuracy on inputs shifted by each k."""
    return {
        k: float((probabilities(net, shift(x, k, circular=circular, fill=fill)).argmax(-1) == y).double().mean())
        for k in shifts
    }


def consistency(net: nn.Module, x: Tensor, k: int, *, circular: bool = True, fill: float = 0.0) -> float:
    """Share of inputs whose top-1 class is the same for x and for x shifted by k (Zhang 2019)."""
    return _agreement(probabilities(net, x), probabilities(net, shift(x, k, circular=circular, fill=fill)))


def prob_change(net: nn.Module, x: Tensor, k: int = 1, *, circular: bool = True, fill: float = 0.0) -> float:
    """Mean |p_c(T_k x) − p_c(x)| of the class c predicted for x (Azulay & Weiss 2019 use k = 1)."""
    return _top_prob_change(probabilities(net, x), probabilities(net, shift(x, k, circular=circular, fill=fill)))


def shift_metrics(net: nn.Module, x: Tensor, y: Tensor, max_shift: int, fill: float) -> list[dict[str, Any]]:
    """Accuracy and consistency for every shift in [−max_shift, max_shift] and the one-step probability
    change, circular and non-circular, as rows (metric, mode, shift, value); shift None = the one-step
    summary, the mean over k = ±1 (of consistency and of the probability change)."""
    p0 = probabilities(net, x)
    rows: list[dict[str, Any]] = []
    for mode in K.SHIFT_MODES:
        agree, change = [], []
        for k in range(-max_shift, max_shift + 1):
            pk = p0 if k == 0 else probabilities(net, shift(x, k, circular=mode == "circ", fill=fill))
            rows.append(dict(metric="acc", mode=mode, shift=k, value=float((pk.argmax(-1) == y).double().mean())))
            if k != 0:
                rows.append(dict(metric="consistency", mode=mode, shift=k, value=_agreement(p0, pk)))
            if abs(k) == 1:
                agree.append(rows[-1]["value"])
                change.append(_top_prob_change(p0, pk))
        rows.append(dict(metric="consistency", mode=mode, shift=None, value=sum(agree) / len(agree)))
        rows.append(dict(metric="prob_change", mode=mode, shift=None, value=sum(change) / len(change)))
    return rows


# -------------------------------------------------------------------------------------- equivariance


def layer_strides(net: nn.Module) -> dict[str, int]:
    """Each conv block's name (L000, …) and cumulative stride (strides and pooling up to its output)."""
    return {layer_name(i): block.total_stride for i, block in enumerate(net.layers)}


@torch.no_grad()
def equivariance_errors(net: nn.Module, x: Tensor, k: int) -> dict[str, float]:
    """‖f_l(T_k x) − T_{k/s} f_l(x)‖ / ‖f_l(x)‖ of every conv block l (norms over the batch; T circular).

    For a block of total stride s the output grid moves by k/s; when k is not a multiple of s no shift of
    the output matches, and the error is against the nearer of ⌊k/s⌋ and ⌈k/s⌉ per axis (the smaller).
    Needs `net.features` (the CNN family); eval mode, restored afterwards.
    """
    was_training = net.training
    net.eval()
    try:
        plain, moved = net.features(x), net.features(shift(x, k))
    finally:
        net.train(was_training)
    errors = {}
    for (name, s), f, fk in zip(layer_strides(net).items(), plain, moved):
        dims = spatial_dims(f)
        steps = sorted({math.floor(k / s), math.ceil(k / s)})
        best = min(
            float(torch.linalg.vector_norm(fk - torch.roll(f, js, dims)))
            for js in itertools.product(steps, repeat=len(dims))
        )
        errors[name] = best / max(float(torch.linalg.vector_norm(f)), 1e-30)
    return errors


def equivariance_rows(net: nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """Rows (metric eqerr, layer, stride, shift, value) for shifts by 1 and by each layer's total stride."""
    strides = layer_strides(net)
    rows = []
    for k in sorted({1, *strides.values()}):
        errors = equivariance_errors(net, x, k)
        for layer, s in strides.items():
            if k in (1, s):
                rows.append(dict(metric="eqerr", layer=layer, stride=s, shift=k, value=errors[layer]))
    return rows


# ----------------------------------------------------------------- invariances that shape gradients


def _rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def _owner(block: nn.Module, weight: nn.Parameter) -> nn.Module:
    """The submodule (Linear or Conv) whose `.weight` is `weight`."""
    return next(m for m in block.modules() if getattr(m, "weight", None) is weight)


def _forward_backward(
    net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, params: Sequence[nn.Parameter]
) -> tuple[Tensor, list[Tensor]]:
    net.zero_grad(set_to_none=True)
    out = net(x)
    loss_fn(out, y).backward()
    return out.detach(), [p.grad.detach().clone() for p in params]


def _after_one_step(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, lr: float) -> Tensor:
    """The output on x after one plain SGD step (lr) on the loss at (x, y), on a copy."""
    net = copy.deepcopy(net)
    net.zero_grad(set_to_none=True)
    loss_fn(net(x), y).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad
        return net(x)


def _float64_copies(net: nn.Module, x: Tensor, train_mode: bool) -> tuple[nn.Module, nn.Module, Tensor]:
    base = copy.deepcopy(net).double().train(train_mode)
    return base, copy.deepcopy(base), x.double()


def batchnorm_scale_check(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    c: float,
    *,
    layer: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    lr: float = 0.1,
) -> dict[str, float]:
    """Scale the weight before block `layer`'s batch norm by c and measure what changes.

    Batch norm removes the scale: the output is unchanged and the weight's gradient is scaled by 1/c, so
    SGD's step on that weight is 1/c² smaller relative to it. The identity is exact for eps = 0, so it is
    measured with the batch norms' eps set to 1e-30 (≈ 0 in float64; PyTorch refuses 0); `out_change_eps` is the
    output change with the network's
    own eps (PyTorch's 1e-5 adds a relative change of order eps/Var, largest for small c). Returns
    out_change = ‖f'−f‖/‖f‖, grad_scale = ‖g'‖/‖g‖ (expect 1/c), grad_err = ‖c·g' − g‖/‖g‖ (expect 0),
    step_change = ‖f'−f‖/‖f‖ after one SGD step (lr) on both, and out_change_eps. Works on float64
    copies in train mode (batch statistics).
    """
    base, scaled, x = _float64_copies(net, x, train_mode=True)
    norms = [m for m in base.layers[layer].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"block {layer} has no batch norm")
    with torch.no_grad():
        scaled.layers[layer].main_weight.mul_(c)
        own_eps = _rel(scaled(x), base(x))
    for model in (base, scaled):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-30
    w0, w1 = base.layers[layer].main_weight, scaled.layers[layer].main_weight
    out0, (g0,) = _forward_backward(base, x, y, loss_fn, [w0])
    out1, (g1,) = _forward_backward(scaled, x, y, loss_fn, [w1])
    after0, after1 = _after_one_step(base, x, y, loss_fn, lr), _after_one_step(scaled, x, y, loss_fn, lr)
    return {
        "out_change": _rel(out1, out0),
        "grad_scale": float(torch.linalg.vector_norm(g1) / torch.linalg.vector_norm(g0)),
        "grad_err": _rel(c * g1, g0),
        "step_change": _rel(after1, after0),
        "out_change_eps": own_eps,
    }


def relu_rescaling_check(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    c: float,
    *,
    layer: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    lr: float = 0.1,
) -> dict[str, float]:
    """Scale block `layer`'s weight and bias by c > 0 and the next layer's weight by 1/c and measure.

    ReLU (and max-pooling, zero padding, averaging) is positively homogeneous, φ(c·z) = c·φ(z), so the
    function is unchanged, but the gradient of block `layer` is scaled by 1/c and the next layer's by c:
    gradient descent is not invariant to this reparametrization. The next layer is block layer+1 or the
    readout. Returns out_change, grad_scale_l (expect 1/c), grad_scale_next (expect c), grad_err (the larger
    of ‖c·g_l' − g_l‖/‖g_l‖ and ‖g_next'/c − g_next‖/‖g_next‖) and step_change (after one SGD step).
    Works on float64 copies in eval mode; the blocks must have no normalization.
    """
    if c <= 0:
        raise ValueError(f"c must be > 0 (positive homogeneity), got {c}")
    base, scaled, x = _float64_copies(net, x, train_mode=False)
    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) for m in base.modules()):
        raise ValueError("the ReLU rescaling identity needs a network without normalization")

    def pair(model: nn.Module) -> tuple[nn.Module, nn.Parameter]:
        block = model.layers[layer]
        after = model.layers[layer + 1].main_weight if layer + 1 < len(model.layers) else model.readout.weight
        return _owner(block, block.main_weight), after

    first, nxt = pair(scaled)
    with torch.no_grad():
        first.weight.mul_(c)
        if first.bias is not None:
            first.bias.mul_(c)
        nxt.div_(c)
    first0, nxt0 = pair(base)
    out0, (gl0, gn0) = _forward_backward(base, x, y, loss_fn, [first0.weight, nxt0])
    out1, (gl1, gn1) = _forward_backward(scaled, x, y, loss_fn, [first.weight, nxt])
    after0, after1 = _after_one_step(base, x, y, loss_fn, lr), _after_one_step(scaled, x, y, loss_fn, lr)
    norm = torch.linalg.vector_norm
    return {
        "out_change": _rel(out1, out0),
        "grad_scale_l": float(norm(gl1) / norm(gl0)),
        "grad_scale_next": float(norm(gn1) / norm(gn0)),
        "grad_err": max(_rel(c * gl1, gl0), _rel(gn1 / c, gn0)),
        "step_change": _rel(after1, after0),
    }


def has_batch_norm(net: nn.Module) -> bool:
    """Whether any block normalizes with batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def gradient_rows(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, scales: Iterable[float]) -> list[dict]:
    """The check that fits the network (batch norm: scale invariance; otherwise ReLU rescaling of L000/L001)."""
    check, fn = (K.BN_SCALE, batchnorm_scale_check) if has_batch_norm(net) else (K.RELU_RESCALE, relu_rescaling_check)
    rows = []
    for c in scales:
        for stat, value in fn(net, x, y, c, loss_fn=loss_fn).items():
            rows.append(dict(metric=check, stat=stat, scale=c, layer="L000", value=value))
    return rows
