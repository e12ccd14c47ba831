"""One function per report figure: (runs, stats) DataFrames from analysis.load → a matplotlib Figure, or None.

Every function takes the study's `runs` (one row per trial) and `stats` (long table) and returns None when
the study holds nothing the figure can show, so any study, even a partial one, makes a report. Figures are
built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: nothing global changes, no
figure leaks, and it works headless. Colours and markers are defined once, below, per activation, init,
optimizer, recurrent cell and outcome.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis import load, summary, theory
from analysis.summary import RECURRENT, arch, label, select, value

DPI = 110

_CB = sns.color_palette("colorblind")
GREY = "0.55"
ACTIVATION_COLORS = {"sigmoid": _CB[2], "tanh": _CB[0], "relu": _CB[3], "leaky_relu": _CB[1], "gelu": _CB[4],
                     "linear": _CB[7]}  # fmt: skip
INIT_MARKERS = {"torch_default": "o", "xavier_uniform": "s", "xavier_normal": "D", "kaiming_uniform": "^",
                "kaiming_normal": "v", "orthogonal": "P", "normal": "X", "identity": "*"}  # fmt: skip
OPTIMIZER_COLORS = dict(zip(("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"),
                            sns.color_palette("Dark2", 7)))  # fmt: skip
CELL_COLORS = {"rnn": _CB[3], "lstm": _CB[0], "gru": _CB[2]}
OUTCOME_COLORS = {"trained": "#4daf4a", "vanished": "#80b1d3", "diverged": "#e41a1c"}
TEXT_ON = {"trained": "white", "vanished": "black", "diverged": "white"}  # readable on each outcome colour
THEORY_MARKERS = {summary.MEAN_FIELD: "o", summary.BATCH_NORM: "s", summary.RESIDUAL: "^"}
DEPTH_DASHES = ("", (4, 1.5), (1, 1), (3, 1, 1, 1), (6, 2))  # "" = solid
HEATMAP_CMAP = "magma"
SATURATING = ("sigmoid", "tanh")
EMPTY_CELL = "0.93"  # a phase-diagram cell no run sampled


# ------------------------------------------------------------------------------------------ helpers


def figure_function(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """Give a figure function complete `runs` and the report's seaborn style (as a context, rcParams untouched)."""

    @functools.wraps(fn)
    def wrapper(runs: pd.DataFrame, stats: pd.DataFrame, *args, **kwargs) -> Figure | None:
        # Every config column (a partial study's runs may lack params) and the per-run summary columns (gains,
        # verdict, training outcome), computed here unless the caller annotated the runs once already.
        runs = summary.annotate(summary.ensure_columns(runs), stats)
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
            return fn(runs, stats, *args, **kwargs)

    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.8, min_width: float = 8.5,
               **subplots) -> tuple[Figure, np.ndarray]:  # fmt: skip
    """A Figure on the Agg canvas with a 2-D array of axes, each about `width` × `height` inches."""
    # At least min_width wide: the title and an outside legend must fit beside a single panel.
    fig = Figure(figsize=(max(width * ncols, min_width), height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG (Agg) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plural(n: int, noun: str) -> str:
    """'1 run', '3 runs': a count with its noun."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _color(palette: dict, key: object) -> object:
    return palette.get(key, GREY)


def _plain_log_ticks(axis, max_span: float = 300.0) -> None:
    """On a log axis spanning less than `max_span`, ticks at 1, 2, 5 × 10ⁿ as plain numbers (6×10⁻¹ reads badly)."""
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or hi / lo > max_span:
        return
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _whole_ticks(axis) -> None:
    """Ticks at whole numbers only (layer indices, steps), even when the axis spans less than one."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _facet_axes(names: list[str], ncols: int = 3, **kwargs) -> tuple[Figure, dict[str, object]]:
    """One axes per name in a grid of at most `ncols` columns; unused axes are hidden."""
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, **kwargs)
    flat = axes.ravel()
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    return fig, dict(zip(names, flat))


def _non_recurrent(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[~runs["model"].isin(RECURRENT)]


def _arch_order(runs: pd.DataFrame) -> list[str]:
    """Architectures present, plain first, then batch norm, then residual ones, then the rest."""
    names = {arch(r) for r in runs.to_dict("records")}
    rank = {"plain": 0, "batch norm": 1, "layer norm": 2}
    return sorted(names, key=lambda a: (rank.get(a, 3 if a.startswith("residual") else 4), a))


def _activation_init_handles(runs: pd.DataFrame) -> list[Line2D]:
    """Legend entries: a colour per activation and a marker per init present in `runs`."""
    acts = [a for a in ACTIVATION_COLORS if a in set(runs["activation"])]
    inits = [i for i in INIT_MARKERS if i in set(runs["init"])]
    handles = [Line2D([], [], color=_color(ACTIVATION_COLORS, a), lw=2.5, label=a) for a in acts]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[i], ls="", label=i) for i in inits]
    return handles


