"""Weight initialization schemes by name, with exactly the variances the README states.

`gain` multiplies each scheme's scale:
    xavier_*   Var = gain² · 2 / (fan_in + fan_out)          (Glorot & Bengio 2010)
    kaiming_*  Var = gain² · 2 / fan_in                      (He et al. 2015, ReLU)
    normal     std = gain / √fan_in                          (LeCun)
    orthogonal gain · Q, Q orthogonal (Saxe et al. 2014)
    identity   gain · I for square matrices (IRNN, Le et al. 2015), `normal` for the others
    torch_default  PyTorch's own init, weights then multiplied by gain; biases kept
Recurrent matrices are initialized one gate block at a time, so each gate's H×H (or H×in) matrix gets
the scheme's variance, as in the usual per-gate LSTM/GRU practice. Every other scheme zeroes biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

InitFn = Callable[[Tensor, float], None]


def _fan_in(w: Tensor) -> int:
    return w.shape[1] * (w[0][0].numel() if w.dim() > 2 else 1)


def _normal(w: Tensor, gain: float) -> None:
    nn.init.normal_(w, 0.0, gain / math.sqrt(_fan_in(w)))


def _identity(w: Tensor, gain: float) -> None:
    if w.dim() == 2 and w.shape[0] == w.shape[1]:
        with torch.no_grad():
            w.copy_(gain * torch.eye(w.shape[0], dtype=w.dtype))
    else:
        _normal(w, gain)


INITS: dict[str, InitFn] = {
    "xavier_uniform": lambda w, g: nn.init.xavier_uniform_(w, gain=g),
    "xavier_normal": lambda w, g: nn.init.xavier_normal_(w, gain=g),
    "kaiming_uniform": lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu").mul_(g),
    "kaiming_normal": lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu").mul_(g),
    "orthogonal": lambda w, g: nn.init.orthogonal_(w, gain=g),
    "normal": _normal,
    "identity": _identity,
    "torch_default": lambda w, g: w.mul_(g),
}


def _gate_blocks(weight: Tensor, module: nn.RNNBase) -> list[Tensor]:
    """Split a stacked recurrent weight (gates × H, in) into its per-gate views."""
    return list(weight.chunk(weight.shape[0] // module.hidden_size, dim=0))


@torch.no_grad()
def initialize(net: nn.Module, scheme: str, gain: float = 1.0) -> None:
    """Apply `scheme` to every Linear, Conv and recurrent weight of `net` (norm layers untouched)."""
    fn = INITS[scheme]
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fn(module.weight, gain)
            if module.bias is not None and scheme != "torch_default":
                module.bias.zero_()
        elif isinstance(module, nn.RNNBase):
            for name, param in module.named_parameters():
                if name.startswith("weight"):
                    for block in _gate_blocks(param, module):
                        fn(block, gain)
                elif scheme != "torch_default":
                    param.zero_()
