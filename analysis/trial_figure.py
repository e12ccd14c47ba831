"""One run's gradient profile at a glance: a small PNG drawn from the recorder's own table (no MLflow read).

Three panels over layer (0 = input side) × training step: log₁₀ ‖∂L/∂W‖ (grad/l2/<layer>), log₁₀ of the
back-propagated ‖∂L/∂x‖ (backprop/l2/<layer>) and log₁₀ of the update ratio ‖ΔW‖/‖W‖ (update/ratio/<layer>).
A vanishing net is dark towards the input, an exploding one bright; the update panel shows which layers learn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.figures.style import HEATMAP_CMAP
from analysis.load import layer_index

ARTIFACT = "figures/gradient_profile.png"
PANELS = (("grad", "l2", "log₁₀ ‖∂L/∂W‖"), ("backprop", "l2", "log₁₀ ‖∂L/∂x‖"), ("update", "ratio", "log₁₀ ‖ΔW‖/‖W‖"))
DPI = 80  # small: a glance in the Artifacts tab, and cheap to draw for every trial
# Pixels of one panel's image, its colour strip, and the margins around them.
PANEL_W, PANEL_H, STRIP_W, LEFT, BOTTOM, PANEL_STEP, HEIGHT = 190, 120, 8, 34, 34, 262, 200
SAVE = {"dpi": DPI, "pil_kwargs": {"compress_level": 1}}  # fast PNG compression: a few KiB more, much less time


def grid(table: pd.DataFrame, family: str, stat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(layer positions, steps, log₁₀ values[layer, step]) of one per-layer statistic; None when the run has none."""
    rows = table[(table["family"] == family) & (table["stat"] == stat) & (table["layer"] != "")]
    if rows.empty:
        return None
    names = rows["layer"].astype(str).to_numpy()
    hidden = [int(n[1:]) for n in set(names) if n.startswith("L") and n[1:].isdigit()]
    depth = max(hidden) + 1 if hidden else 0
    layers, layer_at = np.unique(np.array([layer_index(n, depth) for n in names]), return_inverse=True)
    steps, step_at = np.unique(rows["step"].to_numpy(), return_inverse=True)
    cells = np.full((layers.size, steps.size), np.nan)
    values = rows["value"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        cells[layer_at, step_at] = np.log10(np.where(values > 0, values, np.nan))  # no log of 0: a grey cell
    return layers, steps, cells


def _pixels(cells: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """RGBA pixels of a panel: cells scaled to PANEL_H × PANEL_W (nearest), top row = last layer, non-finite grey."""
    rows = np.linspace(0, cells.shape[0], PANEL_H, endpoint=False).astype(int)[::-1]
    cols = np.linspace(0, cells.shape[1], PANEL_W, endpoint=False).astype(int)
    cmap = colormaps[HEATMAP_CMAP].with_extremes(bad="0.85")
    scaled = (cells[np.ix_(rows, cols)] - vmin) / (vmax - vmin or 1.0)
    return cmap(np.ma.masked_invalid(scaled))


def draw(table: pd.DataFrame, title: str = "") -> Figure | None:
    """The gradient profile of one run from its long table (step, layer, family, stat, value); None without data.

    Images placed on the figure (figimage) with a few labels, not axes: ticks and layout took ~90 % of an
    axes-based figure's time, and this figure is drawn for every trial.
    """
    grids = [(label, grid(table, family, stat)) for family, stat, label in PANELS]
    grids = [(label, g) for label, g in grids if g is not None]
    if not grids:
        return None
    width = PANEL_STEP * len(grids)
    fig = Figure(figsize=(width / DPI, HEIGHT / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    strip = colormaps[HEATMAP_CMAP](np.linspace(1, 0, PANEL_H))[:, None, :].repeat(STRIP_W, axis=1)
    for i, (label, (layers, steps, cells)) in enumerate(grids):
        finite = cells[np.isfinite(cells)]
        vmin, vmax = (np.quantile(finite, 0.02), np.quantile(finite, 0.98)) if finite.size else (-1.0, 1.0)
        x0 = i * PANEL_STEP + LEFT
        fig.figimage(_pixels(cells, vmin, vmax), xo=x0, yo=BOTTOM, origin="upper")
        fig.figimage(strip, xo=x0 + PANEL_W + 4, yo=BOTTOM, origin="upper")
        text = {"transform": None, "fontsize": 7}  # positions in pixels
        fig.text(x0, BOTTOM + PANEL_H + 8, label, fontsize=8, transform=None)
        fig.text(x0 + PANEL_W + 4 + STRIP_W + 2, BOTTOM + PANEL_H - 8, f"{vmax:.2g}", **text)
        fig.text(x0 + PANEL_W + 4 + STRIP_W + 2, BOTTOM, f"{vmin:.2g}", **text)
        fig.text(x0, BOTTOM - 12, f"step {steps[0]}", **text)
        fig.text(x0 + PANEL_W, BOTTOM - 12, f"{steps[-1]}", ha="right", **text)
        fig.text(x0 - 4, BOTTOM, f"{layers[0]:g}", ha="right", **text)
        fig.text(x0 - 4, BOTTOM + PANEL_H - 8, f"{layers[-1]:g}", ha="right", **text)
    fig.text(4, BOTTOM + PANEL_H / 2, "layer (0 = input)", rotation=90, va="center", transform=None, fontsize=7)
    if title:
        fig.text(width / 2, HEIGHT - 14, title, ha="center", fontsize=8, transform=None)
    return fig