# ------------------------------------------------------------------------- 1. backprop by layer

# What the step-0 gradient depends on (not the optimizer or clipping): runs equal in these share one line.
STEP0_CONFIG = ("dataset", "loss", "model", "norm", "activation", "init", "init_gain", "res_scale", "depth",
                "width", "batch_size", "seed")  # fmt: skip


def _one_per_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop_duplicates(subset=list(STEP0_CONFIG))


@figure_function
def backprop_by_layer(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖∂L/∂x_l‖ at step 0 by layer, one line per configuration, with the mean-field line anchored at the output side."""
    norms = summary.step0_backprop(stats)
    chosen = _one_per_configuration(_non_recurrent(runs))
    chosen = chosen[chosen["run_id"].isin(norms.groupby("run_id").size().loc[lambda n: n >= 2].index)]
    if chosen.empty:
        return None
    m2 = summary.first_layer_m2(stats)
    # y is not shared: a plain sigmoid net spans twenty decades, a batch-norm net's explosion one or two.
    fig, axes = _facet_axes(_arch_order(chosen), width=4.6, height=3.8)
    by_run = dict(tuple(norms.groupby("run_id")))
    drew_theory = False
    for run in chosen.to_dict("records"):
        rows = by_run[run["run_id"]]
        x, y = rows["layer_index"].to_numpy(), rows["value"].to_numpy()
        ax, color = axes[arch(run)], _color(ACTIVATION_COLORS, value(run, "activation"))
        ax.plot(x, y, color=color, marker=INIT_MARKERS.get(value(run, "init"), "o"), ms=4, lw=1.4, alpha=0.9)
        predicted = summary.theory_profile(run, y, float(m2.get(run["run_id"], math.nan)))
        if np.isfinite(predicted).all():
            ax.plot(x, predicted, color=color, ls=":", lw=1.6)
            drew_theory = True
    for name, ax in axes.items():
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_title(name)
        ax.set_xlabel("hidden layer index l (0 = input side)")
        _whole_ticks(ax.xaxis)
        ax.set_ylabel("‖∂L/∂x_l‖ at step 0 (L2 over batch)")
    handles = _activation_init_handles(chosen)
    handles += [Line2D([], [], color="0.3", lw=1.4, label="measured")]
    if drew_theory:
        handles += [Line2D([], [], color="0.3", ls=":", lw=1.6, label="theory (anchored at\nlast hidden layer)")]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Back-propagated gradient norm at initialization, by layer")
    return fig


# ------------------------------------------------------------------ 2. measured vs predicted gain


@figure_function
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
        ax.scatter(group["predicted_gain"], group["measured_gain"], s=42, alpha=0.85, edgecolor="white",
                   linewidth=0.5, color=_color(ACTIVATION_COLORS, activation), marker=THEORY_MARKERS.get(rule, "o"))  # fmt: skip
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    _plain_log_ticks(ax.xaxis, max_span=math.inf)
    _plain_log_ticks(ax.yaxis, max_span=math.inf)
    ax.set_xlabel("predicted gain per layer (theory)")
    ax.set_ylabel("measured gain per layer at step 0\n(geometric mean of ‖∂L/∂x(l−1)‖ / ‖∂L/∂x(l)‖)")
    fig.suptitle("Per-layer gradient gain at initialization: measured vs theory")
    acts = [a for a in ACTIVATION_COLORS if a in set(shown["activation"])]
    counts = shown["activation"].value_counts()  # points of equal gains overlap: the legend counts them
    handles = [Line2D([], [], color=ACTIVATION_COLORS[a], marker="o", ls="", label=f"{a} ({plural(int(counts[a]), 'run')})")
               for a in acts]  # fmt: skip
    handles += [Line2D([], [], color="0.3", marker=THEORY_MARKERS[t], ls="", label=t)
                for t in THEORY_MARKERS if t in set(shown["theory"])]  # fmt: skip
    handles.append(Line2D([], [], color="0.3", ls="--", label="y = x"))
    if lo < 1 + tol and hi > 1 - tol:  # the band is in view
        handles.append(Patch(color=OUTCOME_COLORS["trained"], alpha=0.3, label=f"healthy: 1 ± {tol:g}"))
    missing = len(gains) - len(shown)
    if missing:
        text = f"{plural(missing, 'run')} with no closed-form\nprediction: not shown"
        handles.append(Line2D([], [], ls="", label=text))
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    return fig


# ------------------------------------------------------------------ 3. layer × step heatmaps


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


@figure_function
def gradient_heatmaps(runs: pd.DataFrame, stats: pd.DataFrame, run_ids: Iterable[str] | None = None,
                      max_runs: int = 6) -> Figure | None:  # fmt: skip
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
    fig, axes = _facet_axes(ids, width=3.6, height=3.0)
    info = runs.set_index("run_id")
    mesh = None
    for run_id, ax in axes.items():
        table = grads[grads["run_id"] == run_id].pivot_table(index="layer_index", columns="step", values="log")
        cells = np.ma.masked_invalid(table.to_numpy())
        mesh = ax.pcolormesh(_edges(table.columns.to_numpy(float)), _edges(table.index.to_numpy(float)), cells,
                             cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax)  # fmt: skip
        ax.set_facecolor("0.85")  # masked (non-finite) cells show as grey
        run = info.loc[run_id].to_dict()
        ax.set_title(f"{label(run)}\n{_training_setup(run)}\n{_gain_text(run)}", fontsize="small")
        ax.set_xlabel("training step")
        ax.set_ylabel("layer (0 = input; top = readout)")
        _whole_ticks(ax.xaxis)  # a run that diverged at once has one step
        _whole_ticks(ax.yaxis)
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


# ----------------------------------------------------------------------------- 4. phase diagram


def _objective_values(runs: pd.DataFrame, stats: pd.DataFrame, objective: str) -> pd.Series:
    """The objective's last value by run_id (the run's MLflow metric, else the parquet table's last row)."""
    column = f"metrics.{objective}"
    if column in runs:
        return pd.Series(runs[column].to_numpy(float), index=runs["run_id"])
    family, _, stat = objective.partition("/")
    last = select(stats, family, stat).sort_values("step").groupby("run_id")["value"].last()
    return last.reindex(runs["run_id"])


def _cell_column(run: dict) -> str:
    gain = float(value(run, "init_gain", 1.0))
    return f"{value(run, 'activation', '?')}\n{value(run, 'init', '?')}" + (f" ×{gain:g}" if gain != 1 else "")


def _phase_panel(ax, cells: pd.DataFrame, depths: list, columns: list, ascending: bool) -> None:
    """One architecture's grid: each cell coloured by its best run's outcome, annotated with its objective."""
    cells = cells.sort_values("objective", ascending=ascending, na_position="last")
    groups = cells.groupby(["depth", "column"], sort=False)
    best, counts = groups.first(), groups["training"].agg(lambda s: f"{(s == 'trained').sum()}/{len(s)}")
    codes = {name: i for i, name in enumerate(OUTCOME_COLORS)}
    grid = np.full((len(depths), len(columns)), np.nan)
    for (depth, column), row in best.iterrows():
        i, j = depths.index(depth), columns.index(column)
        grid[i, j] = codes[row["training"]]
        text = "–" if not math.isfinite(row["objective"]) else f"{row['objective']:.2f}"
        text += "" if counts[(depth, column)].endswith("/1") else f"\n{counts[(depth, column)]}"
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8, color=TEXT_ON[row["training"]])
    # pcolormesh + text rather than sns.heatmap, which redraws the whole figure per panel to pick text colours.
    ax.pcolormesh(np.ma.masked_invalid(grid), cmap=ListedColormap(list(OUTCOME_COLORS.values())), vmin=-0.5,
                  vmax=2.5, edgecolors="white", linewidth=1.5)  # fmt: skip
    ax.set_xticks(np.arange(len(columns)) + 0.5, columns, fontsize=7)
    ax.set_yticks(np.arange(len(depths)) + 0.5, [str(int(d)) for d in depths])
    ax.set(xlim=(0, len(columns)), ylim=(0, len(depths)), facecolor=EMPTY_CELL)  # no run in the cell
    ax.grid(False)


