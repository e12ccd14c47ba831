"""The report's figures, one decorated function each (analysis/figures/registry.py), split by theme.

Every figure takes the study's `runs` (one row per trial) and `stats` (long table) from analysis.load and
returns a matplotlib Figure, or None when the study holds nothing it can show, so any study, even a
partial one, makes a report. Importing this package imports every theme module (registry.THEMES), which
registers its figures; REGISTRY lists them in the order the report draws them.
"""

from __future__ import annotations

from analysis.figures.gains import backprop_by_layer, gain_scatter, gradient_heatmaps, pick_runs
from analysis.figures.gan import gan_gradient
from analysis.figures.losses import output_gradient
from analysis.figures.phase import phase_diagram
from analysis.figures.recurrent import bptt, recurrent_curves
from analysis.figures.registry import DERIVED, TASKS, THEMES, FigureEntry, Needs, entries, figure, lacks, unmet
from analysis.figures.style import DPI, HEATMAP_CMAP, new_figure, plural, save_figure, styled
from analysis.figures.training import (
    PAIR_CONFIG,
    clipping,
    clipping_effect,
    clipping_pairs,
    optimizer_curves,
    optimizer_results,
    optimizer_setting,
    update_ratio,
)
from analysis.figures.units import saturation

REGISTRY = entries()  # every theme module is imported above
# Views of the registry under the names the report, tests and benchmarks use.
FIGURES = {name: entry.draw for name, entry in REGISTRY.items()}
NEEDS = {name: entry.needs for name, entry in REGISTRY.items()}
# Figures of one task's studies (the losses and gan specs): other studies leave them out.
TASK_FIGURES = tuple(name for name, entry in REGISTRY.items() if entry.theme in ("losses", "gan"))

__all__ = [
    "DERIVED",
    "DPI",
    "FIGURES",
    "HEATMAP_CMAP",
    "NEEDS",
    "PAIR_CONFIG",
    "REGISTRY",
    "TASKS",
    "TASK_FIGURES",
    "THEMES",
    "FigureEntry",
    "Needs",
    "backprop_by_layer",
    "bptt",
    "clipping",
    "clipping_effect",
    "clipping_pairs",
    "figure",
    "gain_scatter",
    "gan_gradient",
    "gradient_heatmaps",
    "lacks",
    "new_figure",
    "optimizer_curves",
    "optimizer_results",
    "optimizer_setting",
    "output_gradient",
    "phase_diagram",
    "pick_runs",
    "plural",
    "recurrent_curves",
    "save_figure",
    "saturation",
    "styled",
    "unmet",
    "update_ratio",
]
