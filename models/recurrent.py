"""Stacked recurrent networks (vanilla RNN, LSTM, GRU), one module per layer so every layer is probed.

Every step, logging steps included, uses PyTorch's fused kernels (a vanilla RNN whose nonlinearity
nn.RNN lacks runs the cell equations step by step, in `SteppedRNN`). The probe's gradients through
time are gradprobe.recurrent's replay of each layer's nn.RNN/nn.LSTM/nn.GRU module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradprobe.activations import ACTIVATIONS, make_activation
from gradprobe.recurrent import CELLS, CellReplay, replay
from models.base import Family
from models.norms import make_norm

FUSED_RNN_ACTIVATIONS = ("tanh", "relu")  # the nonlinearities nn.RNN implements itself
RNN_ACTIVATIONS = tuple(name for name, act in ACTIVATIONS.items() if act.rnn)
__all__ = ["Recurrent", "RecurrentLayer", "SteppedRNN", "set_forget_bias"]


class SteppedRNN(nn.RNN):
    """A batch-first vanilla RNN with a nonlinearity nn.RNN lacks: h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh).

    An nn.RNN with nn.RNN's parameters, so the probe replays it like any other (its `nonlinearity` names φ).
    """

    def __init__(self, in_features: int, hidden: int, activation: str) -> None:
        super().__init__(in_features, hidden, batch_first=True)
        self.nonlinearity = activation  # what the probe's replay differentiates; nn.RNN's kernel is never run
        self.phi = make_activation(activation)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xs = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # input part of every step at once
        h = x.new_zeros(x.shape[0], self.hidden_size) if hx is None else hx[0]
        states = []
        for t in range(x.shape[1]):
            h = self.phi(xs[:, t] + F.linear(h, self.weight_hh_l0, self.bias_hh_l0))
            states.append(h)
        return torch.stack(states, dim=1), h[None]


class RecurrentLayer(nn.Module):
    """One recurrent layer over a (B, T, F) sequence, returning the (B, T, H) hidden states."""

    def __init__(self, cell: str, in_features: int, hidden: int, activation: str, norm: str) -> None:
        super().__init__()
        self.cell = cell
        if cell == "rnn" and activation not in RNN_ACTIVATIONS:
            raise ValueError(f"rnn activation {activation!r}; allowed: {', '.join(RNN_ACTIVATIONS)}")
        self.activation = activation if cell == "rnn" else "tanh"  # what bounds h (for saturation)
        if cell == "rnn" and activation not in FUSED_RNN_ACTIVATIONS:
            self.rnn = SteppedRNN(in_features, hidden, activation)
        else:
            kwargs = {"nonlinearity": activation} if cell == "rnn" else {}
            self.rnn = CELLS[cell](in_features, hidden, batch_first=True, **kwargs)
        self.always_unroll = isinstance(self.rnn, SteppedRNN)
        if self.always_unroll:
            self.nonlinearity = self.rnn.phi
        self.norm = make_norm(norm, hidden, "sequence")
        self.keep_sequence = False  # keep (x, h) of the last forward, for `replay`
        self.kept: tuple[Tensor, Tensor] | None = None

    @property
    def main_weight(self) -> nn.Parameter:
        return self.rnn.weight_hh_l0

    def forward(self, x: Tensor) -> Tensor:
        seq = self.rnn(x)[0]
        if self.keep_sequence:
            self.kept = (x, seq)
        return self.norm(seq)

    def replay(self, x: Tensor, seq: Tensor) -> CellReplay:
        """The layer's forward pass replayed from its input x and outputs h (gradprobe.recurrent.replay)."""
        return replay(self.rnn, x, seq)


class Recurrent(Family):
    """`depth` stacked recurrent layers of `width` units; the readout sees the last hidden state."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        n_outputs: int,
        *,
        cell: str,
        depth: int,
        width: int,
        activation: str,
        norm: str,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"{cell} needs a (time, features) input, got shape {in_shape}")
        self.channels_first = channels_first  # a (C, L) signal is read as L steps of C features
        features = in_shape[0] if channels_first else in_shape[1]
        self.layers = nn.ModuleList(
            RecurrentLayer(cell, features if i == 0 else width, width, activation, norm) for i in range(depth)
        )
        self.readout = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_first:
            x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.readout(x[:, -1])


@torch.no_grad()
def set_forget_bias(net: nn.Module, value: float) -> None:
    """Every LSTM's forget-gate bias b_if + b_hf to `value` (b_if = value, b_hf = 0); other modules untouched.

    With the biases at 0 the forget gate starts at σ(0) = 0.5 and the cell state halves at every step:
    the gradient through time vanishes at init. A bias of 1 (Gers et al. 2000; Jozefowicz et al. 2015)
    starts it near σ(1) ≈ 0.73. PyTorch's gate order is (i, f, g, o): f is the second quarter.
    """
    for module in net.modules():
        if isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                if name.startswith("bias_"):
                    param.chunk(4)[1].fill_(value if name.startswith("bias_ih") else 0.0)