@figure_function
def phase_diagram(runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/acc",
                  direction: str = "maximize") -> Figure | None:  # fmt: skip
    """Depth × activation/init cells per architecture, coloured trained / vanished / diverged, with the best objective."""
    runs = _non_recurrent(runs)
    runs = runs[runs["depth"].notna() & runs["training"].isin(list(OUTCOME_COLORS))]  # no loss record: no place
    if runs.empty:
        return None
    records = runs.to_dict("records")
    table = runs.assign(arch=[arch(r) for r in records], column=[_cell_column(r) for r in records],
                        objective=_objective_values(runs, stats, objective).to_numpy())  # fmt: skip
    columns = sorted(table["column"].unique())
    depths = sorted(table["depth"].unique())  # shallow at the bottom, deep on top
    names = [a for a in _arch_order(runs) if a in set(table["arch"])]
    # One architecture per row: the activation/init columns make each panel wide.
    fig, axes = _facet_axes(names, ncols=1, width=max(4.0, 0.85 * len(columns) + 1.5),
                            height=max(2.2, 0.5 * len(depths) + 1.5))  # fmt: skip
    for name, ax in axes.items():
        _phase_panel(ax, table[table["arch"] == name], depths, columns, ascending=direction != "maximize")
        ax.set(title=name, xlabel="activation / init", ylabel="depth (hidden layers)")
    handles = [Patch(color=c, label=k) for k, c in OUTCOME_COLORS.items()]
    if len(table[["arch", "depth", "column"]].drop_duplicates()) < len(names) * len(depths) * len(columns):
        handles.append(Patch(facecolor=EMPTY_CELL, edgecolor="0.75", label="not sampled"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="outcome")
    fig.suptitle(f"Trainability by depth and activation/init (number: best {objective}; k/n: runs trained)")
    return fig


# ---------------------------------------------------------------------------------- 5. clipping


def _clipping_name(run: dict) -> str:
    return f"{value(run, 'clip', 'none')} {float(value(run, 'clip_threshold', math.nan)):g}"


@figure_function
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
    info = clipped_runs.assign(setting=[_clipping_name(r) for r in clipped_runs.to_dict("records")],
                               optimizer=clipped_runs["optimizer"].fillna("?"))  # fmt: skip
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
    left.set(yscale="log", xlabel="training step", ylabel="global gradient L2 norm",
             title="before (solid) vs after (dashed) clipping")  # fmt: skip
    _plain_log_ticks(left.yaxis)
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
    sns.barplot(share, x="setting", y="share", hue="optimizer", order=order, hue_order=hues, ax=right,
                palette={o: _color(OPTIMIZER_COLORS, o) for o in hues}, errorbar=None)  # fmt: skip
    right.set(ylim=(0, 1.05), xlabel="clipping (algorithm, threshold)", ylabel="share of logged steps clipped",
              title="how often clipping acted")  # fmt: skip
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


# -------------------------------------------------------------------------------- 6. saturation


def _progress_phase(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's logged steps nearest to the start, middle and end of its training, labelled by phase."""
    steps = rows[["run_id", "step"]].drop_duplicates()
    span = steps.groupby("run_id")["step"].agg(["min", "max"])
    picks = []
    for name, share in (("start", 0.0), ("middle", 0.5), ("end", 1.0)):
        target = (span["min"] + share * (span["max"] - span["min"])).rename("target")
        distance = (steps["step"] - steps.join(target, on="run_id")["target"]).abs()
        nearest = steps.loc[distance.groupby(steps["run_id"]).idxmin()]
        picks.append(nearest.assign(phase=name))
    return rows.merge(pd.concat(picks, ignore_index=True), on=["run_id", "step"])


@figure_function
def saturation(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Share of saturated (sigmoid/tanh) or zero (ReLU) units by layer at the start, middle and end of training."""
    rows = summary.hidden(select(stats, "act", "saturation"))
    info = _non_recurrent(runs)
    rows = rows[np.isfinite(rows["value"])].merge(info[["run_id", "activation", "init", "depth"]], on="run_id")
    if rows.empty:
        return None
    rows = _progress_phase(rows)
    # A panel per activation and depth: averaging layer l over nets of different depths would mix layers
    # that sit at different distances from the output.
    acts = [a for a in ACTIVATION_COLORS if a in set(rows["activation"])] + sorted(
        set(rows["activation"]) - set(ACTIVATION_COLORS)
    )
    depths = sorted(rows["depth"].unique())
    fig, axes = new_figure(len(depths), len(acts), width=3.8, height=2.7, sharey=True)
    inits = [i for i in INIT_MARKERS if i in set(rows["init"])]
    phases = dict(zip(("start", "middle", "end"), sns.color_palette("plasma", 3)))  # far apart, in time order
    for (i, depth), (j, act) in itertools.product(enumerate(depths), enumerate(acts)):
        ax, panel = axes[i, j], rows[(rows["activation"] == act) & (rows["depth"] == depth)]
        kind = "saturated" if act in SATURATING else "exactly 0 (off/dead)"
        ax.set_title(f"{act}, depth {depth}: {kind}", fontsize="small")
        if panel.empty:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color=GREY)
        else:
            # Mean over runs with pandas: seaborn's per-x estimator is slow on hundreds of runs.
            means = panel.groupby(["init", "phase", "layer_index"])["value"].mean()
            for (init, phase), line in means.groupby(level=["init", "phase"]):
                ax.plot(line.index.get_level_values("layer_index"), line.to_numpy(), color=phases[phase],
                        marker=INIT_MARKERS.get(init, "o"), ms=4, lw=1.4)  # fmt: skip
        ax.set(ylim=(-0.02, 1.02), xlabel="hidden layer index (0 = input side)" if i == len(depths) - 1 else "",
               ylabel="share of units" if j == 0 else "")  # fmt: skip
        _whole_ticks(ax.xaxis)
    handles = [Line2D([], [], color=c, lw=2, label=f"{p} of training") for p, c in phases.items()]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[k], ls="", label=k) for k in inits]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Saturated units (φ′ < 5 % of max) and zero ReLU outputs by layer, mean over runs")
    return fig


# ------------------------------------------------------------------------------ 7. update ratio


def _quartile_line(ax, rows: pd.DataFrame, x: str, color: object, dashes: tuple | str) -> None:
    """Median of `value` over runs at each x, with the interquartile band (pandas, not seaborn's slow estimator)."""
    q = rows.groupby(x)["value"].quantile([0.25, 0.5, 0.75]).unstack()
    style = {"dashes": dashes} if dashes else {}
    ax.plot(q.index, q[0.5], color=color, lw=1.6, marker="o", ms=3.5, **style)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, lw=0)


@figure_function
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
    palette = {o: _color(OPTIMIZER_COLORS, o) for o in hues}
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
        _plain_log_ticks(ax.yaxis)
    left.set(xlabel="layer index (0 = input side, last = readout)", ylabel="update ratio ‖ΔW‖ / ‖W‖ per step",
             title="by layer (median over training)")  # fmt: skip
    _whole_ticks(left.xaxis)
    right.set(xlabel="training step", title="over training (median over layers)")
    handles = [Line2D([], [], color=palette[o], lw=2, marker="o", ms=4, label=o) for o in hues]
    handles += [Line2D([], [], color="0.3", lw=1.5, label=f"depth {d}", **({"dashes": dash} if dash else {}))
                for d, dash in dashes.items()]  # fmt: skip
    # In the legend, not beside the line: the curves cross 10⁻³ anywhere and would run through a label there.
    handles.append(Line2D([], [], color="0.3", ls="--", lw=0.9, label="10⁻³ rule of thumb"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="optimizer\n(median, IQR band)")
    fig.suptitle("Weight-update ratio ‖ΔW‖/‖W‖")
    return fig


# --------------------------------------------------------------------------- 8. optimizer curves


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
    color = ("0.1" if setting.startswith(FULL_BATCH) else GREY if setting.startswith(BATCH_ONE)
             else _color(OPTIMIZER_COLORS, value(run, "optimizer")))  # fmt: skip
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


@figure_function
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
            _plain_log_ticks(ax.yaxis)
    if not drew:
        return None
    handles = [Line2D([], [], lw=2, label=f"{s} ({plural(drew[s], 'run')})", **_style_kwargs(styles[s]))
               for s in order if s in drew]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="optimizer\n(median, IQR band)")
    fig.suptitle("Optimizers: loss against steps and against wall-clock time")
    return fig


@figure_function
def optimizer_results(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Final validation accuracy (or loss) and wall-clock time per step, one row per optimizer setting."""
    runs, order, styles = _settings(runs)
    metric = "val/acc" if runs.get("metrics.val/acc", pd.Series(dtype=float)).notna().any() else "val/loss"
    final = _objective_values(runs, stats, metric)
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
        sns.barplot(table, y="setting", x=column, hue="setting", order=order, hue_order=order, palette=palette,
                    errorbar=None, alpha=0.45, ax=ax, legend=False)  # fmt: skip
        sns.stripplot(table, y="setting", x=column, hue="setting", order=order, hue_order=order, palette=palette,
                      size=5, ax=ax, legend=False)  # fmt: skip
        ax.set(xlabel=xlabel, ylabel="")
    left.set_ylabel("optimizer setting")
    right.set(yticklabels=[])
    if metric == "val/loss":  # bars from 0 mean nothing on a log axis: the limits come from the runs
        values = table["final"].astype(float)
        values = values[values > 0]
        left.set_xscale("log")
        if not values.empty:
            left.set_xlim(values.min() / 1.5, values.max() * 1.5)
            _plain_log_ticks(left.xaxis)
    per_setting = table.groupby("setting").size()
    low, high = int(per_setting.min()), int(per_setting.max())
    runs_text = f"{low}" if low == high else f"{low}–{high}"
    title = "one run per setting (bar = its value)" if high == 1 else \
        f"bar = mean over each setting's {runs_text} runs, dots = runs"  # fmt: skip
    left.set_title(title + (f"; {plural(left_out, 'diverged run')} left out" if left_out else ""), fontsize="small")
    fig.suptitle("Optimizers: final result and cost per step")
    return fig


# ----------------------------------------------------------------------------------- 9. BPTT


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


@figure_function
def bptt(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖∂L/∂h_t‖ against t for RNN/LSTM/GRU (first recurrent layer) at initialization and at the end, log y."""
    rows = load.bptt_by_time(stats)
    rows = rows[(rows["layer"] == "L000") & np.isfinite(rows["value"]) & (rows["value"] > 0)]
    rows = rows.merge(_cells(runs), on="run_id")
    if rows.empty:
        return None
    last = rows.groupby("run_id")["step"].transform("max")
    fig, axes = new_figure(1, 2, width=5.0, height=3.8, sharey=True)
    for ax, (title, mask) in zip(axes[0], (("at initialization (step 0)", rows["step"] == 0),
                                           ("at the last logged step", rows["step"] == last))):  # fmt: skip
        for (model, ls, _), line in rows[mask].sort_values("t").groupby(["model", "ls", "run_id"]):
            ax.plot(line["t"], line["value"], color=_color(CELL_COLORS, model), ls=ls, lw=1.3, alpha=0.85)
        ax.set(yscale="log", title=title, xlabel="time step t (the loss reads the last step)",
               ylabel="‖∂L/∂h_t‖ (L2 over batch)")  # fmt: skip
        _plain_log_ticks(ax.yaxis)
    cells = rows.drop_duplicates("cell").sort_values(["order", "cell"])
    handles = [Line2D([], [], color=_color(CELL_COLORS, c.model), ls=c.ls, lw=2, label=c.cell) for c in cells.itertuples()]
    fig.legend(handles=handles, loc="outside right center", title="cell")
    fig.suptitle("Gradient through time: recurrent cells")
    return fig


# ------------------------------------------------------------------ 10. recurrent cells by length


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


@figure_function
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
    fig, axes = _facet_axes([f"seq_len {n}" for n in lengths] or ["runs"], ncols=3, width=4.2, height=3.4,
                            sharey=True)  # fmt: skip
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
        color = _color(CELL_COLORS, run["model"])
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
            ax.text(0.02, theory.ADDING_BASELINE_MSE * 0.93, "predict the mean (MSE 1/6)", fontsize="x-small",
                    ha="left", va="top", transform=ax.get_yaxis_transform())  # fmt: skip
        _plain_log_ticks(ax.yaxis)
    next(iter(axes.values())).set_ylabel(loss_name)
    cells = [c for c in CELL_COLORS if c in set(recurrent["model"])]
    handles = [Line2D([], [], color=CELL_COLORS[c], lw=2, label=c) for c in cells]
    handles += [Line2D([], [], color="0.3", ls="-", label="no clipping"),
                Line2D([], [], color="0.3", ls="--", label="clipped")]  # fmt: skip
    if diverged:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", mew=2, label="diverged"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="cell · clipping")
    fig.suptitle("Recurrent cells by sequence length: who learns the long lag")
    return fig


# ------------------------------------------------------------------------ 11. clipping, paired


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
    return (f"{label(off)}{seq} · {value(off, 'optimizer', '?')} {float(value(off, 'lr', math.nan)):g}"
            f" · clip {on['clip_on']} {float(on['clip_threshold_on']):g}")


@figure_function
def clipping_effect(runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/loss", direction: str = "minimize",
                    max_pairs: int = 4) -> Figure | None:  # fmt: skip
    """Runs that differ only by clipping: the gradient norm of the pairs with the largest one, and each pair's outcome."""
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
    left.set(yscale="log", xlabel="training step", ylabel="global gradient L2 norm before clipping",
             title=f"the {plural(shown, 'pair')} with the largest unclipped norm:\n"
                   f"unclipped (solid) vs clipped (dashed)")  # fmt: skip
    fig.legend(handles=handles, fontsize="x-small", loc="outside lower center", ncols=2,
               title="pair (the clipped run's setting last)", title_fontsize="x-small")  # fmt: skip
    # Right: each pair's objective with vs without clipping; a diverged run has no objective and sits on the edge.
    final = _objective_values(runs, stats, objective)
    x = pairs["run_id_off"].map(final).where(pairs["outcome_off"] != "diverged")
    y = pairs["run_id_on"].map(final).where(pairs["outcome_on"] != "diverged")
    finite = pd.concat([x, y]).replace([np.inf, -np.inf], np.nan).dropna()
    log = objective.endswith("loss") and (finite > 0).all()  # a loss spans decades; accuracy-like scores do not
    lo, hi, edge, limit = _paired_range(finite, log)
    for pair, xv, yv in zip(pairs.to_dict("records"), x, y):
        color = _color(CELL_COLORS, pair["model_off"]) if pair["model_off"] in CELL_COLORS else "0.3"
        right.scatter(edge if pd.isna(xv) else xv, edge if pd.isna(yv) else yv, color=color, s=30,
                      marker="x" if pd.isna(xv) or pd.isna(yv) else "o", zorder=3, clip_on=False)  # fmt: skip
    right.plot([lo, hi], [lo, hi], color="0.4", lw=0.9, ls=":")
    rule = math.sqrt(hi * edge) if log else (hi + edge) / 2  # the line between finite values and the edge
    right.axvline(rule, color="0.45", lw=0.9, ls="--")  # dashed: not a grid line
    right.axhline(rule, color="0.45", lw=0.9, ls="--")
    right.text(edge, lo, "diverged", rotation=90, ha="center", va="bottom", fontsize="x-small")
    right.text(lo, edge, "diverged", ha="left", va="center", fontsize="x-small")
    scale = "log" if log else "linear"
    n = len(pairs)
    right.set(xscale=scale, yscale=scale, xlim=(lo, limit), ylim=(lo, limit),
              xlabel=f"{objective} without clipping", ylabel=f"{objective} with clipping",
              title=f"{plural(n, 'pair')} ({'below' if direction == 'minimize' else 'above'} the diagonal: "
                    f"clipping helped)")  # fmt: skip
    for axis in (left.yaxis, *((right.xaxis, right.yaxis) if log else ())):
        _plain_log_ticks(axis)
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


# ------------------------------------------------------------------- 12. the gradient side of the loss

LOSS_COLORS = {"bce": _CB[0], "mse": _CB[1], "gan_nonsaturating": _CB[0], "gan_saturating": _CB[3]}
GAIN_DASHES = {1.0: ""}  # init_gain 1 solid, any larger gain dashed


SMOOTH_POINTS = 5  # mini-batch noise: each run's curve is a rolling median over this many logged steps


def _median_line(ax, rows: pd.DataFrame, color: object, dashes: tuple | str = "") -> None:
    """Median over runs of each run's rolling median of `value` at each step, with the interquartile band."""
    rows = rows.sort_values("step")
    smooth = rows.groupby("run_id")["value"].transform(
        lambda v: v.rolling(SMOOTH_POINTS, center=True, min_periods=1).median())
    q = rows.assign(value=smooth).groupby("step")["value"].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], color=color, lw=1.6, **({"dashes": dashes} if dashes else {}))
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, lw=0)


@figure_function
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
        for row, (rows, ylabel) in enumerate(((loss, "training loss / its value at step 0"),
                                              (grad, "‖∂L/∂W_out‖ (grad/l2/out)"))):  # fmt: skip
            ax = axes[row, col]
            for (name, gain), group in rows[rows["activation"] == activation].groupby(["loss", "init_gain"]):
                group = group[np.isfinite(group["value"]) & (group["value"] > 0)]
                if not group.empty:
                    _median_line(ax, group, LOSS_COLORS.get(name, GREY), dashes[gain])
            ax.set(yscale="log", ylabel=ylabel if col == 0 else "")
            _plain_log_ticks(ax.yaxis)
        axes[0, col].set_title(f"{activation} hidden units")
        axes[1, col].set_xlabel("training step")
    handles = [Line2D([], [], color=LOSS_COLORS[n], lw=2, label=t)
               for n, t in (("bce", "sigmoid + cross-entropy (bce)"), ("mse", "sigmoid + MSE"))]  # fmt: skip
    handles += [Line2D([], [], color="0.3", lw=1.5, label=f"init_gain {g:g}", **({"dashes": d} if d else {}))
                for g, d in dashes.items()]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="loss · init\n(median, IQR)")
    fig.suptitle("The gradient side of the loss: sigmoid output with MSE learns slowly when saturated")
    return fig


