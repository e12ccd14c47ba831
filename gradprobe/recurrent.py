"""∂loss/∂h_t through time for PyTorch's recurrent modules (nn.RNN, nn.LSTM, nn.GRU), computed beside autograd.

The fused kernels never expose h_t to autograd, so on a logging step the probe keeps a layer's input and
its outputs; `replay` recomputes every gate of every step from them in a few batched operations, and
`CellReplay.state_gradients` runs the cell's adjoint recursion backwards in time from the gradient the
layer's consumers send back to its outputs. That recursion is linear in the gradient and needs one matrix
product per time step (no autograd graph over T small cells: about 15 ms instead of 50 for an LSTM at T = 100).

Replayed: single-layer, unidirectional modules without projections (`num_layers=1`, `bidirectional=False`,
`proj_size=0`), on padded (not packed) input, batched or not, with or without an initial state. A vanilla
RNN's nonlinearity is `module.nonlinearity`, any name of gradprobe.activations (a subclass of nn.RNN that
steps a nonlinearity nn.RNN lacks sets it to its own). Other recurrent modules are probed without BPTT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradprobe.activations import ACTIVATIONS
from gradprobe.definitions import CELL_KINDS

CELLS: dict[str, type[nn.RNNBase]] = dict(zip(CELL_KINDS, (nn.RNN, nn.LSTM, nn.GRU), strict=True))


def cell_kind(rnn: nn.RNNBase) -> str:
    """'lstm', 'gru' or 'rnn'."""
    return "lstm" if isinstance(rnn, nn.LSTM) else "gru" if isinstance(rnn, nn.GRU) else "rnn"


def state_activation(rnn: nn.RNNBase) -> str:
    """The nonlinearity that bounds the hidden state h (what its saturation is measured against)."""
    return rnn.nonlinearity if cell_kind(rnn) == "rnn" else "tanh"


def replayable(rnn: nn.RNNBase) -> bool:
    """Whether `replay` covers this module (one layer, one direction, no projection, a known nonlinearity)."""
    return (
        rnn.num_layers == 1
        and not rnn.bidirectional
        and getattr(rnn, "proj_size", 0) == 0
        and state_activation(rnn) in ACTIVATIONS
    )


def _time_first(t: Tensor, batch_first: bool, batched: bool) -> Tensor:
    if not batched:
        return t.unsqueeze(1)
    return t.transpose(0, 1) if batch_first else t


@torch.no_grad()
def replay(rnn: nn.RNNBase, x: Tensor, seq: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None) -> CellReplay:
    """Every gate of every step, recomputed in batch from the module's input x, its outputs and initial state hx.

    h_{t−1} is known for every t from the outputs, so each gate pre-activation is two batched matrix
    products; only the LSTM's cell state c_t needs a pass over time (one fused op per step).
    """
    kind, batched = cell_kind(rnn), x.dim() == 3
    x, h = (_time_first(t.detach(), rnn.batch_first, batched) for t in (x, seq))  # (T, B, ·)
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
    first = torch.zeros_like(h[:1]) if h0 is None else h0.detach().reshape(1, *h.shape[1:])
    h_prev = torch.cat([first, h[:-1]])
    xs = F.linear(x, rnn.weight_ih_l0, getattr(rnn, "bias_ih_l0", None))
    hs = F.linear(h_prev, rnn.weight_hh_l0, getattr(rnn, "bias_hh_l0", None))
    w_hh = rnn.weight_hh_l0.detach()
    layout = (rnn.batch_first, batched)
    if kind == "rnn":
        z = xs + hs
        return CellReplay("rnn", w_hh, h, ACTIVATIONS[rnn.nonlinearity].derivative(z, h), layout=layout)
    if kind == "lstm":  # PyTorch's gate order (i, f, g, o)
        i, f, g, o = (xs + hs).chunk(4, dim=2)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        ig = i * g
        c = torch.empty_like(ig)
        c_t, ig_t, f_t = c.unbind(0), ig.unbind(0), f.unbind(0)
        start = torch.zeros_like(ig[0]) if c0 is None else c0.detach().reshape(ig[0].shape)
        torch.addcmul(ig_t[0], f_t[0], start, out=c_t[0])
        for t in range(1, len(c)):
            torch.addcmul(ig_t[t], f_t[t], c_t[t - 1], out=c_t[t])
        c_prev = torch.cat([start[None], c[:-1]])
        tc = torch.tanh(c)
        # dgates = [dc·g·i(1−i), dc·c_{t−1}·f(1−f), dc·i·(1−g²), dh·tanh(c)·o(1−o)]
        coef = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=2)
        return CellReplay("lstm", w_hh, h, coef, gate=f, carry=o * (1 - tc * tc), keep=f, layout=layout)
    # gru, PyTorch's equations and gate order (r, z, n): n = tanh(x_n + r·(W_hn h + b_hn))
    xr, xz, xn = xs.chunk(3, dim=2)
    hr, hz, a_n = hs.chunk(3, dim=2)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * a_n)
    dn = (1 - z) * (1 - n * n)  # ∂h_t/∂(pre-activation of n)
    coef = torch.cat([dn * a_n * r * (1 - r), (h_prev - n) * z * (1 - z), dn * r], dim=2)
    return CellReplay("gru", w_hh, h, coef, gate=z, keep=z, layout=layout)


class CellReplay:
    """One recurrent layer's forward pass, replayed: what the adjoint recursion through time needs.

    For every cell the gradient a step passes back to h_{t−1} is linear in the gradient at step t:
    rnn   dh_{t−1} += (dh_t·φ'(z_t)) W_hh
    gru   dh_{t−1} += dh_t·z_t + ([dh_t, dh_t, dh_t]·coef_t) W_hh
    lstm  dc_t = dh_t·o_t(1 − tanh²c_t) + dc_{t+1}·f_{t+1};  dh_{t−1} += ([dc_t, dc_t, dc_t, dh_t]·coef_t) W_hh
    """

    def __init__(
        self,
        cell: str,
        w_hh: Tensor,
        h: Tensor,
        coef: Tensor,
        *,
        gate: Tensor | None = None,
        carry: Tensor | None = None,
        keep: Tensor | None = None,
        layout: tuple[bool, bool] = (True, True),
    ) -> None:
        self.cell, self.w_hh, self.h, self.coef = cell, w_hh, h, coef  # h: (T, B, H)
        self.gate = gate  # (T, B, H): LSTM forget gate, GRU update gate
        self.carry, self.keep = carry, keep  # LSTM: ∂c_t/∂h_t's share o(1 − tanh²c); f_t (LSTM) or z_t (GRU)
        self.layout = layout  # (batch_first, batched) of the module's outputs

    @torch.no_grad()
    def state_gradients(self, grad_out: Tensor) -> Tensor:
        """(T, B, H) total ∂loss/∂h_t for every t, from ∂loss/∂(outputs) sent by the consumers (module layout).

        A Python loop over t of a few fused ops into preallocated buffers (no allocation, no indexing
        op per step: every per-step view is made once by `unbind`).
        """
        direct = _time_first(grad_out.detach(), *self.layout)
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
