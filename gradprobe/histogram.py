"""Histograms of log10|g| per layer on fixed bins, counted on the gradients' device in one batched pass.

The bins are the same for every layer, step and run (so tables compare and a figure stacks them):
half-open [e_i, e_{i+1}) on log10|g| with edges EDGES (-30 … +10 by 0.5), `under` below the first edge,
`over` from the last edge on, and exact zeros and non-finite values (NaN, ±inf) counted apart. The bins and
their stat names are the `hist` definition of gradprobe/definitions.py; its keys go to the parquet table only.

Binning compares |g| with the edges' powers of ten (10**e, in float32), not log10|g| with the edges: no
rounding of a logarithm can move a value across an edge. Every layer's |g| is concatenated, bucketized and
counted by one `bincount` over (layer, bin) pairs: a handful of kernels whatever the number of layers.
Counts are exact integers here (float64); the probe's record carries every value as float32, exact up to 2**24
entries per bin (a layer of more than 16.7 M weights may see its largest counts rounded).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradprobe import definitions as D

LOW, HIGH, WIDTH = D.HIST_LOW, D.HIST_HIGH, D.HIST_WIDTH
EDGES, STATS = D.HIST_EDGES, D.HIST.stats
N_BINS = len(STATS)  # under, the bins between the edges, over, zeros, nonfinite
# Column of each special count in a layer's row (the bins between edges fill 1 … len(EDGES) - 1).
OVER, ZEROS, NONFINITE = len(EDGES), len(EDGES) + 1, len(EDGES) + 2

_thresholds: dict[torch.device, Tensor] = {}


def thresholds(device: torch.device) -> Tensor:
    """10**edge for every edge, float32 on `device` (made once per device)."""
    if device not in _thresholds:
        powers = 10.0 ** torch.tensor(EDGES, dtype=torch.float64)
        _thresholds[device] = powers.to(torch.float32).to(device)
    return _thresholds[device]


def histograms(grads: list[Tensor]) -> Tensor:
    """Counts per layer (rows) and bin (columns, in the order of STATS), float64 on the gradients' device."""
    if not grads:
        return torch.zeros(0, N_BINS, dtype=torch.float64)
    device = grads[0].device
    flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in grads]).abs_()
    # bucketize(right=True): index i with thresholds[i-1] <= |g| < thresholds[i]; 0 = under, len(EDGES) = over.
    column = torch.bucketize(flat, thresholds(device), right=True)
    column = torch.where(flat == 0, ZEROS, column)
    column = torch.where(torch.isfinite(flat), column, NONFINITE)
    sizes = torch.tensor([g.numel() for g in grads], device=device)
    row_start = torch.repeat_interleave(torch.arange(len(grads), device=device) * N_BINS, sizes)
    counts = torch.bincount(column + row_start, minlength=len(grads) * N_BINS)
    return counts.reshape(len(grads), N_BINS).to(torch.float64)

