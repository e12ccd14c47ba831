"""GAN generator losses when the discriminator wins: saturating against non-saturating."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figures.registry import Needs, figure
from analysis.figures.style import (
    GREY,
    LOSS_COLORS,
    median_line,
    new_figure,
    plain_log_ticks,
    plural,
)
from analysis.summary import select


@figure(
    title="GAN generator losses when the discriminator wins",
    caption=(
        "A GAN on a ring of Gaussians with the discriminator stepped several times per generator step, so it "
        "wins early (right: D(G(z)), the mean probability it gives to fakes, gan/d_fake). Left: the norm of the "
        "generator's output-layer weight gradient (grad/l2/out), median and interquartile band over seeds "
        "(each run smoothed by a rolling median over 5 logged steps). "
        "Goodfellow et al. (2014): the saturating loss log(1 − D(G(z))) has ∂/∂logit = −D(G(z)), which "
        "vanishes when D rejects the fakes confidently; the non-saturating −log D(G(z)) has −(1 − D(G(z))), "
        "largest exactly then."
    ),
    needs=Needs("runs with the generator's readout gradient", "gan"),
)
def gan_gradient(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Saturating vs non-saturating generator loss: the generator's readout gradient and D(G(z)) over steps."""
    chosen = runs[runs["loss"].isin(["gan_saturating", "gan_nonsaturating"])]
    if chosen.empty:
        return None
    info = chosen[["run_id", "loss"]]
    grad = select(stats, "grad", "l2")
    grad = grad[grad["layer"] == "out"].merge(info, on="run_id")
    d_fake = select(stats, "gan", "d_fake").merge(info, on="run_id")
    if grad.empty:
        return None
    fig, axes = new_figure(1, 2, width=4.8, height=3.6)
    left, right = axes[0]
    for name, group in grad.groupby("loss"):
        median_line(left, group[np.isfinite(group["value"]) & (group["value"] > 0)], LOSS_COLORS.get(name, GREY))
    for name, group in d_fake.groupby("loss"):
        median_line(right, group[np.isfinite(group["value"])], LOSS_COLORS.get(name, GREY))
    left.set(
        yscale="log",
        xlabel="training step",
        ylabel="generator ‖∂L_G/∂W_out‖ (grad/l2/out)",
        title="the generator's output-layer gradient",
    )
    plain_log_ticks(left.yaxis)
    right.set(
        yscale="log",
        xlabel="training step",
        ylabel="D(G(z)) (gan/d_fake, mean probability)",
        title="how surely the discriminator rejects fakes",
    )
    plain_log_ticks(right.yaxis)
    counts = info["loss"].value_counts()
    handles = [
        Line2D([], [], color=LOSS_COLORS[n], lw=2, label=f"{t} ({plural(int(counts[n]), 'run')})")
        for n, t in (
            ("gan_saturating", "saturating: min log(1 − D(G(z)))"),
            ("gan_nonsaturating", "non-saturating: min −log D(G(z))"),
        )
        if n in counts
    ]
    fig.legend(handles=handles, loc="outside lower center", fontsize="small", ncols=2, title="generator loss")
    fig.suptitle("GAN generator losses when the discriminator wins")
    return fig
