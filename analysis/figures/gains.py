"""Figures of the gradient's gain by layer at initialization: measured, predicted, and over training."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis import load, summary
from analysis.figures.common import arch_order, non_recurrent
from analysis.figures.registry import Needs, figure
from analysis.figures.style import (
    ACTIVATION_COLORS,
    HEATMAP_CMAP,
    INIT_MARKERS,
    OUTCOME_COLORS,
    THEORY_MARKERS,
    activation_init_handles,
    color_or_grey,
    facet_axes,
    new_figure,
    plain_log_ticks,
    plural,
    whole_ticks,
)
from analysis.summary import arch, label, select, value

# ------------------------------------------------------------------------- backprop by layer

# What the step-0 gradient depends on (not the optimizer or clipping): runs equal in these share one line.
STEP0_CONFIG = (
    "dataset",
    "loss",
    "model",
    "norm",
    "activation",
    "init",
    "init_gain",
    "res_scale",
    "depth",
    "width",
    "batch_size",
    "seed",
)


def _one_per_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop_duplicates(subset=list(STEP0_CONFIG))


@figure(
    title="Back-propagated gradient by layer at initialization",
    caption=(
        "‖∂L/∂x_l‖ (backprop/l2/&lt;layer&gt; at step 0, L2 norm over the batch) for each hidden layer, one solid "
        "line per configuration (runs that differ only in optimizer or clipping share step 0, so one is drawn). "
        "Lines falling towards the input (left) are vanishing gradients, rising ones exploding. The dotted line "
        "of the same colour is the mean-field prediction, anchored at the last hidden layer's measurement and "
        "multiplied inwards by theory's per-layer factor: √χ₁(q_l) = √(σ_w²·E[φ′(h)²]) along the forward "
        "variance trajectory for plain networks (flat for ReLU with He init; about ¼ per layer for sigmoid), "
        "√rate of Yang et al. (2019) for batch norm (explodes towards the input: ≈ √(π/(π−1)) per layer for "
        "ReLU), √(1+α²χ₁) per residual block. No dotted line where theory has no closed form (tanh/sigmoid "
        "residual nets, layer norm, CNNs). Residual ReLU blocks x + α·relu(Wx) at α = 1 grow faster than their "
        "dotted line (about 1.6 per block at width 64 against √2): mean field assumes the backward pass meets "
        "weights independent of the forward pass (gradient independence), but here the stream accumulates a "
        "positive mean, so which units are on is set largely by W's own row sums, and the backward factor "
        "I + α·Wᵀ·D meets W through the mask D it chose. Replacing W by an independent copy in the backward "
        "pass recovers √2. At α ≈ 1/√depth the excess per block is small but compounds: tens of percent over 48 "
        "blocks, mostly on the input side where the stream's mean is largest."
    ),
    needs=Needs("runs with at least two hidden layers measured at step 0", "non-recurrent"),
)
def backprop_by_layer(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖∂L/∂x_l‖ at step 0 by layer, a line per configuration, with the mean-field line anchored at the output side."""
    norms = summary.step0_backprop(stats)
    chosen = _one_per_configuration(non_recurrent(runs))
    chosen = chosen[chosen["run_id"].isin(norms.groupby("run_id").size().loc[lambda n: n >= 2].index)]
    if chosen.empty:
        return None
    m2 = summary.first_layer_m2(stats)
    # y is not shared: a plain sigmoid net spans twenty decades, a batch-norm net's explosion one or two.
    fig, axes = facet_axes(arch_order(chosen), width=4.6, height=3.8)
    by_run = dict(tuple(norms.groupby("run_id")))
    drew_theory = False
    for run in chosen.to_dict("records"):
        rows = by_run[run["run_id"]]
        x, y = rows["layer_index"].to_numpy(), rows["value"].to_numpy()
        ax, color = axes[arch(run)], color_or_grey(ACTIVATION_COLORS, value(run, "activation"))
        ax.plot(x, y, color=color, marker=INIT_MARKERS.get(value(run, "init"), "o"), ms=4, lw=1.4, alpha=0.9)
        predicted = summary.theory_profile(run, y, float(m2.get(run["run_id"], math.nan)))
        if np.isfinite(predicted).all():
            ax.plot(x, predicted, color=color, ls=":", lw=1.6)
            drew_theory = True
    for name, ax in axes.items():
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        ax.set_title(name)
        ax.set_xlabel("hidden layer index l (0 = input side)")
        whole_ticks(ax.xaxis)
        ax.set_ylabel("‖∂L/∂x_l‖ at step 0 (L2 over batch)")
    handles = activation_init_handles(chosen)
    handles += [Line2D([], [], color="0.3", lw=1.4, label="measured")]
    if drew_theory:
        handles += [Line2D([], [], color="0.3", ls=":", lw=1.6, label="theory (anchored at\nlast hidden layer)")]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Back-propagated gradient norm at initialization, by layer")
    return fig


