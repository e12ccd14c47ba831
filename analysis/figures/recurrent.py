"""Figures of recurrent nets: the gradient through time and the cells' loss by sequence length."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import load, theory
from analysis.figures.registry import Needs, figure
from analysis.figures.style import (
    CELL_COLORS,
    color_or_grey,
    facet_axes,
    new_figure,
    plain_log_ticks,
)
from analysis.summary import RECURRENT, select, value

# ----------------------------------------------------------------------------------- BPTT


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    """run_id, model, the legend's cell label and line style: LSTM runs of several forget_bias values apart
    ("lstm, forget bias 1", largest solid), every other run by its model."""
    bias = pd.to_numeric(runs.get("forget_bias", pd.Series(np.nan, runs.index)), errors="coerce")
    bias = bias.where(runs["model"] == "lstm")
    dashes = dict(zip(sorted(set(bias.dropna()), reverse=True), ("-", "--", ":", "-.")))
    apart = len(dashes) > 1
    label = runs["model"].where(bias.isna() | (not apart), bias.map(lambda b: f"lstm, forget bias {b:g}"))
    order = runs["model"].map({c: i for i, c in enumerate(CELL_COLORS)}).fillna(len(CELL_COLORS))
    ls = bias.map(lambda b: dashes.get(b, "-") if apart else "-").fillna("-")
    return runs[["run_id", "model"]].assign(cell=label, ls=ls, order=order)


@figure(
    title="Gradients through time (recurrent nets)",
    caption=(
        "‖∂L/∂h_t‖ against the time step t for each RNN/LSTM/GRU run (first recurrent layer), at initialization "
        "and at the last logged step, log scale. The loss reads the last step, so the curve is the gradient "
        "travelling back in time: Pascanu et al. (2013) bound its decay per step by λ·γ (largest singular "
        "value of W_hh times sup|φ′|), so a tanh RNN's curve falls exponentially towards t = 0, while the "
        "LSTM's and GRU's additive memory keeps it flat enough to learn the adding problem's long lags "
        "(Hochreiter &amp; Schmidhuber 1997)."
    ),
    needs=Needs("runs with per-time-step BPTT norms", "recurrent"),
)
def bptt(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖∂L/∂h_t‖ against t for RNN/LSTM/GRU (first recurrent layer) at initialization and at the end, log y."""
    rows = load.bptt_by_time(stats)
    rows = rows[(rows["layer"] == "L000") & np.isfinite(rows["value"]) & (rows["value"] > 0)]
    rows = rows.merge(_cells(runs), on="run_id")
    if rows.empty:
        return None
    last = rows.groupby("run_id")["step"].transform("max")
    fig, axes = new_figure(1, 2, width=5.0, height=3.8, sharey=True)
    for ax, (title, mask) in zip(
        axes[0], (("at initialization (step 0)", rows["step"] == 0), ("at the last logged step", rows["step"] == last))
    ):
        for (model, ls, _), line in rows[mask].sort_values("t").groupby(["model", "ls", "run_id"]):
            ax.plot(line["t"], line["value"], color=color_or_grey(CELL_COLORS, model), ls=ls, lw=1.3, alpha=0.85)
        ax.set(
            yscale="log",
            title=title,
            xlabel="time step t (the loss reads the last step)",
            ylabel="‖∂L/∂h_t‖ (L2 over batch)",
        )
        plain_log_ticks(ax.yaxis)
    cells = rows.drop_duplicates("cell").sort_values(["order", "cell"])
    handles = [
        Line2D([], [], color=color_or_grey(CELL_COLORS, c.model), ls=c.ls, lw=2, label=c.cell)
        for c in cells.itertuples()
    ]
    fig.legend(handles=handles, loc="outside right center", title="cell")
    fig.suptitle("Gradient through time: recurrent cells")
    return fig


# ------------------------------------------------------------------ recurrent cells by length


