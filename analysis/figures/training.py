"""Figures of how training steps: gradient clipping, optimizers, the weight-update ratio."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import load, summary
from analysis.figures.common import objective_values
from analysis.figures.registry import Needs, dimension, figure
from analysis.figures.style import (
    CELL_COLORS,
    DEPTH_DASHES,
    GREY,
    OPTIMIZER_COLORS,
    color_or_grey,
    new_figure,
    plain_log_ticks,
    plural,
    whole_ticks,
)
from analysis.summary import RECURRENT, label, select, value

# ---------------------------------------------------------------------------------- clipping


def _clipping_name(run: dict) -> str:
    return f"{value(run, 'clip', 'none')} {float(value(run, 'clip_threshold', math.nan)):g}"


@figure(
    title="Gradient clipping",
    caption=(
        "Left: the global gradient norm before (solid, grad/global_l2) and after clipping (dashed, "
        "grad/global_l2_clipped), dotted lines at norm-clipping thresholds. Right: the share of logged steps at "
        "which clipping changed the gradient, by threshold and optimizer. Pascanu et al. (2013): norm clipping "
        "caps the step taken on a cliff of the loss without changing its direction; a threshold that clips "
        "every step acts as a smaller, normalized learning rate, one that never clips does nothing. Adaptive "
        "optimizers (Adam) rescale the gradient anyway, so clipping matters less to them."
    ),
    needs=Needs("runs with clipping on (clip = norm or value) and their clipped norms"),
)
def clipping(runs: pd.DataFrame, stats: pd.DataFrame, max_runs: int = 6) -> Figure | None:
    """Global gradient norm before vs after clipping over steps, and the share of logged steps clipped."""
    clipped_runs = runs[runs["clip"].isin(["norm", "value"])]
    before = select(stats, "grad", "global_l2")
    after = select(stats, "grad", "global_l2_clipped")
    if clipped_runs.empty or before.empty or after.empty:
        return None
    both = before.merge(after, on=["run_id", "step"], suffixes=("_before", "_after"))
    both = both[both["run_id"].isin(clipped_runs["run_id"])]
    if both.empty:
        return None
    # A step counts as clipped when clipping made the global norm smaller (works for norm and value clipping).
    both["clipped"] = both["value_after"] < both["value_before"] * (1 - 1e-6)
    info = clipped_runs.assign(
        setting=[_clipping_name(r) for r in clipped_runs.to_dict("records")],
        optimizer=clipped_runs["optimizer"].fillna("?"),
    )
    fig, axes = new_figure(1, 2, width=5.4, height=4.0)
    left, right = axes[0]
    shown = info.drop_duplicates(["setting", "optimizer"]).head(max_runs)
    palette = sns.color_palette("colorblind", len(shown))
    for color, run in zip(palette, shown.to_dict("records")):
        rows = both[both["run_id"] == run["run_id"]].sort_values("step")
        name = f"{run['setting']} · {run['optimizer']}"
        left.plot(rows["step"], rows["value_before"], color=color, lw=1.5, label=name)
        left.plot(rows["step"], rows["value_after"], color=color, lw=1.5, ls="--")
        if value(run, "clip") == "norm":
            left.axhline(float(value(run, "clip_threshold")), color=color, lw=0.8, ls=":")
    left.set(
        yscale="log",
        xlabel="training step",
        ylabel="global gradient L2 norm",
        title="before (solid) vs after (dashed) clipping",
    )
    plain_log_ticks(left.yaxis)
    left.legend(
        fontsize="x-small",
        title="clip · optimizer",
        title_fontsize="x-small",
        ncols=2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
    )  # below the axes: the curves fill the panel
    share = both.groupby("run_id")["clipped"].mean().rename("share").reset_index().merge(info, on="run_id")
    order = sorted(share["setting"].unique(), key=lambda s: (s.split()[0], float(s.split()[1])))
    hues = [o for o in OPTIMIZER_COLORS if o in set(share["optimizer"])] or sorted(set(share["optimizer"]))
    sns.barplot(
        share,
        x="setting",
        y="share",
        hue="optimizer",
        order=order,
        hue_order=hues,
        ax=right,
        palette={o: color_or_grey(OPTIMIZER_COLORS, o) for o in hues},
        errorbar=None,
    )
    right.set(
        ylim=(0, 1.05),
        xlabel="clipping (algorithm, threshold)",
        ylabel="share of logged steps clipped",
        title="how often clipping acted",
    )
    right.legend(
        fontsize="x-small",
        title="optimizer",
        title_fontsize="x-small",
        ncols=len(hues),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
    )
    fig.suptitle("Gradient clipping")
    return fig


# ------------------------------------------------------------------------------ update ratio


def _quartile_line(ax, rows: pd.DataFrame, x: str, color: object, dashes: tuple | str) -> None:
    """Median of `value` over runs at each x, with the interquartile band (pandas, not seaborn's slow estimator)."""
    q = rows.groupby(x)["value"].quantile([0.25, 0.5, 0.75]).unstack()
    style = {"dashes": dashes} if dashes else {}
    ax.plot(q.index, q[0.5], color=color, lw=1.6, marker="o", ms=3.5, **style)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, lw=0)


