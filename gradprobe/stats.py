"""The gradient statistics themselves: every number the probe records is computed here, on the device.

Each function returns stacked tensors and never synchronizes (but for `_std`'s check, which decides
where the variance needs a second pass); the probe copies everything to the host once per logging step.
Contiguous float32 CPU tensors go through the one-pass kernels of `fused` where they are built; the
eager PyTorch path computes the same numbers everywhere else and is what the tests hold them to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradprobe import fused
from gradprobe.activations import ACTIVATIONS, SATURATION_SHARE, saturation
from gradprobe.definitions import Statistic
from gradprobe.histogram import histograms  # noqa: F401  (the `hist` definition's computation lives there)


class Stacked:
    """Copies of a list of tensors kept as the rows of one buffer per shape, in the list's order.

    One batched kernel per statistic and shape instead of one per tensor: on the CPU, kernels over a
    few thousand elements cost their launch, not their arithmetic (a deep MLP's 20 layers are one group).
    `rows` are views into the buffers, one per tensor, for in-place foreach arithmetic on the copies.
    """

    def __init__(self, like: list[Tensor]) -> None:
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(like):
            groups.setdefault((t.shape, t.dtype, t.device), []).append(i)
        self.groups = [
            (idx, torch.empty((len(idx), *shape), dtype=dtype, device=device))
            for (shape, dtype, device), idx in groups.items()
        ]
        self.rows: list[Tensor] = [torch.empty(0)] * len(like)
        for idx, buffer in self.groups:
            for j, i in enumerate(idx):
                self.rows[i] = buffer[j]
        self._order = torch.tensor([i for idx, _ in self.groups for i in idx]).argsort()

    def copy_(self, tensors: list[Tensor]) -> Stacked:
        """Overwrite the rows with `tensors` (shaped like the list it was made for): one foreach copy.

        (`torch.stack(..., out=buffer)` per shape is as fast with the data in cache and twice as slow without.)
        """
        torch._foreach_copy_(self.rows, [t.detach() for t in tensors])
        return self

    def per_row(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """fn on each buffer seen as (k, numel) rows → (k, ...); the rows back in list order. fn may overwrite them."""
        parts = [fn(buffer.flatten(1)) for _, buffer in self.groups]
        return parts[0] if len(parts) == 1 else torch.cat(parts)[self._order]


def by_shape(tensors: list[Tensor], fn: Callable[[Tensor], Tensor], workspace: dict | None = None) -> Tensor:
    """fn on the same-shaped tensors stacked as rows (k, numel) → (k, m); the rows back in input order.

    The stacked rows are a copy (`Stacked`) that `fn` may overwrite; with a `workspace` (a dict the caller
    keeps) the copy goes into the same buffers every time the shapes repeat instead of fresh ones.
    """
    key = tuple((t.shape, t.dtype, t.device) for t in tensors)
    stacked = workspace.get(key) if workspace is not None else None
    if stacked is None:
        stacked = Stacked(tensors)
        if workspace is not None:
            workspace[key] = stacked
    return stacked.copy_(tensors).per_row(fn)


# A float32 sum of squares loses entries below ~1e-19 (their squares underflow) and overflows above ~1.8e19.
# A float32 norm inside SAFE_NORMS is right to float32's rounding: each square that underflows is off by at
# most 2^-149 ≈ 1.4e-45 (a subnormal; PyTorch does not flush them), so n of them move a sum of squares
# ≥ 1e-30 by at most n·1.4e-15 of it. Outside, the few rows concerned are taken again in float64, so every
# norm is right for float32 entries from 1e-30 to 1e30 and the usual case costs one comparison.
SAFE_NORMS = (1e-15, 1e19)


# The divergence guard's limit (gradprobe/probe.py): the largest norm whose float32 sum of squares is finite,
# beyond which norm clipping's coefficient would be 0. The norms themselves are recorded as they are.
LARGEST_NORM = float(torch.finfo(torch.float32).max) ** 0.5


def _refined(norms: Tensor, exact: Callable[[int], Tensor]) -> Tensor:
    """`norms` (float32 reductions) with the entries outside `SAFE_NORMS` (0, NaN, inf too) replaced by `exact(i)`."""
    low, high = SAFE_NORMS
    smallest, largest = torch.stack(torch.aminmax(norms)).tolist() if norms.numel() else (low, high)  # a host sync
    if low <= smallest and largest <= high:  # the usual case (NaN fails it too)
        return norms
    norms = norms.clone()
    for i in (~((norms >= low) & (norms <= high))).nonzero().flatten().tolist():
        norms[i] = exact(i)
    return norms


def norm(t: Tensor) -> Tensor:
    """L2 norm of one tensor, right for entries from 1e-30 to 1e30 (`SAFE_NORMS`)."""
    value = torch.linalg.vector_norm(t)
    low, high = SAFE_NORMS
    return value if low <= value.item() <= high else _norm64(t).to(value.dtype)


def _norm64(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t, dtype=torch.float64)


def row_norms(rows: Tensor) -> Tensor:
    """L2 norm of each row of a (k, n) tensor (`SAFE_NORMS`)."""
    return _refined(torch.linalg.vector_norm(rows, dim=1), lambda i: _norm64(rows[i]))


# ‖t‖²/n − mean² keeps the spread to about 1e-6 of ‖t‖²/n in float32; where that is more than 1/8 of
# the variance (the mean dominates: a saturated sigmoid layer, a constant offset) the variance is
# taken again in two passes. Gradients almost never need it; most activations do not.
ONE_PASS_LIMIT = 8.0


def _std(mean_square: Tensor, mean: Tensor, exact: Callable[[int], Tensor]) -> Tensor:
    """Population std from the mean squares and means of one pass; `exact(i)` where one pass is not enough.

    Pass them in float64: the squares of float32 statistics below ~1e-19 underflow in float32.
    """
    var = (mean_square - mean.square()).clamp(min=0)
    shaky = mean_square > ONE_PASS_LIMIT * var
    if shaky.any():  # a host sync on a logging step; none on the CPU, where it is free
        for i in shaky.nonzero().flatten().tolist():
            var[i] = exact(i)
    return var.sqrt()


def _two_pass_std(rows: Tensor, shaky: list[int], *, column: int, tensors: list[Tensor]) -> Tensor:
    """A fused kernel's rows with the std in `column` taken again in two passes where it flagged one pass short."""
    for i in shaky:
        rows[i, column] = tensors[i].detach().double().var(correction=0).sqrt()  # float32 squares underflow
    return rows


GRAD_ROW = ("l2", "rms", "absmax", "mean", "std")  # the columns of `grad_rows`


def grad_rows(tensors: list[Tensor]) -> Tensor:
    """(k, 5): l2, rms, absmax, mean, std (population) of each tensor, in their dtype.

    Fused, each tensor is read once (squares summed in double), and a NaN or an inf sends the whole list
    down the eager path, which propagates them as PyTorch does. Every norm is right for entries from
    1e-30 to 1e30 on both paths (`SAFE_NORMS`). Eager, each tensor is read by one norm, one `sum` and one
    `aminmax`, kernels that vectorize on the CPU; `var` (Welford) is about 3× slower there and runs only
    where the one-pass variance is not exact enough (`_std`, and its flag in fused.c).
    """
    if fused.usable(tensors):
        got = fused.grad_rows(tensors, ONE_PASS_LIMIT)
        if got is not None:
            return _two_pass_std(*got, column=4, tensors=tensors)
    dtype = tensors[0].dtype
    l2 = _refined(torch.stack(torch._foreach_norm(tensors)), lambda i: _norm64(tensors[i])).double()
    numel = torch.tensor([t.numel() for t in tensors], dtype=l2.dtype)
    mean = torch.stack([t.sum() for t in tensors]).to(l2.dtype) / numel
    low, high = (torch.stack(m).to(l2.dtype) for m in zip(*(torch.aminmax(t) for t in tensors)))
    std = _std(l2.square() / numel, mean, lambda i: tensors[i].double().var(correction=0))
    return torch.stack([l2, l2 / numel.sqrt(), torch.maximum(low.abs(), high.abs()), mean, std], dim=1).to(dtype)


def tensor_stats(tensors: list[Tensor], rows: Tensor | None = None) -> dict[str, Tensor]:
    """l2, rms, absmax, mean, std of each tensor as 1-D tensors over the list (`grad_rows`, unless given).

    `nonfinite` is left to `nonfinite_counts`, needed only when a norm is not finite.
    """
    rows = grad_rows(tensors) if rows is None else rows
    return dict(zip(GRAD_ROW, rows.unbind(1)))


def grad_table(tensors: list[Tensor], rows: Tensor | None = None, *, finite: bool = False) -> dict[str, Tensor]:
    """Every `grad` statistic of each tensor by stat name (definitions.GRAD): `tensor_stats` and non-finite counts.

    `finite`: the caller knows every norm is finite, so no entry is NaN/inf (the counts are zeros, not a pass).
    """
    rows = grad_rows(tensors) if rows is None else rows
    counts = torch.zeros(len(tensors), dtype=rows.dtype, device=rows.device) if finite else nonfinite_counts(tensors)
    return tensor_stats(tensors, rows) | {"nonfinite": counts}


def nonfinite_counts(tensors: list[Tensor]) -> Tensor:
    """Number of NaN/±inf entries of each tensor."""
    return torch.stack([(~torch.isfinite(t)).sum() for t in tensors]).float()


def norms(tensors: list[Tensor]) -> Tensor:
    """L2 norm of each tensor, stacked (one fused call or one `_foreach_norm`; `SAFE_NORMS`)."""
    if fused.usable(tensors):
        return fused.norms(tensors)
    if not tensors:
        return torch.zeros(0)
    return _refined(torch.stack(torch._foreach_norm(tensors)), lambda i: _norm64(tensors[i]))


def global_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all tensors taken together (what norm clipping compares with its threshold)."""
    return norm(norms(tensors))


def activation_stats(activation: str, a: Tensor, z: Tensor | None = None) -> Tensor:
    """[mean, std, saturation] of a layer's activations a = φ(z) (std over all entries, population)."""
    return layer_activation_stats(activation, [a], None if z is None else [z])[0]


def layer_activation_stats(
    activation: str, outputs: list[Tensor], inputs: list[Tensor] | None = None, workspace: dict | None = None
) -> Tensor:
    """(layers, 3): [mean, std, saturation] of each layer's a = φ(z), batched by shape (`by_shape`).

    The pre-activations z are needed only where φ' cannot be read off a (GELU). Fused, the outputs are
    read in place, once; eager, their copy (`by_shape`) is overwritten by φ'.
    """
    if activation in fused.KINDS and fused.usable(outputs):
        threshold = SATURATION_SHARE * ACTIVATIONS[activation].max_derivative
        got = fused.act_rows(outputs, fused.KINDS[activation], threshold, ONE_PASS_LIMIT)
        if got is not None:  # else NaN or inf somewhere: eager, whose NaN reach the record
            return _two_pass_std(*got, column=1, tensors=outputs)
    if inputs is None or not ACTIVATIONS[activation].needs_input:
        return by_shape(outputs, lambda a: _activation_rows(activation, a, None), workspace)
    both = [torch.stack([a.detach(), z.detach()]) for a, z in zip(outputs, inputs)]
    return by_shape(both, lambda rows: _activation_rows(activation, *rows.chunk(2, dim=1)), workspace)


def _activation_rows(activation: str, a: Tensor, z: Tensor | None) -> Tensor:
    """[mean, std, saturation] of each row of a (k, n) copy of activations, which it overwrites."""
    mean, l2 = a.mean(1).double(), row_norms(a).double()
    std = _std(l2.square() / a.shape[1], mean, lambda i: a[i].double().var(correction=0)).to(a.dtype)
    return torch.stack([mean.to(a.dtype), std, saturation(activation, a, z, dim=1, overwrite=True)], dim=1)


def gate_stats(gates: Tensor) -> Tensor:
    """[mean, saturation] of sigmoid gate values (saturated: σ' below 5 % of its maximum)."""
    return torch.stack([gates.mean(), saturation("sigmoid", gates)])


def update_ratios(before: Stacked, after: list[Tensor], refresh: bool = False) -> Tensor:
    """‖W_after − W_before‖ / ‖W_before‖ for each weight, `before` being the weights' copy taken before the step.

    With `refresh`, `before` holds `after` on return (the next step's copy, taken in the same pass where
    fused); without, it may hold anything.
    """
    if fused.usable(after) and fused.usable(before.rows):
        return fused.update_ratios(after, before.rows, refresh)  # one pass over both; ΔW is never written
    sizes = before.per_row(row_norms)
    torch._foreach_sub_(before.rows, [t.detach() for t in after])  # in place: no second copy of every weight
    ratios = before.per_row(row_norms) / sizes
    if refresh:
        before.copy_(after)
    return ratios


def state_norms(grads: Tensor) -> Tensor:
    """‖∂L/∂h_t‖ over the batch for each t of (T, B, H) state gradients: one reduction (`SAFE_NORMS`)."""
    return row_norms(grads.flatten(1))


def bptt_summary(norms: Tensor) -> Tensor:
    """[first, last, first/last] of per-time-step gradient norms ‖∂L/∂h_t‖."""
    return torch.stack([norms[0], norms[-1], norms[0] / norms[-1]])


def compute(statistic: Statistic, *args: object) -> Tensor:
    """The values of a definition's family: the function of this module its `compute_name` names."""
    return globals()[statistic.compute_name](*args)
