"""Convolutional networks, 1-D or 2-D from the input shape, with the options the invariance tests need.

Padding mode (`zeros` or `circular`), stride and max-pooling apply to every conv block while the
feature map is still large enough (stride s needs ≥ s positions, pooling ≥ 2); each block records its
cumulative `total_stride`. The head is global average pooling (`gap`), flattening (`flatten`), or `dense`:
the readout applied at every position (a 1×1 convolution), giving outputs laid out like the input
((B, n_outputs, L) for a (C, L) signal) for per-position tasks such as segmentation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradprobe.activations import make_activation
from models.base import Family
from models.norms import make_norm


class ConvBlock(nn.Module):
    """Conv (same padding) → norm → activation → optional 2× max-pool."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        *,
        activation: str,
        norm: str,
        kernel_size: int,
        padding: str,
        stride: int,
        pool: bool,
        total_stride: int,
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode=padding
        )
        self.norm = make_norm(norm, out_channels, f"conv{dims}d")
        self.act = make_activation(activation)
        pool_cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.pool = pool_cls(2) if pool else nn.Identity()
        self.total_stride = total_stride

    @property
    def main_weight(self) -> nn.Parameter:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class CNN(Family):
    """`depth` conv blocks of `width` channels on a (C, L) or (C, H, W) input, then a linear readout."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        n_outputs: int,
        *,
        depth: int,
        width: int,
        activation: str,
        norm: str,
        kernel_size: int = 3,
        padding: str = "zeros",
        stride: int = 1,
        pool: str = "none",
        head: str = "gap",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last  # a (T, F) sequence is read as F channels of length T
        if channels_last:
            in_shape = (in_shape[-1], *in_shape[:-1])
        if len(in_shape) not in (2, 3):
            raise ValueError(f"cnn needs a (C, L) or (C, H, W) input, got shape {in_shape}")
        dims = len(in_shape) - 1
        size, total = min(in_shape[1:]), 1
        spatial = list(in_shape[1:])
        blocks = []
        for i in range(depth):
            s = stride if size >= stride else 1
            size, spatial, total = math.ceil(size / s), [math.ceil(n / s) for n in spatial], total * s
            do_pool = pool == "max" and size >= 2
            if do_pool:
                size, spatial, total = size // 2, [n // 2 for n in spatial], total * 2
            blocks.append(
                ConvBlock(
                    dims,
                    in_shape[0] if i == 0 else width,
                    width,
                    activation=activation,
                    norm=norm,
                    kernel_size=kernel_size,
                    padding=padding,
                    stride=s,
                    pool=do_pool,
                    total_stride=total,
                )
            )
        self.layers = nn.ModuleList(blocks)
        self.head = head
        # The dense head keeps the readout an nn.Linear (on the channels at each position) rather than a
        # Conv1x1, so init and the probe treat it like every other family's readout.
        self.readout = nn.Linear(width if head in ("gap", "dense") else width * math.prod(spatial), n_outputs)

    def features(self, x: Tensor) -> list[Tensor]:
        """Every conv block's output, in forward order (for equivariance tests)."""
        outs = []
        if self.channels_last:
            x = x.transpose(1, -1)
        for block in self.layers:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)[-1]
        if self.head == "dense":
            out = self.readout(x.movedim(1, -1))  # (B, *positions, n_outputs)
            return out if self.channels_last else out.movedim(-1, 1)
        x = x.mean(dim=tuple(range(2, x.dim()))) if self.head == "gap" else torch.flatten(x, 1)
        return self.readout(x)
