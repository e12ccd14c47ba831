"""The statistics the probe records, each defined once: its family, its stat names and what computes it.

The probe derives both the values and the key names of a record from these definitions (each block of a
record is a definition, the layers it covers and its values, in the definition's stat order), so the two
cannot drift apart; gradprobe/keys.py builds and parses the keys from them (`<family>/<stat>/<layer>`).
This module imports neither torch nor the statistics (analysis code reads it through keys.py); `compute`
names the function of gradprobe/stats.py that produces a family's values.
To add a statistic: a `Statistic` here, its computation in gradprobe/stats.py, a test against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Statistic:
    """A family of per-layer statistics: its key family, its stat names (the rows of its values), its computation."""

    family: str
    stats: tuple[str, ...]
    compute_name: str  # the function of gradprobe.stats that computes it (stats.compute calls it)
    about: str


GRAD = Statistic(
    "grad",
    ("l2", "rms", "absmax", "mean", "std", "nonfinite"),
    "grad_table",
    "the main weight's gradient before clipping: L2 norm, RMS, largest |g|, mean, std, non-finite entries",
)
BACKPROP = Statistic("backprop", ("l2",), "norm", "‖∂loss/∂(the layer's output)‖ over the batch")
ACT = Statistic(
    "act",
    ("mean", "std", "saturation"),
    "layer_activation_stats",
    "the activations after the layer: mean, std, share of saturated units (φ' below 5 % of its peak)",
)
UPDATE = Statistic("update", ("ratio",), "update_ratios", "‖W_after − W_before‖ / ‖W_before‖ of the optimizer step")
BPTT = Statistic(
    "bptt",
    ("first", "last", "ratio"),
    "bptt_summary",
    "‖∂loss/∂h_t‖ of a recurrent layer: at t = 0, at t = T−1, first / last (and every t: `t0000`, …)",
)
GATE = Statistic(
    "gate",
    ("mean", "saturation"),
    "gate_stats",
    "the LSTM forget gate / GRU update gate: mean, share saturated; stat names `<gate>_<stat>`",
)
# log10|g| histograms of the main weight's gradient before clipping (gradprobe/histogram.py; with `histograms=True`):
# half-open bins [e_i, e_i+1) on fixed edges, named by their lower edge (`b-30.0`); `under` below the first
# edge, `over` from the last one on, exact zeros and non-finite entries apart. Parquet only (keys.browsable).
HIST_LOW, HIST_HIGH, HIST_WIDTH = -30.0, 10.0, 0.5
HIST_EDGES = tuple(HIST_LOW + HIST_WIDTH * i for i in range(int((HIST_HIGH - HIST_LOW) / HIST_WIDTH) + 1))
HIST_UNDER, HIST_OVER, HIST_ZEROS, HIST_NONFINITE = "under", "over", "zeros", "nonfinite"


def hist_stat_names(edges: tuple[float, ...]) -> tuple[str, ...]:
    """The stat names of a histogram on these log10|g| edges, in the order of its counts."""
    return (HIST_UNDER, *(f"b{edge:.1f}" for edge in edges[:-1]), HIST_OVER, HIST_ZEROS, HIST_NONFINITE)


HIST = Statistic(
    "hist",
    hist_stat_names(HIST_EDGES),
    "histograms",
    "counts of log10|g| of the main weight's gradient before clipping on fixed bins, zeros, non-finite",
)
STATISTICS = (GRAD, BACKPROP, ACT, UPDATE, BPTT, GATE, HIST)
CELL_KINDS = (
    "rnn",
    "lstm",
    "gru",
)  # the recurrent cells the probe replays: torch.nn.RNN, LSTM, GRU; the lab's model names
GATE_NAMES = {"lstm": "forget", "gru": "update"}  # the gate recorded for each cell kind


def gate_stat_names(cell: str) -> tuple[str, ...]:
    """The `gate` family's stat names of a cell kind: `forget_mean`, `forget_saturation`, …"""
    return tuple(f"{GATE_NAMES[cell]}_{stat}" for stat in GATE.stats)


def stat_names() -> frozenset[str]:
    """Every fixed stat name (the per-time-step `t0000`… aside): what a layer name must not look like."""
    return frozenset(s for d in STATISTICS for s in d.stats) | {s for c in GATE_NAMES for s in gate_stat_names(c)}