# ------------------------------------------------------------------ measured vs predicted gain


@figure(
    title="Measured vs predicted per-layer gain",
    caption=(
        "Each point is one run: the measured per-layer gain (geometric mean of ‖∂L/∂x_{l−1}‖/‖∂L/∂x_l‖ over the "
        "hidden layers at step 0, theory.measured_gain) against theory's prediction for the same layers "
        "(marker = which closed form). Points on the dashed y = x line agree with mean-field theory; the green "
        "band is the healthy range of the verdict. Expect agreement within a few percent for wide plain "
        "networks; batch-norm predictions assume infinite width and are looser at width 32–64, and residual ReLU "
        "nets at α = 1 measure above their prediction (see the previous figure: gradient independence fails). "
        "Runs without a closed-form prediction (NaN) are counted in the legend but not drawn."
    ),
    needs=Needs(
        "runs whose architecture has a closed-form prediction (plain MLP, batch-norm MLP, ReLU residual MLP)",
        "non-recurrent",
    ),
)
def gain_scatter(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Measured vs predicted per-layer gain at step 0, one point per run, with y = x and the healthy band."""
    gains = runs[np.isfinite(runs["measured_gain"]) & (runs["measured_gain"] > 0)]
    shown = gains[np.isfinite(gains["predicted_gain"])]
    if shown.empty:
        return None
    fig, axes = new_figure(width=6.2, height=5.0)
    ax = axes[0, 0]
    values = np.concatenate([shown["measured_gain"], shown["predicted_gain"]])
    lo, hi = values.min() / 1.25, values.max() * 1.25
    tol = summary.VERDICT_TOLERANCE
    ax.axhspan(1 - tol, 1 + tol, color=OUTCOME_COLORS["trained"], alpha=0.15, lw=0)
    ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1)
    for (activation, rule), group in shown.groupby(["activation", "theory"], dropna=False):
        ax.scatter(
            group["predicted_gain"],
            group["measured_gain"],
            s=42,
            alpha=0.85,
            edgecolor="white",
            linewidth=0.5,
            color=color_or_grey(ACTIVATION_COLORS, activation),
            marker=THEORY_MARKERS.get(rule, "o"),
        )
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    plain_log_ticks(ax.xaxis, max_span=math.inf)
    plain_log_ticks(ax.yaxis, max_span=math.inf)
    ax.set_xlabel("predicted gain per layer (theory)")
    ax.set_ylabel("measured gain per layer at step 0\n(geometric mean of ‖∂L/∂x(l−1)‖ / ‖∂L/∂x(l)‖)")
    fig.suptitle("Per-layer gradient gain at initialization: measured vs theory")
    acts = [a for a in ACTIVATION_COLORS if a in set(shown["activation"])]
    counts = shown["activation"].value_counts()  # points of equal gains overlap: the legend counts them
    handles = [
        Line2D([], [], color=ACTIVATION_COLORS[a], marker="o", ls="", label=f"{a} ({plural(int(counts[a]), 'run')})")
        for a in acts
    ]
    handles += [
        Line2D([], [], color="0.3", marker=THEORY_MARKERS[t], ls="", label=t)
        for t in THEORY_MARKERS
        if t in set(shown["theory"])
    ]
    handles.append(Line2D([], [], color="0.3", ls="--", label="y = x"))
    if lo < 1 + tol and hi > 1 - tol:  # the band is in view
        handles.append(Patch(color=OUTCOME_COLORS["trained"], alpha=0.3, label=f"healthy: 1 ± {tol:g}"))
    missing = len(gains) - len(shown)
    if missing:
        text = f"{plural(missing, 'run')} with no closed-form\nprediction: not shown"
        handles.append(Line2D([], [], ls="", label=text))
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    return fig


# ------------------------------------------------------------------ layer × step heatmaps


def pick_runs(runs: pd.DataFrame, stats: pd.DataFrame, max_runs: int = 6) -> list[str]:
    """Runs spread over the range of measured gains, most vanishing to most exploding (diverged ones included)."""
    gains = summary.annotate(runs, stats)
    have = set(select(stats, "grad", "l2")["run_id"])
    gains = gains[gains["run_id"].isin(have)].sort_values("measured_gain", na_position="last")
    if len(gains) <= max_runs:
        return gains["run_id"].tolist()
    positions = np.unique(np.linspace(0, len(gains) - 1, max_runs).round().astype(int))
    return gains["run_id"].iloc[positions].tolist()


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; the outer cells as wide as their neighbours)."""
    if centers.size == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mid[0]], mid, [2 * centers[-1] - mid[-1]]])


