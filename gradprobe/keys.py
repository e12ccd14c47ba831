"""The metric-key contract: every key is built here and parsed here (analysis imports this module).

Per-layer keys are `<family>/<stat>/<layer>`, the layer being a module's qualified name in the probed
network (`encoder.layers.0.self_attn.out_proj`, `0`) or its alias (the lab's zoo: L000, L001, … input side
first, then `out`), so the MLflow UI, which groups a run's charts by everything before the last `/`, shows
one section per statistic holding every layer (`grad/l2`: L000 … out); run-wide keys are `<family>/<stat>`
(`train/loss`, `grad/global_l2`, …). The stat names of each family come from gradprobe/definitions.py.
`parse` also reads the previous per-layer form `<family>/L000/<stat>` (runs and tables written before the
change): a zoo layer id never looks like a stat name, so the two cannot be confused.
"""

from __future__ import annotations

import functools
import re

from gradprobe import definitions as D

GRAD_STATS, ACT_STATS = D.GRAD.stats, D.ACT.stats
BPTT_SUMMARY = D.BPTT.stats  # ‖∂L/∂h_t‖ at t = 0, at t = T−1, and first / last
GATE_STATS = D.GATE.stats
GLOBAL_NORM, GLOBAL_NORM_CLIPPED, TRAIN_LOSS = "grad/global_l2", "grad/global_l2_clipped", "train/loss"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
VAL_DICE, VAL_IOU = "val/dice", "val/iou"  # segmentation: hard masks (logit > 0), per example, averaged
VAL_KNN_ACC = "val/knn_acc"  # metric learning: leave-one-out 1-nearest-neighbour accuracy of val embeddings
# GAN (adversarial task): generated points within 3σ of a mode; modes holding ≥ 1 % of them (models/gan.py)
VAL_HIGH_QUALITY, VAL_MODES = "val/high_quality", "val/modes"
# The official test split (mnist1d, mnist, cifar10), evaluated once after training; never a study's objective.
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
VAL_METRICS = (
    VAL_LOSS,
    VAL_ACC,
    VAL_DICE,
    VAL_IOU,
    VAL_KNN_ACC,
    VAL_HIGH_QUALITY,
    VAL_MODES,
)  # every validation key a run can record
# GAN, at each logging step: mean D probability on the real batch and on the points the generator step
# saw (both after the step's D updates); the last D loss (before its update); the generator loss = train/loss.
GAN_D_REAL, GAN_D_FAKE, GAN_D_LOSS, GAN_G_LOSS = "gan/d_real", "gan/d_fake", "gan/d_loss", "gan/g_loss"
# What the probe cost the run (recorded once, when it closes): its own seconds, and their share of training's.
PROBE_SECONDS, PROBE_COST_SHARE = "probe/seconds", "probe/cost_share"
ELAPSED = "time/elapsed"  # wall-clock seconds since training started, at each logging step
# The MLflow UI orders a run's chart sections by name (JavaScript's sort, then localeCompare on updates) and
# puts keys without a section last; a leading digit sorts first both ways. The headline keys (loss, accuracy,
# global gradient norm) are also sent to MLflow (not to parquet) in this section, so a run's charts open on them.
HEADLINE = "0-headline"
HEADLINE_KEYS = (TRAIN_LOSS, *VAL_METRICS, GLOBAL_NORM)


def headline_key(metric_key: str) -> str | None:
    """The key's copy in the first chart section (`0-headline/val_acc`), or None if it is not a headline key."""
    return f"{HEADLINE}/{metric_key.replace('/', '_')}" if metric_key in HEADLINE_KEYS else None


# A zoo layer id: models.base.layer_name (L000, L001, …) or its readout, `out`; no stat name has this form.
LAYER_ID = re.compile(r"L\d{3,}|out")
# A module's qualified name (`encoder.layers.0.linear1`, `0`) or an alias: no `/`, not empty.
QUALIFIED_NAME = re.compile(r"[^/\s]+")


def is_layer(name: str) -> bool:
    """Whether a key part is a zoo layer id (L000, …, out): the previous key form put these in the middle."""
    return LAYER_ID.fullmatch(name) is not None


@functools.cache
def _is_stat(name: str) -> bool:
    return name in D.stat_names() or time_of(name) is not None


def part_keys(family: str, stats: tuple[str, ...], layers: tuple[str, ...]) -> list[str]:
    """The keys of a block of values (stats × layers, stat-major): how the probe names what it records."""
    return _part_keys(family, tuple(stats), tuple(layers))