@figure_function
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
        _median_line(left, group[np.isfinite(group["value"]) & (group["value"] > 0)], LOSS_COLORS.get(name, GREY))
    for name, group in d_fake.groupby("loss"):
        _median_line(right, group[np.isfinite(group["value"])], LOSS_COLORS.get(name, GREY))
    left.set(yscale="log", xlabel="training step", ylabel="generator ‖∂L_G/∂W_out‖ (grad/l2/out)",
             title="the generator's output-layer gradient")  # fmt: skip
    _plain_log_ticks(left.yaxis)
    right.set(yscale="log", xlabel="training step", ylabel="D(G(z)) (gan/d_fake, mean probability)",
              title="how surely the discriminator rejects fakes")  # fmt: skip
    _plain_log_ticks(right.yaxis)
    counts = info["loss"].value_counts()
    handles = [Line2D([], [], color=LOSS_COLORS[n], lw=2, label=f"{t} ({plural(int(counts[n]), 'run')})")
               for n, t in (("gan_saturating", "saturating: min log(1 − D(G(z)))"),
                            ("gan_nonsaturating", "non-saturating: min −log D(G(z))")) if n in counts]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", fontsize="small", ncols=2, title="generator loss")
    fig.suptitle("GAN generator losses when the discriminator wins")
    return fig


