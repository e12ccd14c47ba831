"""The brute-force side of the probe's tests: a gradient's recorded statistics, computed in float64."""

from __future__ import annotations

import torch


def weight_stats(layer: str, g: torch.Tensor) -> dict[str, float]:
    """The `grad/*` keys of one layer's weight gradient g, by torch.linalg and plain reductions in float64."""
    g = g.detach().double()
    return {
        f"grad/l2/{layer}": torch.linalg.norm(g.flatten()).item(),
        f"grad/rms/{layer}": g.pow(2).mean().sqrt().item(),
        f"grad/absmax/{layer}": g.abs().max().item(),
        f"grad/mean/{layer}": g.mean().item(),
        f"grad/std/{layer}": g.std(correction=0).item(),
        f"grad/nonfinite/{layer}": 0.0,
    }