def _loss_rows(runs: pd.DataFrame, stats: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Validation loss rows when every run has at least three, else training loss rows; and the name shown."""
    val = select(stats, "val", "loss")
    val = val[val["run_id"].isin(runs["run_id"])]
    if not val.empty and val.groupby("run_id").size().reindex(runs["run_id"]).fillna(0).min() >= 3:
        return val, "validation loss"
    train = select(stats, "train", "loss")
    return train[train["run_id"].isin(runs["run_id"])], "training loss"


def _clip_style(run: dict) -> str:
    return "-" if value(run, "clip", "none") == "none" else "--"


@figure(
    title="Recurrent cells by sequence length",
    caption=(
        "The loss of every RNN/LSTM/GRU run against the training step, one panel per sequence length "
        "(validation loss when every run was validated at least three times, else training loss); solid lines "
        "trained without clipping, dashed with it, × where a run diverged. On the adding problem the dotted line "
        "is the trivial baseline, always predicting the mean: MSE = Var(U₁ + U₂) = 1/6. Hochreiter &amp; "
        "Schmidhuber (1997): a tanh RNN stays at the baseline once the lag is long (its gradient through time "
        "vanishes, see the figure above), while the LSTM and GRU fall far below it; at short lengths all three "
        "learn."
    ),
    needs=Needs("runs with loss records", "recurrent"),
)
def recurrent_curves(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Loss against step for RNN vs LSTM vs GRU, one panel per sequence length, with the adding baseline."""
    recurrent = runs[runs["model"].isin(RECURRENT)]
    if recurrent.empty:
        return None
    rows, loss_name = _loss_rows(recurrent, stats)
    rows = rows[np.isfinite(rows["value"])]
    if rows.empty:
        return None
    lengths = sorted({int(v) for v in pd.to_numeric(recurrent["seq_len"], errors="coerce").dropna()})
    fig, axes = facet_axes([f"seq_len {n}" for n in lengths] or ["runs"], ncols=3, width=4.2, height=3.4, sharey=True)
    by_run = {run_id: group.sort_values("step") for run_id, group in rows.groupby("run_id")}
    # The scale comes from the runs that stayed finite: a diverging run's last losses (1e30 and up) would
    # flatten every other curve; it is drawn up to the top edge, with its × there.
    diverged = set(recurrent.loc[recurrent["outcome"] == "diverged", "run_id"])
    calm = rows[~rows["run_id"].isin(diverged) & (rows["value"] > 0)]["value"]
    top = float(calm.max()) * 5 if not calm.empty else None
    for run in recurrent.to_dict("records"):
        line = by_run.get(run["run_id"])
        if line is None:
            continue
        ax = axes[f"seq_len {int(float(run['seq_len']))}"] if lengths else axes["runs"]
        color = color_or_grey(CELL_COLORS, run["model"])
        ax.plot(line["step"], line["value"], color=color, ls=_clip_style(run), lw=1.4, alpha=0.85)
        if run["run_id"] in diverged:
            y = min(line["value"].iloc[-1], top) if top else line["value"].iloc[-1]
            ax.plot(line["step"].iloc[-1], y, marker="x", color=color, ms=8, mew=2, clip_on=False)
    adding = (recurrent["dataset"] == "adding").any() and (recurrent["loss"] == "mse").any()
    for name, ax in axes.items():
        ax.set(yscale="log", title=name, xlabel="training step")
        if top is not None:
            ax.set_ylim(top=top)
        if adding:
            ax.axhline(theory.ADDING_BASELINE_MSE, color="0.3", ls=":", lw=1.0)
            # Below the line at the left: early in training every curve sits above the baseline.
            ax.text(
                0.02,
                theory.ADDING_BASELINE_MSE * 0.93,
                "predict the mean (MSE 1/6)",
                fontsize="x-small",
                ha="left",
                va="top",
                transform=ax.get_yaxis_transform(),
            )
        plain_log_ticks(ax.yaxis)
    next(iter(axes.values())).set_ylabel(loss_name)
    cells = [c for c in CELL_COLORS if c in set(recurrent["model"])]
    handles = [Line2D([], [], color=CELL_COLORS[c], lw=2, label=c) for c in cells]
    handles += [
        Line2D([], [], color="0.3", ls="-", label="no clipping"),
        Line2D([], [], color="0.3", ls="--", label="clipped"),
    ]
    if diverged:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", mew=2, label="diverged"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="cell · clipping")
    fig.suptitle("Recurrent cells by sequence length: who learns the long lag")
    return fig