# Figures of one task's studies (the losses and gan specs): other studies leave them out.
TASK_FIGURES = ("output_gradient", "gan_gradient")
# The report draws these in this order; each takes (runs, stats) and returns a Figure or None.
FIGURES: dict[str, Callable[..., Figure | None]] = {
    "backprop_by_layer": backprop_by_layer,
    "gain_scatter": gain_scatter,
    "gradient_heatmaps": gradient_heatmaps,
    "phase_diagram": phase_diagram,
    "clipping": clipping,
    "saturation": saturation,
    "update_ratio": update_ratio,
    "optimizer_curves": optimizer_curves,
    "optimizer_results": optimizer_results,
    "bptt": bptt,
    "recurrent_curves": recurrent_curves,
    "clipping_effect": clipping_effect,
    "output_gradient": output_gradient,
    "gan_gradient": gan_gradient,
}


# ------------------------------------------------------------------------- what each figure needs


@dataclass(frozen=True)
class Needs:
    """What a figure needs to say anything: runs of a kind (`task`) whose data it draws, and dimensions that vary."""

    data: str  # the records it draws, named for the report's "Not drawn" list when a study lacks them
    task: str = "any"  # a key of TASKS: which runs the figure is about
    vary: tuple[str, ...] = ()  # at least one of these (config columns or keys of DERIVED) takes ≥ 2 values


