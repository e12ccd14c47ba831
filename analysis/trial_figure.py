"""One run's gradient profile at a glance: a small PNG drawn from the recorder's own table (no MLflow read).

Three panels over layer (0 = input side) × training step: log₁₀ ‖∂L/∂W‖ (grad/<layer>/l2), log₁₀ of the
back-propagated ‖∂L/∂x‖ (backprop/<layer>/l2) and log₁₀ of the update ratio ‖ΔW‖/‖W‖ (update/<layer>/ratio).
A vanishing net is dark towards the input, an exploding one bright; the update panel shows which layers learn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import HEATMAP_CMAP, _edges, new_figure
from analysis.load import layer_index

ARTIFACT = "figures/gradient_profile.png"
PANELS = (("grad", "l2", "log₁₀ ‖∂L/∂W‖"), ("backprop", "l2", "log₁₀ ‖∂L/∂x‖"), ("update", "ratio", "log₁₀ ‖ΔW‖/‖W‖"))
DPI = 72  # small: a glance in the Artifacts tab, and cheap to draw for every trial


def _grid(table: pd.DataFrame, family: str, stat: str) -> pd.DataFrame | None:
    """Layer × step table of log₁₀ values of one per-layer statistic (None when the run has none)."""
    rows = table[(table["family"] == family) & (table["stat"] == stat) & (table["layer"] != "")]
    if rows.empty:
        return None
    hidden = rows["layer"].str.match(r"^L\d{3}$")
    depth = int(rows.loc[hidden, "layer"].str[1:].astype(int).max()) + 1 if hidden.any() else 0
    index = rows["layer"].astype(str).map(lambda name: layer_index(name, depth))
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(rows["value"].where(rows["value"] > 0).to_numpy(float))
    frame = pd.DataFrame({"layer_index": index.to_numpy(), "step": rows["step"].to_numpy(), "log": logs})
    return frame.pivot_table(index="layer_index", columns="step", values="log", dropna=False)


def draw(table: pd.DataFrame, title: str = "") -> Figure | None:
    """The gradient profile of one run from its long table (step, layer, family, stat, value); None without data."""
    grids = [(label, _grid(table, family, stat)) for family, stat, label in PANELS]
    grids = [(label, grid) for label, grid in grids if grid is not None]
    if not grids:
        return None
    fig, axes = new_figure(1, len(grids), width=3.2, height=2.6, min_width=0)
    for ax, (label, grid) in zip(axes[0], grids):
        cells = np.ma.masked_invalid(grid.to_numpy())
        finite = cells.compressed()
        vmin, vmax = (np.quantile(finite, 0.02), np.quantile(finite, 0.98)) if finite.size else (-1.0, 1.0)
        mesh = ax.pcolormesh(_edges(grid.columns.to_numpy(float)), _edges(grid.index.to_numpy(float)), cells,
                             cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax)  # fmt: skip
        ax.set_facecolor("0.85")  # non-finite cells (a diverged step) show as grey
        ax.set_title(label, fontsize="small")
        ax.set_xlabel("step", fontsize="small")
        ax.tick_params(labelsize="x-small")
        fig.colorbar(mesh, ax=ax, shrink=0.9).ax.tick_params(labelsize="x-small")
    axes[0][0].set_ylabel("layer (0 = input)", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="small")
    return fig
