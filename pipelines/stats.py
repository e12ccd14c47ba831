"""The gradient statistics themselves: every number the probe records is computed here, on the device.

Each function returns stacked tensors and never synchronizes; the probe copies everything to the host
once per logging step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.activations import saturation


def tensor_stats(tensors: list[Tensor]) -> dict[str, Tensor]:
    """l2, rms, absmax, mean, std (population) of each tensor, as 1-D tensors over the list.

    One `_foreach_norm` kernel, then per tensor `aminmax`, `mean` and a two-pass `var` (exact when the
    mean is large against the spread). On the CPU these are several times faster than `_foreach_norm`
    with ord=inf and than `var_mean` (measured: benchmarks/README.md). `nonfinite` is left to
    `nonfinite_counts`, needed only when a norm is not finite.
    """
    l2 = torch.stack(torch._foreach_norm(tensors))
    absmax = torch.stack([torch.stack(torch.aminmax(t)).abs().amax() for t in tensors]).to(l2.dtype)
    numel = torch.tensor([t.numel() for t in tensors], dtype=l2.dtype)
    mean = torch.stack([t.mean() for t in tensors]).to(l2.dtype)
    std = torch.stack([t.var(correction=0) for t in tensors]).to(l2.dtype).sqrt()
    return {"l2": l2, "rms": l2 / numel.sqrt(), "absmax": absmax, "mean": mean, "std": std}


def nonfinite_counts(tensors: list[Tensor]) -> Tensor:
    """Number of NaN/±inf entries of each tensor."""
    return torch.stack([(~torch.isfinite(t)).sum() for t in tensors]).float()


def global_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all tensors taken together (what norm clipping compares with its threshold)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def activation_stats(activation: str, a: Tensor, z: Tensor | None = None) -> Tensor:
    """[mean, std, saturation] of a layer's activations a = φ(z) (std over all entries, population)."""
    a = a.detach()
    return torch.stack([a.mean(), a.std(correction=0), saturation(activation, a, None if z is None else z.detach())])


def gate_stats(gates: Tensor) -> Tensor:
    """[mean, saturation] of sigmoid gate values (saturated: σ' below 5 % of its maximum)."""
    return torch.stack([gates.mean(), saturation("sigmoid", gates)])


def update_ratios(before: list[Tensor], after: list[Tensor]) -> Tensor:
    """‖W_after − W_before‖ / ‖W_before‖ for each weight; overwrites `before` (a copy) with the step."""
    norms = torch.stack(torch._foreach_norm(before))
    torch._foreach_sub_(before, after)  # in place: no second copy of every weight
    return torch.stack(torch._foreach_norm(before)) / norms


def state_norms(grads: Tensor) -> Tensor:
    """‖∂L/∂h_t‖ over the batch for each t of (T, B, H) state gradients: one reduction."""
    return torch.linalg.vector_norm(grads.flatten(1), dim=1)


def bptt_summary(norms: Tensor) -> Tensor:
    """[first, last, first/last] of per-time-step gradient norms ‖∂L/∂h_t‖."""
    return torch.stack([norms[0], norms[-1], norms[0] / norms[-1]])