TASKS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "any": ("", lambda runs: pd.Series(True, index=runs.index)),
    "non-recurrent": ("non-recurrent", lambda runs: ~runs["model"].isin(RECURRENT)),
    "supervised": ("supervised feed-forward (not recurrent, not GAN)",
                   lambda runs: ~runs["model"].isin(RECURRENT) & ~runs["loss"].isin(summary.GAN_LOSSES)),
    "recurrent": ("recurrent (rnn, lstm, gru)", lambda runs: runs["model"].isin(RECURRENT)),
    "gan": ("GAN (loss gan_saturating or gan_nonsaturating)", lambda runs: runs["loss"].isin(summary.GAN_LOSSES)),
}  # fmt: skip
# Dimensions that are not one config column: name → the value of a run.
DERIVED: dict[str, Callable[[dict], object]] = {
    "optimizer setting": lambda run: optimizer_setting(run),
    "activation/init": lambda run: _cell_column(run).replace("\n", " "),
    "architecture": arch,
}

NEEDS: dict[str, Needs] = {
    "backprop_by_layer": Needs("runs with at least two hidden layers measured at step 0", "non-recurrent"),
    "gain_scatter": Needs("runs whose architecture has a closed-form prediction (plain MLP, batch-norm MLP, "
                          "ReLU residual MLP)", "non-recurrent"),
    "gradient_heatmaps": Needs("runs with per-layer weight-gradient norms"),
    # Depth must vary: a phase is where trainability changes with depth (one depth would rank tasks' objectives).
    "phase_diagram": Needs("runs with a depth and a training outcome", "supervised", ("depth",)),
    "clipping": Needs("runs with clipping on (clip = norm or value) and their clipped norms"),
    "saturation": Needs("runs with activation statistics", "supervised", ("activation", "depth", "init")),
    "update_ratio": Needs("runs with update ratios"),
    "optimizer_curves": Needs("runs with training-loss records", vary=("optimizer setting",)),
    "optimizer_results": Needs("runs with a final validation result and a clock", vary=("optimizer setting",)),
    "bptt": Needs("runs with per-time-step BPTT norms", "recurrent"),
    "recurrent_curves": Needs("runs with loss records", "recurrent"),
    "clipping_effect": Needs("pairs of runs that differ only in clipping (clip = none and clip = norm or value)"),
    "output_gradient": Needs("breast_cancer runs with both the bce and the mse loss"),
    "gan_gradient": Needs("runs with the generator's readout gradient", "gan"),
}  # fmt: skip


