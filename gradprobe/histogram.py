"""Histograms of log10|g| per layer on fixed bins, counted on the gradients' device in one batched pass.

The bins are the same for every layer, step and run (so tables compare and a figure stacks them):
half-open [e_i, e_{i+1}) on log10|g| with edges EDGES (-30 … +10 by 0.5), `under` below the first edge,
`over` from the last edge on, and exact zeros and non-finite values (NaN, ±inf) counted apart. The bins and
their stat names are the `hist` definition of gradprobe/definitions.py; its keys go to the parquet table only.

Binning compares |g| with the edges' powers of ten (10**e, in float32), not log10|g| with the edges: no
rounding of a logarithm can move a value across an edge. It compares them as integers: the bit patterns of
non-negative float32 values are ordered as the values are, and zero (bits 0) and NaN/±inf (bits from
0x7F800000 on) sit at the two ends of that order. So zeros, under, the bins, over and non-finite are one
ordered partition of the bit patterns of |g|, and a value's place in it takes two table look-ups instead of
a binary search: its float32 exponent (bits >> 23) names a binade, which holds at most one boundary of the
partition (a binade spans a factor 2, the edges a factor √10); the column of the values at or above that
boundary, minus one below it (the sign of bits - boundary, in integer arithmetic). Every layer is counted
from one concatenation, then by one `bincount` per layer.
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

EXPONENT_SHIFT, BINADES = 23, 256  # float32: 23 mantissa bits below 8 exponent bits (the sign bit cleared)
INF_BITS = 0x7F800000  # the bits of +inf: from here on, non-finite
# Ordered columns (by |g|): zeros, under, the bins, over, non-finite. STATS column j counts ordered column
# IN_ORDER[j]; ordered column 0 (zeros) goes to ZEROS, the others move one place left.
IN_ORDER = (*range(1, OVER + 2), 0, NONFINITE)


def edge_powers() -> Tensor:
    """10**edge for every edge, rounded once to float32 (what |g| is compared with)."""
    return (10.0 ** torch.tensor(EDGES, dtype=torch.float64)).to(torch.float32)


def _binade_tables() -> tuple[Tensor, Tensor]:
    """Per binade: the bits of its boundary, and the ordered column of its values from that boundary on."""
    # The bits at which each ordered column after zeros starts: the smallest subnormal, each edge, +inf.
    starts = [1, *edge_powers().view(torch.int32).tolist(), INF_BITS]
    boundary, above = [], []
    for binade in range(BINADES):
        low, high = binade << EXPONENT_SHIFT, (binade + 1) << EXPONENT_SHIFT
        inside = [s for s in starts if low < s < high]
        assert len(inside) <= 1, "a binade holds at most one boundary: the edges are more than a factor 2 apart"
        # Without a boundary inside, the binade's first bits serve: every value of the binade is at or above it.
        boundary.append(inside[0] if inside else low)
        above.append(sum(s <= boundary[-1] for s in starts))
    return torch.tensor(boundary, dtype=torch.int32), torch.tensor(above, dtype=torch.int32)


_tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}


def tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The binade tables and the STATS order of the ordered columns, on `device` (made once per device)."""
    if device not in _tables:
        boundary, above = _binade_tables()
        _tables[device] = (boundary.to(device), above.to(device), torch.tensor(IN_ORDER, device=device))
    return _tables[device]


def histograms(grads: list[Tensor]) -> Tensor:
    """Counts per layer (rows) and bin (columns, in the order of STATS), float64 on the gradients' device."""
    if not grads:
        return torch.zeros(0, N_BINS, dtype=torch.float64)
    boundary, above, in_order = tables(grads[0].device)
    flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in grads])
    bits = flat.view(torch.int32).bitwise_and_(0x7FFFFFFF)  # |g|'s bits: the sign bit cleared (NaN's too)
    binade = bits >> EXPONENT_SHIFT
    # bits - boundary fits int32 (both in [0, 2**31)); its sign bit, shifted down, is -1 below the boundary,
    # 0 from it on: integer arithmetic, where adding a comparison's bool tensor takes a slow path (4x slower).
    column = (bits - boundary.index_select(0, binade)).bitwise_right_shift_(31)
    column += above.index_select(0, binade)
    per_layer = column.split([g.numel() for g in grads])
    counts = torch.stack([torch.bincount(c, minlength=N_BINS) for c in per_layer])
    return counts.index_select(1, in_order).to(torch.float64)
