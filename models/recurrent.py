"""Stacked recurrent networks (vanilla RNN, LSTM, GRU), one module per layer so every layer is probed.

Every step, logging steps included, uses PyTorch's fused kernels (a vanilla RNN whose nonlinearity
nn.RNN lacks runs the cell equations step by step). The fused kernels never expose h_t to autograd,
so ∂loss/∂h_t, the total gradient through time, is computed beside autograd instead of inside it:
when a probe sets `keep_sequence`, a layer keeps its input and its hidden states; `replay` recomputes
every gate of every step from them in a few batched operations, and `CellReplay.state_gradients`
runs the cell's adjoint recursion backwards in time from the gradient the layer's consumers send back
to its outputs. That recursion is linear in the gradient and needs one matrix product per time step
(no autograd graph over T small cells: about 15 ms instead of 50 for an LSTM at T = 100; README, Performance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradprobe.activations import ACTIVATIONS, make_activation
from models.base import Family
from models.norms import make_norm

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}  # the recurrent model names' one home
FUSED_RNN_ACTIVATIONS = ("tanh", "relu")  # the nonlinearities nn.RNN implements itself
RNN_ACTIVATIONS = tuple(name for name, act in ACTIVATIONS.items() if act.rnn)
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
        self.keep_sequence = False  # set by the probe on logging steps
        self.kept: tuple[Tensor, Tensor] | None = None  # (input x, hidden states h) of the last forward

    @property
    def main_weight(self) -> nn.Parameter:  # noqa: D102
        return self.rnn.weight_hh_l0

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        seq = self._unrolled(x) if self.always_unroll else self.rnn(x)[0]
        if self.keep_sequence:
            self.kept = (x, seq)
        return self.norm(seq)

    def _unrolled(self, x: Tensor) -> Tensor:
        """A vanilla RNN with a nonlinearity nn.RNN lacks: h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)."""
        rnn = self.rnn
        xs = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # input part of every step at once
        h = x.new_zeros(x.shape[0], rnn.hidden_size)
        states = []
        for t in range(x.shape[1]):
            h = self.nonlinearity(xs[:, t] + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0))
            states.append(h)
        return torch.stack(states, dim=1)

    @torch.no_grad()
    def replay(self, x: Tensor, seq: Tensor) -> CellReplay:
        """Every gate of every step, recomputed in batch from the layer's input x and its outputs h (B, T, ·).

        h_{t−1} is known for every t from the outputs, so each gate pre-activation is two batched matrix
        products; only the LSTM's cell state c_t needs a pass over time (one fused op per step).
        """
        rnn = self.rnn
        x, h = x.detach().transpose(0, 1), seq.detach().transpose(0, 1)  # time first: (T, B, ·)
        h_prev = torch.cat([torch.zeros_like(h[:1]), h[:-1]])
        xs = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
        hs = F.linear(h_prev, rnn.weight_hh_l0, rnn.bias_hh_l0)
        w_hh = rnn.weight_hh_l0.detach()
        if self.cell == "rnn":
            z = xs + hs
            return CellReplay("rnn", w_hh, h, ACTIVATIONS[self.activation].derivative(z, h))
        if self.cell == "lstm":  # PyTorch's gate order (i, f, g, o)
            i, f, g, o = (xs + hs).chunk(4, dim=2)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            ig = i * g
            c = torch.empty_like(ig)
            c_t, ig_t, f_t = c.unbind(0), ig.unbind(0), f.unbind(0)
            c_t[0].copy_(ig_t[0])
            for t in range(1, len(c)):
                torch.addcmul(ig_t[t], f_t[t], c_t[t - 1], out=c_t[t])
            c_prev = torch.cat([torch.zeros_like(c[:1]), c[:-1]])
            tc = torch.tanh(c)
            # dgates = [dc·g·i(1−i), dc·c_{t−1}·f(1−f), dc·i·(1−g²), dh·tanh(c)·o(1−o)]
            coef = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=2)
            return CellReplay("lstm", w_hh, h, coef, gate=f, carry=o * (1 - tc * tc), keep=f)
        # gru, PyTorch's equations and gate order (r, z, n): n = tanh(x_n + r·(W_hn h + b_hn))
        xr, xz, xn = xs.chunk(3, dim=2)
        hr, hz, a_n = hs.chunk(3, dim=2)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * a_n)
        dn = (1 - z) * (1 - n * n)  # ∂h_t/∂(pre-activation of n)
        coef = torch.cat([dn * a_n * r * (1 - r), (h_prev - n) * z * (1 - z), dn * r], dim=2)
        return CellReplay("gru", w_hh, h, coef, gate=z, keep=z)


class CellReplay:
    """One recurrent layer's forward pass, replayed: what the adjoint recursion through time needs.

    For every cell the gradient a step passes back to h_{t−1} is linear in the gradient at step t:
    rnn   dh_{t−1} += (dh_t·φ'(z_t)) W_hh
    gru   dh_{t−1} += dh_t·z_t + ([dh_t, dh_t, dh_t]·coef_t) W_hh
    lstm  dc_t = dh_t·o_t(1 − tanh²c_t) + dc_{t+1}·f_{t+1};  dh_{t−1} += ([dc_t, dc_t, dc_t, dh_t]·coef_t) W_hh
    """

    def __init__(self, cell: str, w_hh: Tensor, h: Tensor, coef: Tensor, *, gate: Tensor | None = None,
                 carry: Tensor | None = None, keep: Tensor | None = None) -> None:  # fmt: skip
        self.cell, self.w_hh, self.h, self.coef = cell, w_hh, h, coef
        self.gate = gate  # (T, B, H): LSTM forget gate, GRU update gate
        self.carry, self.keep = carry, keep  # LSTM: ∂c_t/∂h_t's share o(1 − tanh²c); f_t (LSTM) or z_t (GRU)

    @torch.no_grad()
    def state_gradients(self, grad_out: Tensor) -> Tensor:
        """(T, B, H) total ∂loss/∂h_t for every t, from ∂loss/∂(outputs) (B, T, H) sent by the consumers.

        A Python loop over t of a few fused ops into preallocated buffers (no allocation, no indexing
        op per step: every per-step view is made once by `unbind`).
        """
        direct = grad_out.detach().transpose(0, 1)
        steps, batch, hidden = direct.shape
        dh = torch.empty_like(direct)
        dh_t, direct_t, coef = dh.unbind(0), direct.unbind(0), self.coef
        back = torch.zeros_like(direct[0])  # what step t+1 passes back to h_t
        gates = coef.shape[2] // hidden
        if self.cell == "rnn":
            coef_t, scratch = coef.unbind(0), torch.empty_like(back)
            for t in range(steps - 1, -1, -1):
                torch.add(direct_t[t], back, out=dh_t[t])
                torch.mul(dh_t[t], coef_t[t], out=scratch)
                torch.mm(scratch, self.w_hh, out=back)
            return dh
        scratch = torch.empty(batch, gates * hidden, dtype=dh.dtype, device=dh.device)
        keep_t = self.keep.unbind(0)
        if self.cell == "gru":  # every gate's coefficient multiplies dh_t
            coef_t, spread = coef.view(steps, batch, gates, hidden).unbind(0), scratch.view(batch, gates, hidden)
            for t in range(steps - 1, -1, -1):
                torch.add(direct_t[t], back, out=dh_t[t])
                torch.mul(coef_t[t], dh_t[t][:, None], out=spread)
                torch.addmm(dh_t[t] * keep_t[t], scratch, self.w_hh, out=back)
            return dh
        # lstm: the first three gates' coefficients multiply dc_t, the output gate's dh_t
        inner_t = coef[..., : 3 * hidden].reshape(steps, batch, 3, hidden).unbind(0)
        outer_t, carry_t = coef[..., 3 * hidden :].unbind(0), self.carry.unbind(0)
        inner, outer = scratch[:, : 3 * hidden].view(batch, 3, hidden), scratch[:, 3 * hidden :]
        dc = torch.zeros_like(back)
        for t in range(steps - 1, -1, -1):
            torch.add(direct_t[t], back, out=dh_t[t])
            if t + 1 < steps:
                dc.mul_(keep_t[t + 1])
            dc.addcmul_(dh_t[t], carry_t[t])
            torch.mul(inner_t[t], dc[:, None], out=inner)
            torch.mul(outer_t[t], dh_t[t], out=outer)
            torch.mm(scratch, self.w_hh, out=back)
        return dh


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
