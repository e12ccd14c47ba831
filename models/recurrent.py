"""Stacked recurrent networks (vanilla RNN, LSTM, GRU), one module per layer so every layer is probed.

Training steps use PyTorch's fused kernels. When a probe sets `unroll`, a layer runs the same cell
equations step by step in Python (same parameters, same result up to float rounding, tested), keeping
every hidden state h_t in the graph so that ∂loss/∂h_t, the total gradient through time, can be read,
together with the gate activations of LSTM (forget gate) and GRU (update gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activations import make_activation
from models.base import Family
from models.norms import make_norm

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
FUSED_RNN_ACTIVATIONS = ("tanh", "relu")  # the nonlinearities nn.RNN implements itself
RNN_ACTIVATIONS = ("tanh", "relu", "sigmoid", "leaky_relu", "linear")
GATE_NAME = {"lstm": "forget", "gru": "update"}


class RecurrentLayer(nn.Module):
    """One recurrent layer over a (B, T, F) sequence, returning the (B, T, H) hidden states."""

    def __init__(self, cell: str, in_features: int, hidden: int, activation: str, norm: str) -> None:
        super().__init__()
        self.cell = cell
        kwargs = {"batch_first": True}
        if cell == "rnn":
            if activation not in RNN_ACTIVATIONS:
                raise ValueError(f"rnn activation {activation!r}; allowed: {', '.join(RNN_ACTIVATIONS)}")
            kwargs["nonlinearity"] = activation if activation in FUSED_RNN_ACTIVATIONS else "tanh"
            self.nonlinearity = make_activation(activation)
        self.activation = activation if cell == "rnn" else "tanh"  # what bounds h (for saturation)
        self.rnn = CELLS[cell](in_features, hidden, **kwargs)
        self.norm = make_norm(norm, hidden, "sequence")
        self.always_unroll = cell == "rnn" and activation not in FUSED_RNN_ACTIVATIONS
        self.unroll = False
        self.states: list[Tensor] = []  # h_1 … h_T of the last unrolled forward
        self.gate_values: Tensor | None = None  # (T, B, H) forget/update gate of the last unrolled forward

    @property
    def main_weight(self) -> nn.Parameter:  # noqa: D102
        return self.rnn.weight_hh_l0

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.unroll or self.always_unroll:
            seq = self._unrolled(x)
        else:
            seq = self.rnn(x)[0]
        return self.norm(seq)

    def _unrolled(self, x: Tensor) -> Tensor:
        rnn = self.rnn
        xs = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # input part of every gate, all steps at once
        h = x.new_zeros(x.shape[0], rnn.hidden_size)
        c = torch.zeros_like(h)
        states, gates = [], []
        for t in range(x.shape[1]):
            gh = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
            if self.cell == "rnn":
                h = self.nonlinearity(xs[:, t] + gh)
            elif self.cell == "lstm":
                i, f, g, o = (xs[:, t] + gh).chunk(4, dim=1)  # PyTorch's gate order
                f = torch.sigmoid(f)
                c = f * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                gates.append(f)
            else:  # gru, PyTorch's equations and gate order (r, z, n)
                xr, xz, xn = xs[:, t].chunk(3, dim=1)
                hr, hz, hn = gh.chunk(3, dim=1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                h = (1 - z) * torch.tanh(xn + r * hn) + z * h
                gates.append(z)
            states.append(h)
        self.states = states
        self.gate_values = torch.stack(gates).detach() if gates else None
        return torch.stack(states, dim=1)


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

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.channels_first:
            x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.readout(x[:, -1])
