"""The loss-gradient figures from real tiny runs: sigmoid + MSE vs cross-entropy, and the two GAN generator losses."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import figures, load
from pipelines.config import RunConfig
from pipelines.train import run

pytestmark = pytest.mark.slow


def trained(configs: list[RunConfig]) -> load.StudyData:
    """Train each config as an MLflow run and read them back through the one loader."""
    ids = [run(cfg, progress_bar=False).run_id for cfg in configs]
    runs = load.runs(run_ids=ids, role=None)
    return load.StudyData("test", runs, load.stats(runs), None)


def lines(fig: Figure) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) > 1]


def test_output_gradient_shows_the_sigmoid_mse_slowdown(tracking: str) -> None:
    base = dict(
        dataset="breast_cancer",
        depth=2,
        width=16,
        activation="relu",
        init="xavier_normal",
        lr=0.1,
        batch_size=64,
        max_steps=12,
        log_every=2,
        metric_points=0,
    )
    data = trained([RunConfig(loss=loss, init_gain=gain, **base) for loss in ("bce", "mse") for gain in (1.0, 3.0)])
    fig = figures.output_gradient(data.runs, data.stats)
    assert isinstance(fig, Figure) and "MSE" in fig.get_suptitle()
    assert len(lines(fig)) == 8  # 2 losses × 2 gains × (relative loss, readout gradient)
    # What the figure shows, checked on the data: from a saturated output (gain 3) the readout gradient at
    # step 0 is far larger with cross-entropy than with MSE, whose delta carries σ′(z) ≈ 0.
    grad = data.stats[(data.stats["family"] == "grad") & (data.stats["layer"] == "out") & (data.stats["stat"] == "l2")]
    step0 = grad[grad["step"] == 0].merge(data.runs[["run_id", "loss", "init_gain"]], on="run_id")
    saturated = step0[step0["init_gain"] == 3.0].set_index("loss")["value"]
    assert saturated["bce"] > 5 * saturated["mse"]
    assert figures.output_gradient(data.runs[data.runs["loss"] == "bce"], data.stats) is None  # needs both losses


def test_gan_gradient_compares_the_generator_losses(tracking: str) -> None:
    base = dict(
        dataset="gmm",
        model="mlp",
        activation="relu",
        depth=2,
        width=16,
        latent_dim=4,
        d_steps=3,
        optimizer="adam",
        lr=0.003,
        batch_size=64,
        max_steps=10,
        log_every=2,
        metric_points=0,
    )
    data = trained([RunConfig(loss=loss, **base) for loss in ("gan_saturating", "gan_nonsaturating")])
    fig = figures.gan_gradient(data.runs, data.stats)
    assert isinstance(fig, Figure)
    assert len(lines(fig)) == 4  # two losses × (readout gradient, D(G(z)))
    legend = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert any(t.startswith("saturating") for t in legend) and any(t.startswith("non-saturating") for t in legend)
    d_fake = data.stats[(data.stats["family"] == "gan") & (data.stats["stat"] == "d_fake")]["value"]
    assert len(d_fake) and np.all((d_fake > 0) & (d_fake < 1))
    assert figures.gan_gradient(data.runs.assign(loss="ce"), data.stats) is None
