"""A run's verdict on its gradients: the measured per-layer gain of the back-propagated norm at initialization.

Shared by the training run's one-line result (pipelines/train.py) and the analysis (analysis/summary.py through
analysis/theory.py), so a run's line and the study's report judge it by the same rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gradprobe.activations import ACTIVATIONS

if TYPE_CHECKING:  # pandas is the parquet extra's: the rules need only numpy
    import pandas as pd

HIDDEN_LAYER = re.compile(r"L\d{3,}")  # models.base.layer_name; the readout `out` is not a hidden layer


@dataclass(frozen=True)
class GainMeasurement:
    """A measured per-layer gain, the layers it spans (input side first) and the layers it leaves out."""

    gain: float  # NaN when fewer than two layers have a positive, finite norm
    first: int  # the input-side end of the span (−1 when there is none)
    last: int  # its output-side end
    left_out: tuple[tuple[int, str], ...]  # (layer index, why): norm 0, negative, NaN or inf

    def note(self, name: Callable[[int], str] = lambda i: f"L{i:03d}") -> str:
        """One sentence on the layers left out of the gain and why ('' when none were)."""
        if not self.left_out:
            return ""
        reasons = sorted({why for _, why in self.left_out})
        names = ", ".join(name(i) for i, _ in self.left_out)
        what = "layer" if len(self.left_out) == 1 else "layers"
        return f"{len(self.left_out)} {what} left out of the gain ({', '.join(reasons)}): {names}"


def _why_left_out(norm: float) -> str:
    if math.isnan(norm):
        return "norm NaN"
    if math.isinf(norm):
        return "norm inf"
    return "norm 0" if norm == 0 else "norm negative"


def measure_gain(norms_by_layer: Sequence[float] | np.ndarray) -> GainMeasurement:
    """Geometric mean of norm[l−1]/norm[l] over the layers whose backprop norm is positive and finite.

    Norms are given input side first (L000, L001, …). Over the span from the first to the last usable layer
    that is (norm[first]/norm[last])^(1/(last−first)): below 1 the back-propagated signal shrinks towards the
    input (vanishing), above 1 it grows (exploding). A norm of 0 (a gradient below what float32 holds, or a
    dead layer), NaN or inf says nothing about a ratio: that layer is left out and named in `left_out`.
    """
    norms = np.asarray(norms_by_layer, dtype=float)
    if norms.ndim != 1 or norms.size < 2:
        raise ValueError("need the norms of at least two layers, input side first")
    usable = np.isfinite(norms) & (norms > 0)
    left_out = tuple((int(i), _why_left_out(float(norms[i]))) for i in np.flatnonzero(~usable))
    kept = np.flatnonzero(usable)
    if kept.size < 2:
        return GainMeasurement(math.nan, -1, -1, left_out)
    first, last = int(kept[0]), int(kept[-1])
    # Only the end points survive the product of successive ratios; logs avoid overflow for deep nets.
    gain = math.exp((math.log(norms[first]) - math.log(norms[last])) / (last - first))
    return GainMeasurement(gain, first, last, left_out)


def measured_gain(norms_by_layer: Sequence[float] | np.ndarray) -> float:
    """The per-layer gain of `measure_gain` (NaN when fewer than two layers have a positive, finite norm)."""
    return measure_gain(norms_by_layer).gain


def verdict(gain_per_layer: float, tolerance: float = 0.05) -> str:
    """'vanishing' if gain < 1 − tolerance, 'exploding' if gain > 1 + tolerance, else 'healthy'."""
    if math.isnan(gain_per_layer):
        raise ValueError("no verdict for a NaN gain")
    if gain_per_layer < 1.0 - tolerance:
        return "vanishing"
    if gain_per_layer > 1.0 + tolerance:
        return "exploding"
    return "healthy"


def step0_gain(table: pd.DataFrame) -> float:
    """measured_gain of one run's step-0 `backprop/l2` of its hidden layers (recorder table), NaN if under two."""
    rows = table[(table["family"] == "backprop") & (table["stat"] == "l2") & (table["step"] == 0)]
    hidden = {
        str(layer): value for layer, value in zip(rows["layer"], rows["value"]) if HIDDEN_LAYER.fullmatch(str(layer))
    }
    norms = [hidden[layer] for layer in sorted(hidden, key=lambda name: int(name[1:]))]  # input side first
    return measured_gain(norms) if len(norms) >= 2 else math.nan


