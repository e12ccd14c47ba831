"""Normalization layers by name, for dense features, 1-D/2-D feature maps and sequences."""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("none", "batch", "layer")


class SequenceBatchNorm(nn.BatchNorm1d):
    """Batch norm over (batch, time) for a (B, T, H) sequence: statistics per hidden unit."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def make_norm(name: str, features: int, layout: str) -> nn.Module:
    """Norm for `layout` in {'dense', 'conv1d', 'conv2d', 'sequence'} over `features` channels."""
    if name == "none":
        return nn.Identity()
    if name == "batch":
        return {
            "dense": nn.BatchNorm1d,
            "conv1d": nn.BatchNorm1d,
            "conv2d": nn.BatchNorm2d,
            "sequence": SequenceBatchNorm,
        }[layout](features)
    if name == "layer":
        # For feature maps, layer norm normalizes each example over channels and positions.
        if layout in ("conv1d", "conv2d"):
            return nn.GroupNorm(1, features)
        return nn.LayerNorm(features)
    raise ValueError(f"unknown norm {name!r}; allowed: {', '.join(NORMS)}")
