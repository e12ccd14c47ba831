"""Gradients through time: the recorded ‖∂loss/∂h_t‖ against closed forms, gate statistics, the tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from gradprobe.keys import time_of
from gradprobe.recorder import STATS_ARTIFACT
from gradprobe.stats import gate_stats
from models.recurrent import Recurrent
from pipelines import train
from pipelines.config import RunConfig
from pipelines.data import load_temporal_order, temporal_order


def step0_bptt(run_id: str) -> np.ndarray:
    table = pd.read_parquet(MlflowClient().download_artifacts(run_id, STATS_ARTIFACT))
    rows = table[(table.step == 0) & (table.family == "bptt") & (table.layer == "L000")]
    rows = rows[rows.stat.map(time_of).notna()]
    return rows.assign(t=rows.stat.map(time_of)).sort_values("t")["value"].to_numpy()


@pytest.mark.parametrize("rho", [0.9, 1.1])
def test_linear_rnn_gradient_through_time_is_rho_to_the_lag(rho: float, tracking: str) -> None:
    """With h_t = ρQ h_{t−1} + U x_t (Q orthogonal), ‖∂L/∂h_t‖ = ρ^(T−1−t) ‖∂L/∂h_{T−1}‖ exactly."""
    T = 20
    cfg = RunConfig(
        dataset="adding",
        seq_len=T,
        model="rnn",
        activation="linear",
        depth=1,
        width=16,
        init="orthogonal",
        init_gain=rho,
        loss="mse",
        max_steps=1,
        batch_size=32,
    )
    norms = step0_bptt(train.run(cfg, progress_bar=False).run_id)
    assert len(norms) == T
    expected = norms[-1] * rho ** np.arange(T - 1, -1, -1)
    np.testing.assert_allclose(norms, expected, rtol=2e-4)


def _zero_lstm(forget_bias: float) -> Recurrent:
    net = Recurrent((5, 3), 1, cell="lstm", depth=1, width=4, activation="tanh", norm="none")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layers[0].rnn.bias_ih_l0[4:8] = forget_bias  # PyTorch's gate order: input, forget, cell, output
    return net


@pytest.mark.parametrize(("bias", "saturated"), [(0.0, 0.0), (5.0, 1.0), (-5.0, 1.0), (4.0, 0.0)])
def test_forget_gate_statistics_on_a_hand_checked_lstm(bias: float, saturated: float) -> None:
    """With every weight zero the forget gate is σ(bias) everywhere: σ(±5) is saturated, σ(4) = 0.982 is not."""
    net = _zero_lstm(bias)
    layer = net.layers[0]
    layer.keep_sequence = True
    net(torch.randn(7, 5, 3))
    mean, share = gate_stats(layer.replay(*layer.kept).gate).tolist()
    assert mean == pytest.approx(1 / (1 + np.exp(-bias)), rel=1e-6)
    assert share == saturated


def test_temporal_order_labels_follow_the_two_relevant_symbols() -> None:
    x, y = temporal_order(500, 30, np.random.default_rng(1))
    symbols = x.argmax(-1)
    for row, label in zip(symbols, y):
        relevant = np.flatnonzero(row >= 4)
        assert len(relevant) == 2
        assert 3 <= relevant[0] < 6 and 15 <= relevant[1] < 18  # [10 %, 20 %) and [50 %, 60 %) of 30
        assert label == 2 * (row[relevant[0]] - 4) + (row[relevant[1]] - 4)
    _, yt, _, _ = load_temporal_order("", 30)
    assert np.allclose(np.bincount(yt) / len(yt), 0.25, atol=0.02)  # balanced: chance is 25 %


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("init", ["normal", "orthogonal", "torch_default"])
def test_the_forget_gate_bias_is_forget_bias_after_init(value: float, init: str) -> None:
    """b_if + b_hf (PyTorch's gate order i, f, g, o) equals forget_bias; the other gates' biases are the init's."""
    cfg = RunConfig(model="lstm", dataset="adding", loss="mse", depth=2, width=5, init=init, forget_bias=value)
    _, lit = train.build(cfg)
    for layer in lit.net.layers:
        rnn = layer.rnn
        total = rnn.bias_ih_l0 + rnn.bias_hh_l0
        assert torch.equal(total[5:10], torch.full((5,), value))
        if init != "torch_default":  # the init zeroes every other bias
            assert torch.count_nonzero(torch.cat([total[:5], total[10:]])) == 0


def _lstm_state_gradient_ratio(forget_bias: float, steps: int = 100) -> float:
    """‖∂L/∂h_0‖ / ‖∂L/∂h_T−1‖ of a fresh LSTM on one adding batch, by autograd through the step-by-step cell."""
    cfg = RunConfig(
        model="lstm",
        dataset="adding",
        loss="mse",
        depth=1,
        width=64,
        init="orthogonal",
        seq_len=steps,
        batch_size=64,
        forget_bias=forget_bias,
    )
    data, lit = train.build(cfg)
    x, y = next(iter(data.train_dataloader()))
    rnn = lit.net.layers[0].rnn.double()
    hidden, states = None, []
    for t in range(steps):
        out, (h, c) = rnn(x[:, t : t + 1].double(), hidden)
        states.append(out[:, 0])
        hidden = (states[-1][None], c)
    loss = lit.net.readout.double()(lit.net.layers[0].norm.double()(states[-1])).sub(y.double()).square().mean()
    first, last = torch.autograd.grad(loss, [states[0], states[-1]])
    return (first.norm() / last.norm()).item()


def test_a_forget_bias_of_one_keeps_the_gradient_through_time_alive() -> None:
    """At T = 100 the ratio ‖∂L/∂h_0‖/‖∂L/∂h_T‖ is orders of magnitude larger with forget_bias 1 than with 0."""
    without, with_bias = _lstm_state_gradient_ratio(0.0), _lstm_state_gradient_ratio(1.0)
    assert 0 < without < 1e-8
    assert with_bias > 1e4 * without