# -- one layer's verdict (the diagnosis, gradprobe/diagnose.py) -------------------------------------------
# Each threshold is a named constant so the report and docs/diagnosis.md quote the same numbers.

# One layer's ratio ‖∂L/∂x_l‖/‖∂L/∂x_{l+1}‖ fluctuates by about 1/√width around its mean-field value (±10 % at
# width 100), so a single layer needs a wider band than the network's geometric mean (`verdict`, ±5 %): outside
# [0.8, 1.25] (symmetric in log) the gradient shrinks or grows by 10× within about ten such layers.
LAYER_GAIN_BAND = 1.25
# A ReLU-like layer at a symmetric initialization passes gradient through about half of its (unit, example)
# entries; when 90 % pass none, most of the layer no longer learns (its units are dead for almost every input).
DEAD_SHARE = 0.9
# A sigmoid/tanh layer is saturated when at least half of its entries pass back less than
# activations.SATURATION_SHARE of the largest gradient its nonlinearity can pass.
SATURATED_SHARE = 0.5
# The update ratio ‖ΔW‖/‖W‖ per step: around 1e-3 is the usual rule of thumb (Karpathy's "CS231n" notes);
# two orders of magnitude around it are tolerated before the learning rate is called too low or too high.
UPDATE_RATIO_LOW, UPDATE_RATIO_HIGH = 1e-4, 1e-2

VERDICTS = ("diverged", "dead units", "saturated", "exploding", "vanishing", "healthy")  # most telling first


def gain_verdict(ratio: float) -> str:
    """'vanishing' below 1/LAYER_GAIN_BAND (0: no gradient gets through), 'exploding' above LAYER_GAIN_BAND, else
    (and for NaN) 'healthy'."""
    if not math.isfinite(ratio) or ratio < 0:
        return "healthy"  # no evidence either way: the ratio is shown as it is
    if ratio < 1.0 / LAYER_GAIN_BAND:
        return "vanishing"
    return "exploding" if ratio > LAYER_GAIN_BAND else "healthy"


def saturation_verdict(share: float, kind: str | None, act_mean: float = math.nan, act_std: float = math.nan) -> str:
    """'dead units' / 'saturated' / 'healthy' from the share of entries passing (almost) no gradient.

    The registry's entry for the activation `kind` tells the two apart: a saturating φ (sigmoid, tanh) is
    saturated at SATURATED_SHARE, any other (ReLU-like: φ' is 0 where a unit is off) has dead units at
    DEAD_SHARE. For a kind it does not know, DEAD_SHARE is the bar for both (half the entries of a healthy ReLU
    layer are off): a layer whose outputs are all zero (mean and std 0) has dead units, any other is saturated.
    """
    if not math.isfinite(share):
        return "healthy"
    if kind in ACTIVATIONS and not ACTIVATIONS[kind].saturating:
        return "dead units" if share >= DEAD_SHARE else "healthy"
    if kind not in ACTIVATIONS:
        if share < DEAD_SHARE:
            return "healthy"
        return "dead units" if act_mean == 0 and act_std == 0 else "saturated"
    return "saturated" if share >= SATURATED_SHARE else "healthy"


def learning_rate_advice(update_ratio: float) -> str:
    """'learning rate likely too low' / '… too high' from a typical ‖ΔW‖/‖W‖ per step, or '' near 1e-3."""
    if not math.isfinite(update_ratio):
        return ""
    if update_ratio < UPDATE_RATIO_LOW:
        return "learning rate likely too low"
    return "learning rate likely too high" if update_ratio > UPDATE_RATIO_HIGH else ""


def worst(verdicts: Sequence[str]) -> str:
    """The most telling of several verdicts of one layer (VERDICTS order: a cause before its symptom)."""
    return min(verdicts, key=VERDICTS.index, default="healthy")
