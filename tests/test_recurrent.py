"""Gradients through time: the recorded ‖∂loss/∂h_t‖ against closed forms, gate statistics, the tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from models.recurrent import Recurrent
from pipelines import train
from pipelines.config import RunConfig
from pipelines.data import load_temporal_order, temporal_order
from pipelines.keys import time_of
from pipelines.recorder import STATS_ARTIFACT
from pipelines.stats import gate_stats


def step0_bptt(run_id: str) -> np.ndarray:
    table = pd.read_parquet(MlflowClient().download_artifacts(run_id, STATS_ARTIFACT))
    rows = table[(table.step == 0) & (table.family == "bptt") & (table.layer == "L000")]
    rows = rows[rows.stat.map(time_of).notna()]
    return rows.assign(t=rows.stat.map(time_of)).sort_values("t")["value"].to_numpy()


@pytest.mark.parametrize("rho", [0.9, 1.1])
def test_linear_rnn_gradient_through_time_is_rho_to_the_lag(rho: float, tracking: str) -> None:
    """With h_t = ρQ h_{t−1} + U x_t (Q orthogonal), ‖∂L/∂h_t‖ = ρ^(T−1−t) ‖∂L/∂h_{T−1}‖ exactly."""
    T = 20
    cfg = RunConfig(dataset="adding", seq_len=T, model="rnn", activation="linear", depth=1, width=16,
                    init="orthogonal", init_gain=rho, loss="mse", max_steps=1, batch_size=32)  # fmt: skip
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