@figure(
    title="Weight-gradient norm by layer and step",
    caption=(
        "log₁₀ ‖∂L/∂W_l‖ (grad/l2/&lt;layer&gt;) for a few runs spread from the most vanishing to the most "
        "exploding measured gain, one shared colour scale. A dark band at the bottom (input side) that stays "
        "dark is a vanishing gradient that training does not repair (Glorot &amp; Bengio 2010: for sigmoid the "
        "back-propagated signal shrinks while weight gradients can stay flatter); a bright bottom is explosion. "
        "Grey cells are non-finite values (a diverged step)."
    ),
    needs=Needs("runs with per-layer weight-gradient norms"),
)
def gradient_heatmaps(
    runs: pd.DataFrame, stats: pd.DataFrame, run_ids: Iterable[str] | None = None, max_runs: int = 6
) -> Figure | None:
    """log₁₀ ‖∇W‖ (grad/l2/<layer>) as layer × step heatmaps, one small panel per chosen run, one colour scale."""
    ids = list(run_ids) if run_ids is not None else pick_runs(runs, stats, max_runs)
    grads = select(stats, "grad", "l2")
    grads = load.with_layer_index(grads[grads["run_id"].isin(ids) & (grads["layer"] != "")])
    ids = [i for i in ids if i in set(grads["run_id"])]
    if not ids:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        grads = grads.assign(log=np.log10(grads["value"].where(grads["value"] > 0)))
    finite = grads["log"][np.isfinite(grads["log"])]
    vmin, vmax = (finite.quantile(0.02), finite.quantile(0.98)) if len(finite) else (-1.0, 1.0)
    fig, axes = facet_axes(ids, width=3.6, height=3.0)
    info = runs.set_index("run_id")
    mesh = None
    for run_id, ax in axes.items():
        table = grads[grads["run_id"] == run_id].pivot_table(index="layer_index", columns="step", values="log")
        cells = np.ma.masked_invalid(table.to_numpy())
        mesh = ax.pcolormesh(
            _edges(table.columns.to_numpy(float)),
            _edges(table.index.to_numpy(float)),
            cells,
            cmap=HEATMAP_CMAP,
            vmin=vmin,
            vmax=vmax,
        )
        ax.set_facecolor("0.85")  # masked (non-finite) cells show as grey
        run = info.loc[run_id].to_dict()
        ax.set_title(f"{label(run)}\n{_training_setup(run)}\n{_gain_text(run)}", fontsize="small")
        ax.set_xlabel("training step")
        ax.set_ylabel("layer (0 = input; top = readout)")
        whole_ticks(ax.xaxis)  # a run that diverged at once has one step
        whole_ticks(ax.yaxis)
        ax.grid(False)
    fig.colorbar(mesh, ax=list(axes.values()), label="log₁₀ ‖∂L/∂W‖₂ (grad/l2/<layer>)", shrink=0.8)
    fig.suptitle("Weight-gradient norm by layer and step")
    return fig


def _training_setup(run: dict) -> str:
    clip = value(run, "clip", "none")
    clip_text = "no clip" if clip == "none" else f"clip {clip} {float(value(run, 'clip_threshold')):g}"
    return f"{value(run, 'optimizer', '?')} lr {float(value(run, 'lr', math.nan)):g}, {clip_text}"


def _gain_text(run: dict) -> str:
    gain = run["measured_gain"]
    if summary.is_gan(run):  # its verdict is about the generator loss's gradient, not the per-layer gain
        text = f"{'no gain measured' if pd.isna(gain) else f'gain {gain:.2f}/layer'}; loss gradient: {run['verdict']}"
    elif run["verdict"] != "unknown":
        text = f"gain {gain:.2f}/layer: {run['verdict']}"
    else:
        text = "no gain measured"
    if value(run, "outcome") == "diverged":
        text += f"; diverged at step {value(run, 'diverged_step', '?')}"
    return text
