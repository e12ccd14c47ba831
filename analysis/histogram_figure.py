"""The log10|g| histograms of one run over training: one heatmap per layer, like TensorBoard's histogram view.

Reads the long table a run wrote (family `hist`, gradprobe/histogram.py): x = log10|g| bin, y = logging step,
colour = the share of the layer's gradient entries in that bin. Exact zeros, non-finite values and the entries
outside the bins are not on the x axis; each panel's title gives their share over the run, so a layer whose
gradient is mostly exact zeros (dead ReLUs) or NaN reads at a glance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis.figures import HEATMAP_CMAP, new_figure
from analysis.trial_figure import SAVE  # noqa: F401  (a study logs this figure beside the profile, saved alike)
from gradprobe import histogram as H
from gradprobe import keys as K

ARTIFACT = "figures/gradient_histograms.png"  # a trial's run logs it when it recorded histograms (studies.ui)
MAX_LAYERS = 12  # panels; a deeper net shows its first and last layers (the ends where gradients vanish/explode)
NCOLS = 3


def layer_grid(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """(bin lower edges, steps, shares[step, bin], shares of the uncounted kinds) of one layer's `hist` rows."""
    counts = rows.pivot_table(index="step", columns="stat", values="value", aggfunc="sum", observed=True)
    counts = counts.reindex(columns=H.STATS, fill_value=0.0).fillna(0.0)
    total = counts.sum(axis=1).to_numpy()
    shares = counts.to_numpy() / np.where(total > 0, total, 1.0)[:, None]
    bins = [i for i, stat in enumerate(H.STATS) if K.hist_edge(stat) is not None]
    edges = np.asarray([K.hist_edge(H.STATS[i]) for i in bins])
    overall = counts.sum(axis=0) / max(total.sum(), 1.0)
    apart = {
        "zeros": overall[K.HIST_ZEROS],
        "non-finite": overall[K.HIST_NONFINITE],
        "outside": overall[K.HIST_UNDER] + overall[K.HIST_OVER],
    }
    return edges, counts.index.to_numpy(), shares[:, bins], apart


def pick_layers(layers: list[str], max_layers: int = MAX_LAYERS) -> list[str]:
    """All layers, or the first and last max_layers/2 of a deeper net."""
    if len(layers) <= max_layers:
        return layers
    half = max_layers // 2
    return layers[:half] + layers[-(max_layers - half) :]


def _occupied(grids: list[tuple]) -> tuple[float, float]:
    """The x range holding every non-empty bin of every panel, with one bin of margin."""
    lows, highs = [], []
    for edges, _, shares, _ in grids:
        used = edges[shares.sum(axis=0) > 0]
        if used.size:
            lows.append(used.min())
            highs.append(used.max())
    if not lows:
        return H.LOW, H.HIGH
    return max(H.LOW, min(lows) - H.WIDTH), min(H.HIGH, max(highs) + 2 * H.WIDTH)


def draw(table: pd.DataFrame, title: str = "", max_layers: int = MAX_LAYERS) -> Figure | None:
    """One heatmap per layer of log10|g| bins over steps, from a run's long table; None if it has no histograms."""
    rows = table[table["family"].astype(str) == K.HIST]
    if rows.empty:
        return None
    layers = pick_layers(list(dict.fromkeys(rows["layer"].astype(str))), max_layers)  # recorded (forward) order
    grids = [layer_grid(rows[rows["layer"].astype(str) == layer]) for layer in layers]
    low, high = _occupied(grids)
    ncols = min(NCOLS, len(layers))
    with sns.axes_style("white"), sns.plotting_context("notebook", font_scale=0.8):
        fig, axes = new_figure(math.ceil(len(layers) / ncols), ncols, width=3.6, height=2.6, sharex=True)
        for ax in axes.ravel()[len(layers) :]:
            ax.set_visible(False)
        for ax, layer, (edges, steps, shares, apart) in zip(axes.ravel(), layers, grids):
            x = np.append(edges, edges[-1] + H.WIDTH)
            y = np.arange(len(steps) + 1) - 0.5
            mesh = ax.pcolormesh(x, y, np.ma.masked_equal(shares, 0.0), cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0)
            ax.set_xlim(low, high)
            ticks = np.linspace(0, len(steps) - 1, min(len(steps), 5)).round().astype(int)
            ax.set_yticks(ticks, [str(steps[t]) for t in ticks])
            extra = ", ".join(f"{name} {share:.0%}" for name, share in apart.items() if share > 0)
            ax.set_title(layer + (f"\n{extra}" if extra else ""), fontsize="small")
        for ax in axes[-1]:
            ax.set_xlabel("log₁₀ |g|")
        for ax in axes[:, 0]:
            ax.set_ylabel("step")
        fig.colorbar(mesh, ax=axes.ravel().tolist(), label="share of the layer's entries", shrink=0.8)
        if title:
            fig.suptitle(title)
    return fig
