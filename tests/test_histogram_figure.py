"""The histogram figure draws from a real recorded table: a small net trained by hand, histograms to parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis import histogram_figure
from gradprobe import histogram as H
from gradprobe.sinks import ParquetSink

LAYERS = ["L000", "L001", "out"]  # TODO(after core merge): the qualified names body.0, body.2, head


def _train_and_record(path) -> list[list[np.ndarray]]:
    """Four SGD steps; each step's gradients recorded through the histogram and a ParquetSink, and kept here."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    head = nn.Linear(16, 3)
    with torch.no_grad():
        body[0].bias.fill_(-50.0)  # dead ReLUs: body.0 and body.2 get exact zero gradients, the head only its bias
    weights = [body[0].weight, body[2].weight, head.weight]
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    sink = ParquetSink(path)
    kept = []
    for step in range(4):
        x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(body(x)), y).backward()
        grads = [w.grad for w in weights]
        if step == 2:
            grads[2] = grads[2].clone()
            grads[2][0, :2] = torch.tensor([float("nan"), float("inf")])
        kept.append([g.numpy().copy() for g in grads])
        sink(step, H.histogram_keys(LAYERS), H.histograms(grads).reshape(-1).tolist())
        optimizer.step()
    sink.close()
    return kept


def _shares(g: np.ndarray) -> np.ndarray:
    """One layer's shares per interior bin, from log10|g| with numpy (independent of the probe's binning)."""
    a = np.abs(g.ravel()).astype(np.float64)
    nonzero = a[np.isfinite(a) & (a > 0)]
    counts, _ = np.histogram(np.log10(nonzero), bins=np.asarray(H.EDGES))
    return counts / a.size


def test_figure_shows_every_layers_histograms_over_steps(tmp_path) -> None:
    kept = _train_and_record(tmp_path / "stats.parquet")
    table = pd.read_parquet(tmp_path / "stats.parquet")
    fig = histogram_figure.draw(table, title="tiny")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == LAYERS
    for ax, layer in zip(panels, range(len(LAYERS))):
        drawn = ax.collections[0].get_array().filled(0.0).reshape(4, -1)
        expected = np.stack([_shares(step[layer]) for step in kept])
        np.testing.assert_allclose(drawn, expected, atol=1e-12)
    assert "zeros 100%" in panels[0].get_title()  # dead ReLU units: every entry of the first weight's gradient is 0
    assert "non-finite" in panels[2].get_title() and "non-finite" not in panels[1].get_title()
    fig.savefig(tmp_path / "h.png")


def test_no_histograms_no_figure() -> None:
    table = pd.DataFrame({"step": [0], "layer": ["L000"], "family": ["grad"], "stat": ["l2"], "value": [1.0]})
    assert histogram_figure.draw(table) is None


def test_a_deep_net_shows_its_first_and_last_layers() -> None:
    layers = [f"blocks.{i}" for i in range(30)]
    assert histogram_figure.pick_layers(layers, 4) == ["blocks.0", "blocks.1", "blocks.28", "blocks.29"]
