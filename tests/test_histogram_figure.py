"""The histogram figure draws from a real recorded table: a small net trained with the probe, histograms to parquet."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import histogram_figure
from gradprobe import Probe
from gradprobe import histogram as H
from gradprobe.sinks import ParquetSink

LAYERS = ["body.0", "body.2", "head"]  # the probe's layer ids: qualified module names
STEPS = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _train_and_record(path) -> list[list[np.ndarray]]:
    """SGD steps with the plain probe API (histograms on, into a ParquetSink); each step's gradients kept here."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.body[0].bias.fill_(-50.0)  # dead ReLUs: body.0 and body.2 get exact zero gradients, the head only its bias
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    probe = Probe(net, log_every=1, sink=ParquetSink(path), histograms=True)
    kept = []
    for step in range(STEPS):
        x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
        probe.begin(step)
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        if step == STEPS - 1:
            net.head.weight.grad[0, :2] = torch.tensor([float("nan"), float("inf")])
        kept.append([w.grad.numpy().copy() for w in (net.body[0].weight, net.body[2].weight, net.head.weight)])
        with pytest.warns(RuntimeWarning) if step == STEPS - 1 else contextlib.nullcontext():
            probe.gradients(loss)
        optimizer.step()
        probe.end()
    probe.close()  # writes the parquet file
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
        drawn = ax.collections[0].get_array().filled(0.0).reshape(STEPS, -1)
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


# -- the lab: a run with histograms="on" records them, and its trial logs their figure ------------------


@pytest.mark.parametrize("histograms", ["on", "off"])
def test_a_lab_run_records_histograms_and_logs_their_figure_only_when_asked(
    tracking: str, tiny_cfg, tmp_path, histograms: str
) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines import memory, train
    from studies import ui

    cfg = tiny_cfg.replace(histograms=histograms, log_every=2)
    client = MlflowClient()
    tables = []

    def trial_hook(run_id: str, table: pd.DataFrame) -> None:  # what a study's objective passes to train.run
        tables.append(table)
        ui.log_trial_figure(client, run_id, table, "trial 0")

    train.run(cfg, on_recorded=trial_hook, progress_bar=False)
    (run,) = client.search_runs(["0"])
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert "figures/gradient_profile.png" in figures  # the trial path ran either way
    path = client.download_artifacts(run.info.run_id, "stats/gradient_stats.parquet", str(tmp_path))
    stored, hist = pd.read_parquet(path), tables[0][tables[0]["family"].astype(str) == "hist"]
    assert len(stored[stored["family"].astype(str) == "hist"]) == len(hist)
    if histograms == "off":
        assert hist.empty and histogram_figure.ARTIFACT not in figures
        return
    assert histogram_figure.ARTIFACT in figures
    # Each layer's counts at each logging step add up to its weight's entries: digits' 64 inputs, 10 classes.
    sizes = {"L000": 64 * 16, "L001": 16 * 16, "L002": 16 * 16, "out": 16 * 10}
    totals = hist.groupby(["step", "layer"], observed=True)["value"].sum()
    grad_steps = tables[0].loc[tables[0]["family"].astype(str) == "grad", "step"].unique()
    assert sorted(totals.index.get_level_values("step").unique()) == sorted(grad_steps)  # every logging step
    assert {layer: total for (_, layer), total in totals.items()} == sizes
    assert set(hist["stat"].astype(str)) == set(H.STATS)
    # The memory estimate grows by these rows (here its records count, ⌈6 / 2⌉ + 1, is exact: 0, 2, 4 and 5).
    grown = memory.estimate(cfg).statistics - memory.estimate(cfg.replace(histograms="off")).statistics
    assert grown == len(hist) * memory.BYTES_PER_STAT
