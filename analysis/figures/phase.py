"""The trainability phase diagram: depth × activation/init, coloured by each cell's training outcome."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis.figures.common import arch_order, non_recurrent, objective_values
from analysis.figures.registry import Needs, dimension, figure
from analysis.figures.style import (
    EMPTY_CELL,
    OUTCOME_COLORS,
    TEXT_ON,
    facet_axes,
)
from analysis.summary import arch, value


def _cell_column(run: dict) -> str:
    gain = float(value(run, "init_gain", 1.0))
    return f"{value(run, 'activation', '?')}\n{value(run, 'init', '?')}" + (f" ×{gain:g}" if gain != 1 else "")


@dimension("activation/init")
def activation_init(run: dict) -> str:
    """A run's phase-diagram column on one line: its activation and init (× init_gain when not 1)."""
    return _cell_column(run).replace("\n", " ")


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
    ax.pcolormesh(
        np.ma.masked_invalid(grid),
        cmap=ListedColormap(list(OUTCOME_COLORS.values())),
        vmin=-0.5,
        vmax=2.5,
        edgecolors="white",
        linewidth=1.5,
    )
    ax.set_xticks(np.arange(len(columns)) + 0.5, columns, fontsize=7)
    ax.set_yticks(np.arange(len(depths)) + 0.5, [str(int(d)) for d in depths])
    ax.set(xlim=(0, len(columns)), ylim=(0, len(depths)), facecolor=EMPTY_CELL)  # no run in the cell
    ax.grid(False)


@figure(
    title="Trainability phase diagram",
    caption=(
        "Cells are depth × activation/init, one panel per architecture; the colour is the outcome of the best "
        "run in the cell, the number its objective (and k/n = how many of n runs trained, when there are "
        "several); light grey cells are combinations no run sampled. Rule: {rule}. "
        "Mean-field theory predicts that plain networks away from χ₁ = 1 (sigmoid; tanh "
        "or ReLU with a too-small or too-large init) fail more often as depth grows, that batch norm without "
        "skips explodes with depth, and that residual connections with a small α keep deep nets trainable."
    ),
    needs=Needs("runs with a depth and a training outcome", "supervised", ("depth",)),
    takes_objective=True,
)
def phase_diagram(
    runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/acc", direction: str = "maximize"
) -> Figure | None:
    """Depth × activation/init cells per architecture, coloured trained/vanished/diverged, with the best objective."""
    runs = non_recurrent(runs)
    runs = runs[runs["depth"].notna() & runs["training"].isin(list(OUTCOME_COLORS))]  # no loss record: no place
    if runs.empty:
        return None
    records = runs.to_dict("records")
    table = runs.assign(
        arch=[arch(r) for r in records],
        column=[_cell_column(r) for r in records],
        objective=objective_values(runs, stats, objective).to_numpy(),
    )
    columns = sorted(table["column"].unique())
    depths = sorted(table["depth"].unique())  # shallow at the bottom, deep on top
    names = [a for a in arch_order(runs) if a in set(table["arch"])]
    # One architecture per row: the activation/init columns make each panel wide.
    fig, axes = facet_axes(
        names, ncols=1, width=max(4.0, 0.85 * len(columns) + 1.5), height=max(2.2, 0.5 * len(depths) + 1.5)
    )
    for name, ax in axes.items():
        _phase_panel(ax, table[table["arch"] == name], depths, columns, ascending=direction != "maximize")
        ax.set(title=name, xlabel="activation / init", ylabel="depth (hidden layers)")
    handles = [Patch(color=c, label=k) for k, c in OUTCOME_COLORS.items()]
    if len(table[["arch", "depth", "column"]].drop_duplicates()) < len(names) * len(depths) * len(columns):
        handles.append(Patch(facecolor=EMPTY_CELL, edgecolor="0.75", label="not sampled"))
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="outcome")
    fig.suptitle(f"Trainability by depth and activation/init (number: best {objective}; k/n: runs trained)")
    return fig