def _values(runs: pd.DataFrame, dimension: str) -> set[str]:
    """The distinct values of a config column or DERIVED dimension among `runs` (missing ones left out)."""
    if dimension in DERIVED:
        return {str(DERIVED[dimension](run)) for run in runs.to_dict("records")}
    return {str(v) for v in runs[dimension].dropna()} if dimension in runs else set()


def lacks(needs: Needs) -> str:
    """The reason a figure is not drawn when the study holds none of the records it draws."""
    kind = TASKS[needs.task][0]
    return f"this study has no {kind + ' ' if kind else ''}{needs.data}"


def unmet(needs: Needs, runs: pd.DataFrame) -> str | None:
    """Why a figure with these needs cannot say anything about `runs` (one sentence), or None when it can."""
    runs = summary.ensure_columns(runs)
    kind, belongs = TASKS[needs.task]
    chosen = runs[belongs(runs)]
    if chosen.empty:
        return lacks(needs)
    if needs.vary and all(len(_values(chosen, d)) < 2 for d in needs.vary):
        fixed = ", ".join(f"{d} = {', '.join(sorted(_values(chosen, d))) or 'unset'}" for d in needs.vary)
        counted = plural(len(chosen), f"{kind} run" if kind else "run")
        return f"it compares {' or '.join(needs.vary)}, which this study's {counted} do not vary ({fixed})"
    return None