@figure(
    title="Weight-update ratio",
    caption=(
        "‖ΔW‖/‖W‖ of each step (update/ratio/&lt;layer&gt;) by layer and over training, median and "
        "interquartile band over runs per optimizer. The common rule of thumb is about 10⁻³: much smaller and "
        "the layer barely learns (vanishing gradients show as low ratios near the input under SGD), much larger "
        "and training is unstable. Adam's update is scale-free, so its ratios are flat across layers."
    ),
    needs=Needs("runs with update ratios"),
)
def update_ratio(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖ΔW‖/‖W‖ per layer (median over training) and over steps (median over layers), one line per optimizer."""
    rows = select(stats, "update", "ratio")
    rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0) & (rows["layer"] != "")]
    if rows.empty:
        return None
    rows = load.with_layer_index(rows).merge(runs[["run_id", "optimizer", "depth"]], on="run_id")
    if rows.empty:
        return None
    hues = [o for o in OPTIMIZER_COLORS if o in set(rows["optimizer"])] or sorted(set(rows["optimizer"]))
    palette = {o: color_or_grey(OPTIMIZER_COLORS, o) for o in hues}
    by_layer = rows.groupby(["run_id", "optimizer", "depth", "layer_index"], as_index=False)["value"].median()
    by_step = rows.groupby(["run_id", "optimizer", "step"], as_index=False)["value"].median()
    fig, axes = new_figure(1, 2, width=5.0, height=3.8, sharey=True)
    left, right = axes[0]
    # Lines per depth on the left: layer l of a 6-layer net is its readout, of a 12-layer net a hidden layer.
    depths = sorted(by_layer["depth"].unique())
    dashes = {d: DEPTH_DASHES[i % len(DEPTH_DASHES)] for i, d in enumerate(depths)}
    for (optimizer, depth), group in by_layer.groupby(["optimizer", "depth"]):
        _quartile_line(left, group, "layer_index", palette[optimizer], dashes[depth])
    for optimizer, group in by_step.groupby("optimizer"):
        _quartile_line(right, group, "step", palette[optimizer], "")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.axhline(1e-3, color="0.3", ls="--", lw=0.9)
        plain_log_ticks(ax.yaxis)
    left.set(
        xlabel="layer index (0 = input side, last = readout)",
        ylabel="update ratio ‖ΔW‖ / ‖W‖ per step",
        title="by layer (median over training)",
    )
    whole_ticks(left.xaxis)
    right.set(xlabel="training step", title="over training (median over layers)")
    handles = [Line2D([], [], color=palette[o], lw=2, marker="o", ms=4, label=o) for o in hues]
    handles += [
        Line2D([], [], color="0.3", lw=1.5, label=f"depth {d}", **({"dashes": dash} if dash else {}))
        for d, dash in dashes.items()
    ]
    # In the legend, not beside the line: the curves cross 10⁻³ anywhere and would run through a label there.
    handles.append(Line2D([], [], color="0.3", ls="--", lw=0.9, label="10⁻³ rule of thumb"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="optimizer\n(median, IQR band)")
    fig.suptitle("Weight-update ratio ‖ΔW‖/‖W‖")
    return fig


# --------------------------------------------------------------------------- optimizer curves


def _elapsed_at(stats: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Wall-clock seconds at each row's step, interpolated in its run's (step, time/elapsed) record."""
    clock = select(stats, "time", "elapsed")
    clock = {run_id: group.sort_values("step") for run_id, group in clock.groupby("run_id")}
    out = np.full(len(rows), np.nan)
    steps = rows["step"].to_numpy(float)
    for run_id, index in rows.groupby("run_id").indices.items():
        if run_id in clock:
            out[index] = np.interp(steps[index], clock[run_id]["step"], clock[run_id]["value"])
    return out


def _median_curve(rows: pd.DataFrame, points: int = 60) -> pd.DataFrame:
    """Quartiles over runs of value and elapsed time on one step grid (each run interpolated inside its range).

    A grid point needs at least half the runs. Time is the median wall clock at each step rather than a grid of
    its own: runs end at different times, and a median over whichever runs cover a time point jumps as they drop out.
    """
    grid = np.linspace(rows["step"].min(), rows["step"].max(), points)
    loss, time = [], []
    for _, run in rows.groupby("run_id"):
        run = run.sort_values("step")
        loss.append(np.interp(grid, run["step"], run["value"], left=np.nan, right=np.nan))
        time.append(np.interp(grid, run["step"], run["elapsed"], left=np.nan, right=np.nan))
    loss = np.vstack(loss)
    # Only where at least half the runs have data: early validations of a few diverging runs are no median.
    loss[:, np.isfinite(loss).sum(axis=0) < len(loss) / 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points left without runs are all-NaN
        q = np.nanpercentile(loss, [25, 50, 75], axis=0)
        elapsed = np.nanmedian(np.vstack(time), axis=0)
    return pd.DataFrame({"step": grid, "elapsed": elapsed, "lo": q[0], "median": q[1], "hi": q[2]})


SCHEDULE_DASHES = {"none": "", "step": (4, 1.5), "cosine": (1, 1), "onecycle": (3, 1, 1, 1)}  # "" = solid
FULL_BATCH, BATCH_ONE = "GD (full batch)", "SGD (batch 1)"


@dimension("optimizer setting")
def optimizer_setting(run: dict) -> str:
    """How a run optimized: the optimizer, full-batch GD or batch-1 SGD told apart, and any lr schedule."""
    name = str(value(run, "optimizer", "?"))
    batch, n_train = float(value(run, "batch_size", math.nan)), float(value(run, "n_train", math.nan))
    if name == "sgd" and batch >= n_train:
        name = FULL_BATCH
    elif name == "sgd" and batch == 1:
        name = BATCH_ONE
    schedule = value(run, "schedule", "none")
    return name if schedule == "none" else f"{name} + {schedule}"


def _setting_style(run: dict) -> dict:
    """Colour by optimizer (black for full-batch GD, grey for batch-1 SGD), dashes by schedule."""
    setting = optimizer_setting(run)
    color = (
        "0.1"
        if setting.startswith(FULL_BATCH)
        else GREY
        if setting.startswith(BATCH_ONE)
        else color_or_grey(OPTIMIZER_COLORS, value(run, "optimizer"))
    )
    return {"color": color, "dashes": SCHEDULE_DASHES.get(value(run, "schedule", "none"), "")}


def _settings(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, dict]]:
    """runs with a `setting` column, the settings in optimizer order, and each setting's line style."""
    records = runs.to_dict("records")
    runs = runs.assign(setting=[optimizer_setting(r) for r in records])
    styles = {optimizer_setting(r): _setting_style(r) for r in records}
    rank = {o: i for i, o in enumerate((FULL_BATCH, BATCH_ONE, *OPTIMIZER_COLORS))}
    order = sorted(styles, key=lambda s: (rank.get(s.split(" + ")[0], len(rank)), s))
    return runs, order, styles


def _style_kwargs(style: dict) -> dict:
    return {"color": style["color"], **({"dashes": style["dashes"]} if style["dashes"] else {})}


@figure(
    title="Optimizers: loss against steps and time",
    caption=(
        "Training loss (every logged step) and validation loss against step and against wall-clock seconds "
        "(time/elapsed, the median clock of the runs at each step), the median and interquartile band over the "
        "runs of each optimizer setting (colour = optimizer, black = full-batch GD, grey = SGD with batch 1, "
        "dashes = learning-rate schedule), each run interpolated inside its own range and "
        "a point drawn only where at least "
        "half the runs have data. Compare per step for sample efficiency and per second for cost; diverged runs "
        "drop out where their loss stopped being finite."
    ),
    needs=Needs("runs with training-loss records", vary=("optimizer setting",)),
)
def optimizer_curves(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """train/loss and val/loss against step and against wall-clock time, one median line per optimizer setting."""
    runs, order, styles = _settings(runs)
    fig, axes = new_figure(2, 2, width=4.6, height=3.3)
    drew: dict[str, int] = {}
    for i, (family, name) in enumerate((("train", "training loss"), ("val", "validation loss"))):
        rows = select(stats, family, "loss").merge(runs[["run_id", "setting"]], on="run_id")
        rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0)]
        rows = rows.assign(elapsed=_elapsed_at(stats, rows))
        medians = []
        for setting, group in rows.groupby("setting"):
            curve, style = _median_curve(group), styles[setting]
            drew[setting] = max(drew.get(setting, 0), group["run_id"].nunique())
            medians.append(curve["median"])
            for ax, x in zip(axes[i], ("step", "elapsed")):
                ax.plot(curve[x], curve["median"], lw=1.8, **_style_kwargs(style))
                ax.fill_between(curve[x], curve["lo"], curve["hi"], color=style["color"], alpha=0.12, lw=0)
        for ax, xlabel in zip(axes[i], ("training step", "wall-clock time (s, median over runs)")):
            ax.set(yscale="log", xlabel=xlabel, ylabel=name)
            if medians:  # the medians set the scale: a band that reaches a diverging run's 1e20 is cut off
                span = pd.concat(medians).dropna()
                ax.set_ylim(span.min() / 2, span.max() * 3)
            plain_log_ticks(ax.yaxis)
    if not drew:
        return None
    handles = [
        Line2D([], [], lw=2, label=f"{s} ({plural(drew[s], 'run')})", **_style_kwargs(styles[s]))
        for s in order
        if s in drew
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="optimizer\n(median, IQR band)")
    fig.suptitle("Optimizers: loss against steps and against wall-clock time")
    return fig