@functools.cache  # a logging step asks for the same blocks again; built once per kind of step
def _part_keys(family: str, stats: tuple[str, ...], layers: tuple[str, ...]) -> list[str]:
    return [key(family, layer, stat) for stat in stats for layer in layers]


def key(family: str, layer: str | None, stat: str) -> str:
    """Build a metric key; `layer=None` for a run-wide key."""
    return f"{family}/{stat}" if layer is None else f"{family}/{stat}/{layer}"


@functools.cache  # the recorder asks for every key at every logging step; a run has a few hundred distinct keys
def parse(metric_key: str) -> tuple[str, str, str]:
    """(family, layer, stat) of a key, new or previous per-layer form; layer is '' for run-wide keys."""
    parts = metric_key.split("/")
    if len(parts) == 2 and all(parts) and not is_layer(parts[1]):
        return parts[0], "", parts[1]
    if len(parts) == 3 and all(QUALIFIED_NAME.fullmatch(p) for p in parts):
        family, middle, last = parts
        if is_layer(middle) and not is_layer(last):  # the previous form, `<family>/L000/<stat>`
            return family, middle, last
        if not is_layer(middle) and not _is_stat(last):
            return family, last, middle
    raise ValueError(f"not a metric key of the contract: {metric_key!r}")


def per_layer(metric_key: str) -> bool:
    """Whether a key holds one layer's statistic (False for a run-wide key)."""
    return parse(metric_key)[1] != ""


def time_stat(t: int) -> str:
    """The stat name of time step t in the `bptt` family (full resolution, parquet only)."""
    return f"t{t:04d}"


def time_of(stat: str) -> int | None:
    """The time step of a `bptt` stat name, or None for a summary stat."""
    return int(stat[1:]) if stat[:1] == "t" and stat[1:].isdigit() else None


# Histograms of log10|g| (gradprobe/histogram.py): family `hist`, stat names from definitions.hist_stat_names.
HIST, HIST_STATS = D.HIST.family, D.HIST.stats
HIST_UNDER, HIST_OVER, HIST_ZEROS, HIST_NONFINITE = D.HIST_UNDER, D.HIST_OVER, D.HIST_ZEROS, D.HIST_NONFINITE


def hist_edge(stat: str) -> float | None:
    """The lower log10|g| edge of a `hist` bin's stat name, or None for under/over/zeros/nonfinite."""
    return float(stat[1:]) if stat[:1] == "b" else None


def browsable(metric_key: str) -> bool:
    """Whether a key goes to MLflow (per-time-step BPTT norms and histogram bins stay in the parquet table only)."""
    family, _, stat = parse(metric_key)
    return family != HIST and not (family == "bptt" and time_of(stat) is not None)


# -- invariance tests (experiments/invariance) ---------------------------------------------------
# Keys of a zoo run, under `invariance/<state>/…` with state `init` (the same seed, untrained) or
# `trained`; the parquet artifact INVARIANCE_ARTIFACT holds every value with its key (long format).

INVARIANCE = "invariance"  # also the `study` tag of the invariance runs (parent, workers, zoo trials)
INVARIANCE_ZOO_TAG = "invariance_zoo"  # a zoo run's model name: mlp, cnn_circ, …
INVARIANCE_ZOO_ARTIFACT = "invariance/zoo.csv"  # on each invocation's run: the zoo runs it tested
INVARIANCE_STATES = ("init", "trained")
SHIFT_MODES = ("circ", "zero")  # circular shift (torch.roll) or shift with the vacated border filled
INVARIANCE_ARTIFACT = "invariance/metrics.parquet"
BN_SCALE, RELU_RESCALE = "bn_scale", "relu_rescale"  # the gradient-invariance checks


def shift_key(state: str, metric: str, mode: str, shift: int | None = None) -> str:
    """`invariance/<state>/<metric>_<mode>[_<shift>]`: acc, consistency or prob_change; no shift = the summary."""
    suffix = "" if shift is None else f"_{shift}"
    return f"{INVARIANCE}/{state}/{metric}_{mode}{suffix}"


def eqerr_key(state: str, layer: str, shift: int) -> str:
    """`invariance/<state>/eqerr/<layer>/shift_<k>`: the equivariance error of a conv layer for a shift by k."""
    return f"{INVARIANCE}/{state}/eqerr/{layer}/shift_{shift}"


def gradcheck_key(state: str, check: str, scale: float, stat: str) -> str:
    """`invariance/<state>/<check>/c<scale>/<stat>`: one number of a gradient-invariance check at scale c."""
    return f"{INVARIANCE}/{state}/{check}/c{scale:g}/{stat}"
