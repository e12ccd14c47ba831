"""The metric-key contract: every key is built here and parsed here (analysis imports this module).

Per-layer keys are `<family>/<layer>/<stat>` (layers L000, L001, … input side first, then `out`);
run-wide keys are `<family>/<stat>` (`train/loss`, `grad/global_l2`, …).
"""

from __future__ import annotations

GRAD_STATS = ("l2", "rms", "absmax", "mean", "std", "nonfinite")
ACT_STATS = ("mean", "std", "saturation")
BPTT_SUMMARY = ("first", "last", "ratio")  # ‖∂L/∂h_t‖ at t = 0, at t = T−1, and first / last
GATE_STATS = ("mean", "saturation")
GLOBAL_NORM, GLOBAL_NORM_CLIPPED, TRAIN_LOSS = "grad/global_l2", "grad/global_l2_clipped", "train/loss"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
ELAPSED = "time/elapsed"  # wall-clock seconds since training started, at each logging step


def key(family: str, layer: str | None, stat: str) -> str:
    """Build a metric key; `layer=None` for a run-wide key."""
    return f"{family}/{stat}" if layer is None else f"{family}/{layer}/{stat}"


def parse(metric_key: str) -> tuple[str, str, str]:
    """(family, layer, stat) of a key; layer is '' for run-wide keys."""
    parts = metric_key.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], "", parts[1]
    raise ValueError(f"not a metric key of the contract: {metric_key!r}")


def time_stat(t: int) -> str:
    """The stat name of time step t in the `bptt` family (full resolution, parquet only)."""
    return f"t{t:04d}"


def time_of(stat: str) -> int | None:
    """The time step of a `bptt` stat name, or None for a summary stat."""
    return int(stat[1:]) if stat[:1] == "t" and stat[1:].isdigit() else None


def browsable(metric_key: str) -> bool:
    """Whether a key goes to MLflow (per-time-step BPTT norms stay in the parquet table only)."""
    family, _, stat = parse(metric_key)
    return not (family == "bptt" and time_of(stat) is not None)
