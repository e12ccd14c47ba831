"""The gradient side of the loss: a sigmoid output with MSE against cross-entropy."""

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
)
from analysis.summary import select


@figure(
    title="The gradient side of the loss: sigmoid + MSE vs sigmoid + cross-entropy",
    caption=(
        "Binary classification with one sigmoid output (breast_cancer): the training loss relative to its value "
        "at step 0 (top) and the norm of the readout's weight gradient (bottom, grad/l2/out), median and "
        "interquartile band over runs of each run's rolling median over 5 logged steps, "
        "a column per hidden activation; dashed lines start from a larger "
        "init_gain, so the output starts saturated. With MSE on σ(z) the output delta is (σ − y)·σ′(z): "
        "when the unit saturates on the wrong side σ′ ≈ 0 and learning crawls (the learning slowdown); "
        "cross-entropy cancels σ′, its delta is σ − y, largest exactly when the output is most wrong."
    ),
    needs=Needs("breast_cancer runs with both the bce and the mse loss"),
)
def output_gradient(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Sigmoid output with cross-entropy vs MSE: loss relative to step 0 and the readout's gradient norm."""
    chosen = runs[(runs["dataset"] == "breast_cancer") & runs["loss"].isin(["bce", "mse"])]
    if chosen["loss"].nunique() < 2:
        return None
    loss = select(stats, "train", "loss").merge(chosen[["run_id", "loss", "init_gain", "activation"]], on="run_id")
    grad = select(stats, "grad", "l2")
    grad = grad[grad["layer"] == "out"].merge(chosen[["run_id", "loss", "init_gain", "activation"]], on="run_id")
    if loss.empty or grad.empty:
        return None
    first = loss.sort_values("step").groupby("run_id")["value"].transform("first")
    loss = loss.assign(value=loss["value"] / first)
    activations = sorted(chosen["activation"].dropna().unique())
    fig, axes = new_figure(2, len(activations), width=4.4, height=3.1, sharex=True)
    gains = sorted(chosen["init_gain"].dropna().unique())
    dashes = {g: "" if g == min(gains) else (4, 1.5) for g in gains}
    for col, activation in enumerate(activations):
        for row, (rows, ylabel) in enumerate(
            ((loss, "training loss / its value at step 0"), (grad, "‖∂L/∂W_out‖ (grad/l2/out)"))
        ):
            ax = axes[row, col]
            for (name, gain), group in rows[rows["activation"] == activation].groupby(["loss", "init_gain"]):
                group = group[np.isfinite(group["value"]) & (group["value"] > 0)]
                if not group.empty:
                    median_line(ax, group, LOSS_COLORS.get(name, GREY), dashes[gain])
            ax.set(yscale="log", ylabel=ylabel if col == 0 else "")
            plain_log_ticks(ax.yaxis)
        axes[0, col].set_title(f"{activation} hidden units")
        axes[1, col].set_xlabel("training step")
    handles = [
        Line2D([], [], color=LOSS_COLORS[n], lw=2, label=t)
        for n, t in (("bce", "sigmoid + cross-entropy (bce)"), ("mse", "sigmoid + MSE"))
    ]
    handles += [
        Line2D([], [], color="0.3", lw=1.5, label=f"init_gain {g:g}", **({"dashes": d} if d else {}))
        for g, d in dashes.items()
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="loss · init\n(median, IQR)")
    fig.suptitle("The gradient side of the loss: sigmoid output with MSE learns slowly when saturated")
    return fig
