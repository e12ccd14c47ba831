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

from analysis import load, summary
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
THEORY_MARKERS = {summary.MEAN_FIELD: "o", summary.BATCH_NORM: "s", summary.RESIDUAL: "^"}
DEPTH_DASHES = ("", (4, 1.5), (1, 1), (3, 1, 1, 1), (6, 2))  # "" = solid
HEATMAP_CMAP = "magma"
SATURATING = ("sigmoid", "tanh")


# ------------------------------------------------------------------------------------------ helpers


def styled(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """Run a figure function inside the report's seaborn style (a context: global rcParams stay untouched)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Figure | None:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
            return fn(*args, **kwargs)

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
    return runs[~runs.get("model", pd.Series("mlp", index=runs.index)).isin(RECURRENT)]


def _arch_order(runs: pd.DataFrame) -> list[str]:
    """Architectures present, plain first, then batch norm, then residual ones, then the rest."""
    names = {arch(r) for r in runs.to_dict("records")}
    rank = {"plain": 0, "batch norm": 1, "layer norm": 2}
    return sorted(names, key=lambda a: (rank.get(a, 3 if a.startswith("residual") else 4), a))


def _no_legend(ax) -> None:
    if ax.get_legend() is not None:
        ax.get_legend().remove()


def _activation_init_handles(runs: pd.DataFrame) -> list[Line2D]:
    """Legend entries: a colour per activation and a marker per init present in `runs`."""
    acts = [a for a in ACTIVATION_COLORS if a in set(runs.get("activation", []))]
    inits = [i for i in INIT_MARKERS if i in set(runs.get("init", []))]
    handles = [Line2D([], [], color=_color(ACTIVATION_COLORS, a), lw=2.5, label=a) for a in acts]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[i], ls="", label=i) for i in inits]
    return handles


# ------------------------------------------------------------------------- 1. backprop by layer

STEP0_CONFIG = ("dataset", "model", "norm", "activation", "init", "init_gain", "res_scale", "depth", "width",
                "batch_size", "seed")  # fmt: skip  (what the step-0 gradient depends on; not optimizer or clipping)


def _one_per_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in STEP0_CONFIG if c in runs]
    return runs.drop_duplicates(subset=columns) if columns else runs


@styled
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
        ax.set_ylabel("‖∂L/∂x_l‖ at step 0 (L2 over batch)")
    handles = _activation_init_handles(chosen)
    handles += [Line2D([], [], color="0.3", lw=1.4, label="measured")]
    if drew_theory:
        handles += [Line2D([], [], color="0.3", ls=":", lw=1.6, label="theory (anchored at\nlast hidden layer)")]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Back-propagated gradient norm at initialization, by layer")
    return fig


# ------------------------------------------------------------------ 2. measured vs predicted gain


@styled
def gain_scatter(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Measured vs predicted per-layer gain at step 0, one point per run, with y = x and the healthy band."""
    gains = summary.gain_table(runs, stats).merge(runs, on="run_id")
    gains = gains[np.isfinite(gains["measured_gain"]) & (gains["measured_gain"] > 0)]
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
    for run in shown.to_dict("records"):
        ax.scatter(run["predicted_gain"], run["measured_gain"], s=42, alpha=0.85, edgecolor="white", linewidth=0.5,
                   color=_color(ACTIVATION_COLORS, value(run, "activation")),
                   marker=THEORY_MARKERS.get(run["theory"], "o"))  # fmt: skip
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    _plain_log_ticks(ax.xaxis, max_span=math.inf)
    _plain_log_ticks(ax.yaxis, max_span=math.inf)
    ax.set_xlabel("predicted gain per layer (theory)")
    ax.set_ylabel("measured gain per layer at step 0\n(geometric mean of ‖∂L/∂x(l−1)‖ / ‖∂L/∂x(l)‖)")
    ax.set_title("Per-layer gradient gain: measured vs mean-field prediction")
    acts = [a for a in ACTIVATION_COLORS if a in set(shown.get("activation", []))]
    handles = [Line2D([], [], color=ACTIVATION_COLORS[a], marker="o", ls="", label=a) for a in acts]
    handles += [Line2D([], [], color="0.3", marker=THEORY_MARKERS[t], ls="", label=t)
                for t in THEORY_MARKERS if t in set(shown["theory"])]  # fmt: skip
    handles += [Line2D([], [], color="0.3", ls="--", label="y = x"),
                Patch(color=OUTCOME_COLORS["trained"], alpha=0.3, label=f"healthy: 1 ± {tol:g}")]  # fmt: skip
    missing = len(gains) - len(shown)
    if missing:
        handles.append(Line2D([], [], ls="", label=f"{missing} run(s) with no closed-form\nprediction: not shown"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    return fig


# ------------------------------------------------------------------ 3. layer × step heatmaps


def pick_runs(runs: pd.DataFrame, stats: pd.DataFrame, max_runs: int = 6) -> list[str]:
    """Runs spread over the range of measured gains, most vanishing to most exploding (diverged ones included)."""
    gains = summary.gain_table(runs, stats)
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


@styled
def gradient_heatmaps(runs: pd.DataFrame, stats: pd.DataFrame, run_ids: Iterable[str] | None = None,
                      max_runs: int = 6) -> Figure | None:  # fmt: skip
    """log₁₀ ‖∇W‖ (grad/<layer>/l2) as layer × step heatmaps, one small panel per chosen run, one colour scale."""
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
    gains = summary.gain_table(runs[runs["run_id"].isin(ids)], stats).set_index("run_id")
    info = runs.set_index("run_id")
    mesh = None
    for run_id, ax in axes.items():
        table = grads[grads["run_id"] == run_id].pivot_table(index="layer_index", columns="step", values="log")
        cells = np.ma.masked_invalid(table.to_numpy())
        mesh = ax.pcolormesh(_edges(table.columns.to_numpy(float)), _edges(table.index.to_numpy(float)), cells,
                             cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax)  # fmt: skip
        ax.set_facecolor("0.85")  # masked (non-finite) cells show as grey
        run = info.loc[run_id].to_dict()
        ax.set_title(f"{label(run)}\n{_training_setup(run)}\n{_gain_text(gains.loc[run_id], run)}", fontsize="small")
        ax.set_xlabel("training step")
        ax.set_ylabel("layer (0 = input; top = readout)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(False)
    fig.colorbar(mesh, ax=list(axes.values()), label="log₁₀ ‖∂L/∂W‖₂ (grad/<layer>/l2)", shrink=0.8)
    fig.suptitle("Weight-gradient norm by layer and step")
    return fig


def _training_setup(run: dict) -> str:
    clip = value(run, "clip", "none")
    clip_text = "no clip" if clip == "none" else f"clip {clip} {float(value(run, 'clip_threshold')):g}"
    return f"{value(run, 'optimizer', '?')} lr {float(value(run, 'lr', math.nan)):g}, {clip_text}"


def _gain_text(gain: pd.Series, run: dict) -> str:
    text = f"gain {gain['measured_gain']:.2f}/layer: {gain['verdict']}" if gain["verdict"] != "n/a" else "no gain (< 2 layers)"
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


@styled
def phase_diagram(runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/acc",
                  direction: str = "maximize") -> Figure | None:  # fmt: skip
    """Depth × activation/init cells per architecture, coloured trained / vanished / diverged, with the best objective."""
    runs = _non_recurrent(runs)
    if runs.empty or "depth" not in runs:
        return None
    table = runs.assign(
        arch=[arch(r) for r in runs.to_dict("records")],
        column=[f"{value(r, 'activation', '?')}\n{value(r, 'init', '?')}" + (f" ×{float(value(r, 'init_gain', 1)):g}"
                if float(value(r, 'init_gain', 1)) != 1 else "") for r in runs.to_dict("records")],
        training=summary.training_outcome(runs, stats).reindex(runs["run_id"]).to_numpy(),
        objective=_objective_values(runs, stats, objective).reindex(runs["run_id"]).to_numpy(),
    )  # fmt: skip
    ascending = direction != "maximize"
    columns = sorted(table["column"].unique())
    depths = sorted(table["depth"].unique(), reverse=True)  # deepest on top, like a phase diagram's y axis
    codes = {name: i for i, name in enumerate(OUTCOME_COLORS)}
    # One architecture per row: the activation/init columns make each panel wide.
    fig, axes = _facet_axes(_arch_order(runs), ncols=1, width=max(4.0, 0.85 * len(columns) + 1.5),
                            height=max(2.2, 0.5 * len(depths) + 1.5))  # fmt: skip
    for name, ax in axes.items():
        cells = table[table["arch"] == name].sort_values("objective", ascending=ascending, na_position="last")
        best = cells.groupby(["depth", "column"], sort=False).first()
        trained = cells.groupby(["depth", "column"])["training"].agg(lambda s: f"{(s == 'trained').sum()}/{len(s)}")
        grid = np.full((len(depths), len(columns)), np.nan)
        text = np.full(grid.shape, "", dtype=object)
        for (depth, column), row in best.iterrows():
            i, j = depths.index(depth), columns.index(column)
            grid[i, j] = codes[row["training"]]
            text[i, j] = "–" if not math.isfinite(row["objective"]) else f"{row['objective']:.2f}"
            if not trained[(depth, column)].endswith("/1"):
                text[i, j] += f"\n{trained[(depth, column)]}"
        sns.heatmap(grid, ax=ax, cmap=ListedColormap(list(OUTCOME_COLORS.values())), vmin=-0.5, vmax=2.5,
                    annot=text, fmt="", cbar=False, linewidths=1, linecolor="white", annot_kws={"fontsize": 8},
                    xticklabels=columns, yticklabels=[int(d) for d in depths])  # fmt: skip
        ax.set_facecolor("0.96")  # cells without runs
        ax.grid(False)
        ax.set_title(name)
        ax.set_xlabel("activation / init")
        ax.set_ylabel("depth (hidden layers)")
        ax.tick_params(axis="x", labelsize=7, rotation=0)
        ax.tick_params(axis="y", rotation=0)
    handles = [Patch(color=c, label=k) for k, c in OUTCOME_COLORS.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="outcome")
    fig.suptitle(f"Trainability by depth and activation/init (number: best {objective}; k/n: runs trained)")
    return fig


# ---------------------------------------------------------------------------------- 5. clipping


def _clipping_name(run: dict) -> str:
    return f"{value(run, 'clip', 'none')} {float(value(run, 'clip_threshold', math.nan)):g}"


@styled
def clipping(runs: pd.DataFrame, stats: pd.DataFrame, max_runs: int = 6) -> Figure | None:
    """Global gradient norm before vs after clipping over steps, and the share of logged steps clipped."""
    clipped_runs = runs[runs.get("clip", pd.Series("none", index=runs.index)) != "none"]
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
                               optimizer=clipped_runs.get("optimizer", "?"))  # fmt: skip
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
    left.legend(fontsize="x-small", title="clip · optimizer", title_fontsize="x-small", ncols=2,
                loc="upper center", bbox_to_anchor=(0.5, -0.18))  # below the axes: the curves fill the panel
    share = both.groupby("run_id")["clipped"].mean().rename("share").reset_index().merge(info, on="run_id")
    order = sorted(share["setting"].unique(), key=lambda s: (s.split()[0], float(s.split()[1])))
    hues = [o for o in OPTIMIZER_COLORS if o in set(share["optimizer"])] or sorted(set(share["optimizer"]))
    sns.barplot(share, x="setting", y="share", hue="optimizer", order=order, hue_order=hues, ax=right,
                palette={o: _color(OPTIMIZER_COLORS, o) for o in hues}, errorbar=None)  # fmt: skip
    right.set(ylim=(0, 1.05), xlabel="clipping (algorithm, threshold)", ylabel="share of logged steps clipped",
              title="how often clipping acted")  # fmt: skip
    right.legend(fontsize="x-small", title="optimizer", title_fontsize="x-small", ncols=len(hues),
                 loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.suptitle("Gradient clipping")
    return fig


# -------------------------------------------------------------------------------- 6. saturation


def _progress_phase(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's first, middle and last logged step, labelled start / middle / end."""
    steps = rows.groupby("run_id")["step"].agg(["min", "max"])
    keep = []
    for run_id, group in rows.groupby("run_id"):
        logged = np.sort(group["step"].unique())
        lo, hi = steps.loc[run_id]
        for name, target in (("start", lo), ("middle", (lo + hi) / 2), ("end", hi)):
            step = logged[np.abs(logged - target).argmin()]
            keep.append(group[group["step"] == step].assign(phase=name))
    return pd.concat(keep, ignore_index=True)


@styled
def saturation(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Share of saturated units (sigmoid/tanh) or zero outputs (ReLU) by layer at the start, middle and end; activation × depth panels."""
    rows = summary.hidden(select(stats, "act", "saturation"))
    info = _non_recurrent(runs)
    rows = rows[np.isfinite(rows["value"])].merge(info[["run_id", "activation", "init", "depth"]], on="run_id")
    if rows.empty:
        return None
    rows = _progress_phase(rows)
    # A panel per activation and depth: averaging layer l over nets of different depths would mix layers
    # that sit at different distances from the output.
    acts = [a for a in ACTIVATION_COLORS if a in set(rows["activation"])] + sorted(
        set(rows["activation"]) - set(ACTIVATION_COLORS))
    depths = sorted(rows["depth"].unique())
    fig, axes = new_figure(len(depths), len(acts), width=3.8, height=2.7, sharey=True)
    inits = [i for i in INIT_MARKERS if i in set(rows["init"])]
    phases = dict(zip(("start", "middle", "end"), sns.color_palette("crest", 3)))
    for (i, depth), (j, act) in itertools.product(enumerate(depths), enumerate(acts)):
        ax, panel = axes[i, j], rows[(rows["activation"] == act) & (rows["depth"] == depth)]
        kind = "saturated" if act in SATURATING else "exactly 0 (off/dead)"
        ax.set_title(f"{act}, depth {depth}: {kind}", fontsize="small")
        if panel.empty:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color=GREY)
        else:
            sns.lineplot(panel, x="layer_index", y="value", hue="phase", hue_order=list(phases), palette=phases,
                         style="init", style_order=inits, markers={k: INIT_MARKERS[k] for k in inits}, dashes=False,
                         errorbar=None, legend=False, ax=ax)  # fmt: skip
        ax.set(ylim=(-0.02, 1.02), xlabel="hidden layer index (0 = input side)" if i == len(depths) - 1 else "",
               ylabel="share of units" if j == 0 else "")  # fmt: skip
    handles = [Line2D([], [], color=c, lw=2, label=f"{p} of training") for p, c in phases.items()]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[k], ls="", label=k) for k in inits]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Saturated units (φ′ < 5 % of max) and zero ReLU outputs by layer, mean over runs")
    return fig


# ------------------------------------------------------------------------------ 7. update ratio


@styled
def update_ratio(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖ΔW‖/‖W‖ per layer (median over training) and over steps (median over layers), one line per optimizer."""
    rows = select(stats, "update", "ratio")
    rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0) & (rows["layer"] != "")]
    info = _non_recurrent(runs)
    if rows.empty or info.empty:
        return None
    rows = load.with_layer_index(rows).merge(info[["run_id", "optimizer", "depth"]], on="run_id")
    if rows.empty:
        return None
    hues = [o for o in OPTIMIZER_COLORS if o in set(rows["optimizer"])] or sorted(set(rows["optimizer"]))
    palette = {o: _color(OPTIMIZER_COLORS, o) for o in hues}
    by_layer = rows.groupby(["run_id", "optimizer", "depth", "layer_index"], as_index=False)["value"].median()
    by_step = rows.groupby(["run_id", "optimizer", "step"], as_index=False)["value"].median()
    fig, axes = new_figure(1, 2, width=5.0, height=3.8, sharey=True)
    left, right = axes[0]
    common = dict(y="value", hue="optimizer", hue_order=hues, palette=palette, estimator="median",
                  errorbar=("pi", 50), marker="o", markersize=4)  # fmt: skip
    # Lines per depth on the left: layer l of a 6-layer net is its readout, of a 12-layer net a hidden layer.
    depths = sorted(by_layer["depth"].unique())
    dashes = {d: DEPTH_DASHES[i % len(DEPTH_DASHES)] for i, d in enumerate(depths)}
    sns.lineplot(by_layer, x="layer_index", style="depth", dashes=dashes, ax=left, **common)
    sns.lineplot(by_step, x="step", ax=right, **common)
    for ax in (left, right):
        ax.set_yscale("log")
        ax.axhline(1e-3, color="0.3", ls="--", lw=0.9)
        _plain_log_ticks(ax.yaxis)
    left.set(xlabel="layer index (0 = input side, last = readout)", ylabel="update ratio ‖ΔW‖ / ‖W‖ per step",
             title="by layer (median over training)")  # fmt: skip
    right.set(xlabel="training step", title="over training (median over layers)")
    left.text(0.02, 1.05e-3, "10⁻³ rule of thumb", transform=left.get_yaxis_transform(), fontsize="x-small",
              va="bottom")  # fmt: skip
    _no_legend(left)
    _no_legend(right)
    handles = [Line2D([], [], color=palette[o], lw=2, marker="o", ms=4, label=o) for o in hues]
    handles += [Line2D([], [], color="0.3", lw=1.5, label=f"depth {d}", **({"dashes": dash} if dash else {}))
                for d, dash in dashes.items()]  # fmt: skip
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

    Time is the median wall clock at each step rather than a grid of its own: runs end at different times, and
    a median over whichever runs cover a time point jumps as runs drop out.
    """
    grid = np.linspace(rows["step"].min(), rows["step"].max(), points)
    loss, time = [], []
    for _, run in rows.groupby("run_id"):
        run = run.sort_values("step")
        loss.append(np.interp(grid, run["step"], run["value"], left=np.nan, right=np.nan))
        time.append(np.interp(grid, run["step"], run["elapsed"], left=np.nan, right=np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points no run covers are all-NaN
        q = np.nanpercentile(np.vstack(loss), [25, 50, 75], axis=0)
        elapsed = np.nanmedian(np.vstack(time), axis=0)
    return pd.DataFrame({"step": grid, "elapsed": elapsed, "lo": q[0], "median": q[1], "hi": q[2]})


@styled
def optimizer_curves(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """train/loss and val/loss against step and against wall-clock time, one median line per optimizer."""
    if "optimizer" not in runs:
        return None
    fig, axes = new_figure(2, 2, width=4.6, height=3.3)
    drew: dict[str, int] = {}
    for i, (family, name) in enumerate((("train", "training loss"), ("val", "validation loss"))):
        rows = select(stats, family, "loss").merge(runs[["run_id", "optimizer"]], on="run_id")
        rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0)]
        rows = rows.assign(elapsed=_elapsed_at(stats, rows))
        for optimizer, group in rows.groupby("optimizer"):
            curve, color = _median_curve(group), _color(OPTIMIZER_COLORS, optimizer)
            drew[optimizer] = max(drew.get(optimizer, 0), group["run_id"].nunique())
            for ax, x in zip(axes[i], ("step", "elapsed")):
                ax.plot(curve[x], curve["median"], color=color, lw=1.8)
                ax.fill_between(curve[x], curve["lo"], curve["hi"], color=color, alpha=0.15, lw=0)
        for ax, xlabel in zip(axes[i], ("training step", "wall-clock time (s, median over runs)")):
            ax.set(yscale="log", xlabel=xlabel, ylabel=name)
            _plain_log_ticks(ax.yaxis)
    if not drew:
        return None
    order = [o for o in OPTIMIZER_COLORS if o in drew] + sorted(set(drew) - set(OPTIMIZER_COLORS))
    handles = [Line2D([], [], color=_color(OPTIMIZER_COLORS, o), lw=2, label=f"{o} ({drew[o]} run{'s' * (drew[o] > 1)})")
               for o in order]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="optimizer\n(median, IQR band)")
    fig.suptitle("Optimizers: loss against steps and against wall-clock time")
    return fig


# ----------------------------------------------------------------------------------- 9. BPTT


@styled
def bptt(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """‖∂L/∂h_t‖ against t for RNN/LSTM/GRU (first recurrent layer) at initialization and at the end, log y."""
    rows = load.bptt_by_time(stats)
    rows = rows[(rows["layer"] == "L000") & np.isfinite(rows["value"]) & (rows["value"] > 0)]
    info = runs[["run_id"] + [c for c in ("model", "seq_len", "clip") if c in runs]]
    rows = rows.merge(info, on="run_id")
    if rows.empty:
        return None
    last = rows.groupby("run_id")["step"].transform("max")
    fig, axes = new_figure(1, 2, width=5.0, height=3.8, sharey=True)
    cells = [c for c in CELL_COLORS if c in set(rows["model"])] or sorted(set(rows["model"]))
    for ax, (title, mask) in zip(axes[0], (("at initialization (step 0)", rows["step"] == 0),
                                           ("at the last logged step", rows["step"] == last))):  # fmt: skip
        sns.lineplot(rows[mask], x="t", y="value", hue="model", hue_order=cells, units="run_id", estimator=None,
                     palette={c: _color(CELL_COLORS, c) for c in cells}, lw=1.3, ax=ax)  # fmt: skip
        ax.set(yscale="log", title=title, xlabel="time step t (the loss reads the last step)",
               ylabel="‖∂L/∂h_t‖ (L2 over batch)")  # fmt: skip
        _plain_log_ticks(ax.yaxis)
        _no_legend(ax)
    handles = [Line2D([], [], color=_color(CELL_COLORS, c), lw=2, label=c) for c in cells]
    fig.legend(handles=handles, loc="outside right center", title="cell")
    fig.suptitle("Gradient through time: recurrent cells")
    return fig


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
    "bptt": bptt,
}
