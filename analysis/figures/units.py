"""What the units do: saturated (sigmoid, tanh) and zero (ReLU) units by layer over training."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import summary
from analysis.figures.common import non_recurrent
from analysis.figures.registry import Needs, figure
from analysis.figures.style import (
    ACTIVATION_COLORS,
    GREY,
    INIT_MARKERS,
    SATURATING,
    new_figure,
    whole_ticks,
)
from analysis.summary import select

# -------------------------------------------------------------------------------- saturation


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


@figure(
    title="Saturation and dead units",
    caption=(
        "Share of units whose derivative is below 5 % of its maximum (act/saturation/&lt;layer&gt;): sigmoid "
        "near 0/1, tanh near ±1, ReLU outputs exactly 0, at the start, middle and end of training, averaged "
        "over runs. Glorot &amp; Bengio (2010): the top sigmoid layers saturate early and slow learning. For ReLU "
        "about half the outputs are 0 at initialization by symmetry; a layer drifting towards 1 is dying."
    ),
    needs=Needs("runs with activation statistics", "supervised", ("activation", "depth", "init")),
)
def saturation(runs: pd.DataFrame, stats: pd.DataFrame) -> Figure | None:
    """Share of saturated (sigmoid/tanh) or zero (ReLU) units by layer at the start, middle and end of training."""
    rows = summary.hidden(select(stats, "act", "saturation"))
    info = non_recurrent(runs)
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
                ax.plot(
                    line.index.get_level_values("layer_index"),
                    line.to_numpy(),
                    color=phases[phase],
                    marker=INIT_MARKERS.get(init, "o"),
                    ms=4,
                    lw=1.4,
                )
        ax.set(
            ylim=(-0.02, 1.02),
            xlabel="hidden layer index (0 = input side)" if i == len(depths) - 1 else "",
            ylabel="share of units" if j == 0 else "",
        )
        whole_ticks(ax.xaxis)
    handles = [Line2D([], [], color=c, lw=2, label=f"{p} of training") for p, c in phases.items()]
    handles += [Line2D([], [], color="0.3", marker=INIT_MARKERS[k], ls="", label=k) for k in inits]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle("Saturated units (φ′ < 5 % of max) and zero ReLU outputs by layer, mean over runs")
    return fig