@figure(
    title="Optimizers: final result and cost",
    caption=(
        "The final validation accuracy (validation loss where there is no accuracy) of every run, by optimizer "
        "setting (dots = runs, e.g. seeds; bars = their mean; the panel title says how many runs each bar holds), "
        "and the wall-clock milliseconds per training step "
        "(time/elapsed at the last step over the steps). Full-batch gradient descent is SGD whose batch holds the "
        "whole training set (tag n_train): each step costs the most and is the least noisy; SGD with batch 1 is "
        "the cheapest and noisiest step. Adaptive methods (RMSprop, Adagrad, Adam, AdamW) reach a low loss "
        "with little tuning; schedules (step, cosine, one-cycle) trade early speed for a better end point."
    ),
    needs=Needs("runs with a final validation result and a clock", vary=("optimizer setting",)),
)
def optimizer_results(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Final validation accuracy (or loss) and wall-clock time per step, one row per optimizer setting."""
    runs, order, styles = _settings(runs)
    metric = "val/acc" if runs.get("metrics.val/acc", pd.Series(dtype=float)).notna().any() else "val/loss"
    final = objective_values(runs, stats, metric)
    clock = select(stats, "time", "elapsed").sort_values("step").groupby("run_id")
    per_step = (clock["value"].last() / clock["step"].last().clip(lower=1)) * 1e3
    if per_step.empty:  # runs that wrote no statistics
        return None
    table = runs.assign(final=runs["run_id"].map(final), ms=runs["run_id"].map(per_step))
    # A diverged run's last value (inf, stored by MLflow as 1.8e308, or 1e29) is no result: left out, counted.
    left_out = int((table["outcome"] == "diverged").sum())
    table = table[np.isfinite(table["final"].astype(float)) & (table["outcome"] != "diverged")]
    if table.empty or len(order) < 2:
        return None
    order = [s for s in order if s in set(table["setting"])]
    fig, axes = new_figure(1, 2, width=4.6, height=0.42 * len(order) + 1.6)
    left, right = axes[0]
    palette = {s: styles[s]["color"] for s in order}
    for ax, column, xlabel in ((left, "final", f"final {metric}"), (right, "ms", "wall-clock ms per step")):
        sns.barplot(
            table,
            y="setting",
            x=column,
            hue="setting",
            order=order,
            hue_order=order,
            palette=palette,
            errorbar=None,
            alpha=0.45,
            ax=ax,
            legend=False,
        )
        sns.stripplot(
            table,
            y="setting",
            x=column,
            hue="setting",
            order=order,
            hue_order=order,
            palette=palette,
            size=5,
            ax=ax,
            legend=False,
        )
        ax.set(xlabel=xlabel, ylabel="")
    left.set_ylabel("optimizer setting")
    right.set(yticklabels=[])
    if metric == "val/loss":  # bars from 0 mean nothing on a log axis: the limits come from the runs
        values = table["final"].astype(float)
        values = values[values > 0]
        left.set_xscale("log")
        if not values.empty:
            left.set_xlim(values.min() / 1.5, values.max() * 1.5)
            plain_log_ticks(left.xaxis)
    per_setting = table.groupby("setting").size()
    low, high = int(per_setting.min()), int(per_setting.max())
    runs_text = f"{low}" if low == high else f"{low}–{high}"
    title = (
        "one run per setting (bar = its value)"
        if high == 1
        else f"bar = mean over each setting's {runs_text} runs, dots = runs"
    )
    left.set_title(title + (f"; {plural(left_out, 'diverged run')} left out" if left_out else ""), fontsize="small")
    fig.suptitle("Optimizers: final result and cost per step")
    return fig


# ------------------------------------------------------------------------ clipping, paired


# Runs equal in every one of these but `clip`/`clip_threshold` form a pair: the same net trained with and without.
PAIR_CONFIG = tuple(c for c in summary.CONFIG_COLUMNS if c not in ("clip", "clip_threshold"))


def clipping_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (unclipped run, clipped run) of otherwise identical configurations: run_id_off, run_id_on, …"""
    if runs.empty:
        return pd.DataFrame(columns=["run_id_off", "run_id_on"])
    text = runs[list(PAIR_CONFIG)].map(lambda v: "" if pd.isna(v) else str(v))
    keyed = runs.assign(_key=text.agg("|".join, axis=1))
    off = keyed[keyed["clip"] == "none"]
    on = keyed[keyed["clip"].isin(["norm", "value"])]
    pairs = off.merge(on, on="_key", suffixes=("_off", "_on"))
    return pairs.drop(columns="_key")


def _pair_label(pair: dict) -> str:
    """The unclipped run's configuration and optimizer, and the clipping of its partner."""
    off = {k[: -len("_off")]: v for k, v in pair.items() if k.endswith("_off")}
    seq = f" T={int(float(off['seq_len']))}" if value(off, "model") in RECURRENT and value(off, "seq_len") else ""
    on = pair
    return (
        f"{label(off)}{seq} · {value(off, 'optimizer', '?')} {float(value(off, 'lr', math.nan)):g}"
        f" · clip {on['clip_on']} {float(on['clip_threshold_on']):g}"
    )


@figure(
    title="Clipping, paired runs",
    caption=(
        "Runs that differ only in gradient clipping, paired. Left: the global gradient norm before clipping "
        "(grad/global_l2) of the (up to four) pairs whose unclipped run reached the largest norm, unclipped solid, "
        "clipped dashed, × where a run diverged; whether that norm explodes is read off the axis, not assumed. "
        "Right: each pair's objective without (x) and with clipping (y), on the side of the diagonal the title "
        "names where clipping helped (log axes for a loss, linear for a score such as accuracy); × on the edge "
        "marks a run that diverged. Pascanu et al. "
        "(2013): an RNN with spectral radius above 1 under plain SGD meets gradient cliffs; an unclipped step "
        "there throws the weights far away (often to non-finite values), a norm-clipped step keeps the "
        "direction and caps the length, so the same run trains."
    ),
    needs=Needs("pairs of runs that differ only in clipping (clip = none and clip = norm or value)"),
    takes_objective=True,
)
def clipping_effect(
    runs: pd.DataFrame,
    stats: pd.DataFrame,
    objective: str = "val/loss",
    direction: str = "minimize",
    max_pairs: int = 4,
) -> Figure | None:
    """Runs differing only by clipping: the gradient norm of the pairs with the largest one, and each pair's outcome."""
    pairs = clipping_pairs(runs)
    norms = select(stats, "grad", "global_l2")
    if pairs.empty or norms.empty:
        return None
    peak = norms.groupby("run_id")["value"].max()
    pairs = pairs.assign(peak=pairs["run_id_off"].map(peak).fillna(np.inf)).sort_values("peak", ascending=False)
    fig, axes = new_figure(1, 2, width=5.2, height=4.0)
    left, right = axes[0]
    palette = sns.color_palette("colorblind", max_pairs)
    handles = []
    for color, pair in zip(palette, pairs.head(max_pairs).to_dict("records")):
        for side, ls in (("off", "-"), ("on", "--")):
            rows = norms[norms["run_id"] == pair[f"run_id_{side}"]].sort_values("step")
            rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0)]
            left.plot(rows["step"], rows["value"], color=color, ls=ls, lw=1.4)
            if pair[f"outcome_{side}"] == "diverged" and not rows.empty:
                left.plot(rows["step"].iloc[-1], rows["value"].iloc[-1], marker="x", color=color, ms=8, mew=2)
        name = _pair_label(pair)
        handles.append(Line2D([], [], color=color, lw=2, label=name))
    shown = min(len(pairs), max_pairs)
    left.set(
        yscale="log",
        xlabel="training step",
        ylabel="global gradient L2 norm before clipping",
        title=f"the {plural(shown, 'pair')} with the largest unclipped norm:\nunclipped (solid) vs clipped (dashed)",
    )
    fig.legend(
        handles=handles,
        fontsize="x-small",
        loc="outside lower center",
        ncols=2,
        title="pair (the clipped run's setting last)",
        title_fontsize="x-small",
    )
    # Right: each pair's objective with vs without clipping; a diverged run has no objective and sits on the edge.
    final = objective_values(runs, stats, objective)
    x = pairs["run_id_off"].map(final).where(pairs["outcome_off"] != "diverged")
    y = pairs["run_id_on"].map(final).where(pairs["outcome_on"] != "diverged")
    finite = pd.concat([x, y]).replace([np.inf, -np.inf], np.nan).dropna()
    log = objective.endswith("loss") and (finite > 0).all()  # a loss spans decades; accuracy-like scores do not
    lo, hi, edge, limit = _paired_range(finite, log)
    for pair, xv, yv in zip(pairs.to_dict("records"), x, y):
        color = color_or_grey(CELL_COLORS, pair["model_off"]) if pair["model_off"] in CELL_COLORS else "0.3"
        right.scatter(
            edge if pd.isna(xv) else xv,
            edge if pd.isna(yv) else yv,
            color=color,
            s=30,
            marker="x" if pd.isna(xv) or pd.isna(yv) else "o",
            zorder=3,
            clip_on=False,
        )
    right.plot([lo, hi], [lo, hi], color="0.4", lw=0.9, ls=":")
    rule = math.sqrt(hi * edge) if log else (hi + edge) / 2  # the line between finite values and the edge
    right.axvline(rule, color="0.45", lw=0.9, ls="--")  # dashed: not a grid line
    right.axhline(rule, color="0.45", lw=0.9, ls="--")
    right.text(edge, lo, "diverged", rotation=90, ha="center", va="bottom", fontsize="x-small")
    right.text(lo, edge, "diverged", ha="left", va="center", fontsize="x-small")
    scale = "log" if log else "linear"
    n = len(pairs)
    right.set(
        xscale=scale,
        yscale=scale,
        xlim=(lo, limit),
        ylim=(lo, limit),
        xlabel=f"{objective} without clipping",
        ylabel=f"{objective} with clipping",
        title=f"{plural(n, 'pair')} ({'below' if direction == 'minimize' else 'above'} the diagonal: clipping helped)",
    )
    for axis in (left.yaxis, *((right.xaxis, right.yaxis) if log else ())):
        plain_log_ticks(axis)
    fig.suptitle("Gradient clipping: runs that differ only in clipping")
    return fig


def _paired_range(finite: pd.Series, log: bool) -> tuple[float, float, float, float]:
    """(lo, hi) of the finite values with a margin, where diverged runs sit (edge), and the axis limit past it."""
    if finite.empty:
        lo, hi = (1e-3, 10.0) if log else (0.0, 1.0)
    elif log:
        lo, hi = finite.min() / 2, finite.max() * 2
    else:
        pad = 0.05 * max(finite.max() - finite.min(), abs(finite.max()), 1e-12)
        lo, hi = finite.min() - pad, finite.max() + pad
    if log:
        return lo, hi, hi * 1.8, hi * 1.8 * 1.5
    return lo, hi, hi + 0.12 * (hi - lo), hi + 0.2 * (hi - lo)
