"""The look of every figure and report page: palettes, markers, the seaborn style, the Agg figure, DPI, the page CSS.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: nothing global
changes, no figure leaks, and it works headless. Colours and markers are defined once, here (an
activation's colour in its registry entry, gradprobe/activations.py), per activation, init, optimizer,
recurrent cell, loss and outcome.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis import summary
from gradprobe.activations import ACTIVATIONS

DPI = 110

_CB = sns.color_palette("colorblind")
GREY = "0.55"
ACTIVATION_COLORS = {name: to_rgb(act.color) for name, act in ACTIVATIONS.items()}
INIT_MARKERS = {
    "torch_default": "o",
    "xavier_uniform": "s",
    "xavier_normal": "D",
    "kaiming_uniform": "^",
    "kaiming_normal": "v",
    "orthogonal": "P",
    "normal": "X",
    "identity": "*",
}
OPTIMIZER_COLORS = dict(
    zip(("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"), sns.color_palette("Dark2", 7))
)
CELL_COLORS = {"rnn": _CB[3], "lstm": _CB[0], "gru": _CB[2]}
OUTCOME_COLORS = {"trained": "#4daf4a", "vanished": "#80b1d3", "diverged": "#e41a1c"}
TEXT_ON = {"trained": "white", "vanished": "black", "diverged": "white"}  # readable on each outcome colour
THEORY_MARKERS = {summary.MEAN_FIELD: "o", summary.BATCH_NORM: "s", summary.RESIDUAL: "^"}
DEPTH_DASHES = ("", (4, 1.5), (1, 1), (3, 1, 1, 1), (6, 2))  # "" = solid
HEATMAP_CMAP = "magma"
SATURATING = tuple(name for name, act in ACTIVATIONS.items() if act.saturating)
EMPTY_CELL = "0.93"  # a phase-diagram cell no run sampled
LOSS_COLORS = {"bce": _CB[0], "mse": _CB[1], "gan_nonsaturating": _CB[0], "gan_saturating": _CB[3]}
SMOOTH_POINTS = 5  # mini-batch noise: each run's curve is a rolling median over this many logged steps

# The page style of the study report and the invariance report.
PAGE_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; }
section.fig { display: flex; gap: 1.5em; align-items: flex-start; margin: 1.5em 0;
  border-top: 1px solid #ddd; padding-top: 1em; }
section.fig img { max-width: 68%; height: auto; }
section.fig p { line-height: 1.45; }
table.runs { border-collapse: collapse; font-size: 0.75em; display: block; max-width: 100%; overflow-x: auto; }
table.runs th, table.runs td { padding: 2px 5px; border-bottom: 1px solid #eee; text-align: right; }
table.runs th { position: sticky; top: 0; background: #fff; }
.rule { background: #f6f6f6; padding: 0.6em 1em; }
</style>"""


def styled(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """Draw inside the reports' seaborn style (a context: global rcParams stay untouched)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Figure | None:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: float = 5.0,
    height: float = 3.8,
    min_width: float = 8.5,
    legend_room: float = 0.0,
    **subplots,
) -> tuple[Figure, np.ndarray]:
    """A Figure on the Agg canvas with a 2-D array of axes, each about `width` × `height` inches."""
    # At least min_width wide: the title and an outside legend must fit beside a single panel; legend_room
    # inches more for a legend beside panels of any count.
    fig = Figure(figsize=(max(width * ncols + legend_room, min_width), height * nrows), layout="constrained")
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


def color_or_grey(palette: dict, key: object) -> object:
    """The palette's colour for `key`, grey for a key it lacks."""
    return palette.get(key, GREY)


def plain_log_ticks(axis, max_span: float = 300.0) -> None:
    """On a log axis spanning less than `max_span`, ticks at 1, 2, 5 × 10ⁿ as plain numbers (6×10⁻¹ reads badly)."""
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or hi / lo > max_span:
        return
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def whole_ticks(axis) -> None:
    """Ticks at whole numbers only (layer indices, steps), even when the axis spans less than one."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def facet_axes(names: list[str], ncols: int = 3, **kwargs) -> tuple[Figure, dict[str, object]]:
    """One axes per name in a grid of at most `ncols` columns; unused axes are hidden."""
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, **kwargs)
    flat = axes.ravel()
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    return fig, dict(zip(names, flat))


def activation_init_handles(runs: pd.DataFrame) -> list[Line2D]:
    """Legend entries: a colour per activation and a marker per init present in `runs`."""
    acts = [a for a in ACTIVATION_COLORS if a in set(runs["activation"])]
    inits = [i for i in INIT_MARKERS if i in set(runs["init"])]
    handles = [Line2D([], [], color=color_or_grey(ACTIVATION_COLORS, a), lw=2.5, label=a) for a in acts]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[i], ls="", label=i) for i in inits]
    return handles


def median_line(ax, rows: pd.DataFrame, color: object, dashes: tuple | str = "") -> None:
    """Median over runs of each run's rolling median of `value` at each step, with the interquartile band."""
    rows = rows.sort_values("step")
    smooth = rows.groupby("run_id")["value"].transform(
        lambda v: v.rolling(SMOOTH_POINTS, center=True, min_periods=1).median()
    )
    q = rows.assign(value=smooth).groupby("step")["value"].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], color=color, lw=1.6, **({"dashes": dashes} if dashes else {}))
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, lw=0)
