"""A run's verdict on its gradients: the measured per-layer gain of the back-propagated norm at initialization.

Shared by the training run's one-line result (pipelines/train.py) and the analysis (analysis/summary.py through
analysis/theory.py), so a run's line and the study's report judge it by the same rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

HIDDEN_LAYER = re.compile(r"L\d{3,}")  # models.base.layer_name; the readout `out` is not a hidden layer


def measured_gain(norms_by_layer: Sequence[float] | np.ndarray) -> float:
    """Geometric mean of norm[l−1]/norm[l] over backprop norms given input side first (L000, L001, …).

    That is the per-layer factor applied going from the output side to the input side, i.e.
    (norm[0]/norm[-1])^(1/(L−1)): below 1 the back-propagated signal shrinks towards the input
    (vanishing), above 1 it grows (exploding). 0.0 if the input-side norm is 0, NaN if the output-side
    norm is 0 or any norm is negative or non-finite.
    """
    norms = np.asarray(norms_by_layer, dtype=float)
    if norms.ndim != 1 or norms.size < 2:
        raise ValueError("need the norms of at least two layers, input side first")
    if not np.all(np.isfinite(norms)) or np.any(norms < 0) or norms[-1] == 0:
        return math.nan
    if norms[0] == 0:
        return 0.0
    # Only the end points survive the product of successive ratios; logs avoid overflow for deep nets.
    return float(math.exp((math.log(norms[0]) - math.log(norms[-1])) / (norms.size - 1)))


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
    hidden = {str(layer): value for layer, value in zip(rows["layer"], rows["value"]) if HIDDEN_LAYER.fullmatch(str(layer))}
    norms = [hidden[layer] for layer in sorted(hidden, key=lambda name: int(name[1:]))]  # input side first
    return measured_gain(norms) if len(norms) >= 2 else math.nan
