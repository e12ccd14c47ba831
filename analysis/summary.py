"""Per-run summaries shared by the figures and the report: gains at initialization, verdicts, training outcomes.

Conventions (see analysis/theory.py): backprop/l2/<layer> at step 0 is ‖∂L/∂x_l‖ over the batch, hidden
layers L000… input side first. The measured per-layer gain is theory.measured_gain of those norms (the
readout `out` is left out: its Wᵀ has another fan-in and no φ′); the prediction is the geometric mean of
the per-layer factors theory gives for layers 1…depth−1, the same layers the measurement spans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from analysis import theory
from gradprobe import keys
from gradprobe.definitions import CELL_KINDS

VERDICT_TOLERANCE = 0.05  # theory.verdict's default: a per-layer gain outside [0.95, 1.05] is pathological
STALL_SHARE = 0.9  # a run whose final training loss is ≥ 90 % of its initial loss has not learned
TAIL_SHARE = 0.2  # the "final" training loss is the mean over the last 20 % of logged steps (mini-batch noise)

# Which closed form predicts a run's gain; the legend and the summary table name it.
MEAN_FIELD, BATCH_NORM, RESIDUAL, NO_THEORY = (
    "mean field √χ₁",
    "batch norm √rate (Yang 2019)",
    "residual √(1+α²χ₁)",
    "no closed form",
)
RECURRENT = CELL_KINDS
GAN_LOSSES = ("gan_saturating", "gan_nonsaturating")
# A GAN generator's loss gradient w.r.t. the fake logit is D(G(z)) (saturating) or 1 − D(G(z)) (non-saturating),
# at most 1: an order of magnitude below that maximum over most of training, the generator's gradient has vanished.
GAN_VANISHING = 0.1
CONFIG_COLUMNS = (
    "model",
    "activation",
    "depth",
    "width",
    "norm",
    "init",
    "init_gain",
    "res_scale",
    "forget_bias",
    "optimizer",
    "lr",
    "clip",
    "clip_threshold",
    "loss",
    "batch_size",
    "seq_len",
    "dataset",
    "seed",
)


def ensure_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with every config column and outcome tag present (NaN where absent), so code can index them freely."""
    missing = [c for c in ("run_id", *CONFIG_COLUMNS, "outcome", "diverged_step") if c not in runs]
    return runs.assign(**dict.fromkeys(missing, np.nan)) if missing else runs


def select(stats: pd.DataFrame, family: str, stat: str | None = None, step: int | None = None) -> pd.DataFrame:
    """Rows of one family (and stat, and step) of the long stats table."""
    mask = stats["family"] == family
    if stat is not None:
        mask &= stats["stat"] == stat
    if step is not None:
        mask &= stats["step"] == step
    return stats[mask]


def hidden(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of hidden layers only (L000…), with an integer layer_index column."""
    rows = table[table["layer"].str.match(r"^L\d{3}$")].copy()
    rows["layer_index"] = rows["layer"].str[1:].astype(int)
    return rows


def value(run: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A run's param/tag, or `default` when the column is absent or empty."""
    got = run.get(name, default)
    return default if got is None or (pd.api.types.is_scalar(got) and pd.isna(got)) else got


def arch(run: Mapping[str, Any]) -> str:
    """plain / batch norm / layer norm / residual (α) / the model name for the other families."""
    model, norm = value(run, "model", "mlp"), value(run, "norm", "none")
    suffix = {"batch": " + batch norm", "layer": " + layer norm"}.get(norm, "")
    if model == "mlp":
        return {"none": "plain", "batch": "batch norm", "layer": "layer norm"}.get(norm, norm)
    if model == "resmlp":
        return f"residual α={float(value(run, 'res_scale', 1.0)):.3g}{suffix}"
    return f"{model}{suffix}"


def label(run: Mapping[str, Any]) -> str:
    """A short configuration label: activation/init ×gain, depth, architecture."""
    gain = float(value(run, "init_gain", 1.0))
    scale = f"×{gain:g}" if gain != 1.0 else ""
    return f"{value(run, 'activation', '?')}/{value(run, 'init', '?')}{scale} d{value(run, 'depth', '?')} {arch(run)}"


# ------------------------------------------------------------------------------------------ gains


@lru_cache(maxsize=64)
def _bn_rate(batch_size: int, activation: str) -> float:
    return theory.bn_gradient_explosion_rate(batch_size, activation)  # Monte Carlo: cache per (B, φ)


def predicted_layer_gains(run: Mapping[str, Any], first_m2: float) -> tuple[np.ndarray, str]:
    """Predicted ‖∂L/∂x_{l−1}‖/‖∂L/∂x_l‖ for hidden layers l = 1…depth−1, and the rule that gave it.

    `first_m2` is the measured E[x₀²] of layer 0's output at step 0: the input statistics are the data's,
    which the runs do not record, so the length map starts from what layer 0 produced.
    """
    depth, act, init = int(value(run, "depth", 0)), value(run, "activation"), value(run, "init")
    n = depth - 1
    model, norm = value(run, "model", "mlp"), value(run, "norm", "none")
    if n < 1 or act not in theory.ACTIVATIONS or init not in theory.INITS:
        return np.full(max(n, 0), np.nan), NO_THEORY
    width, gain = int(value(run, "width")), float(value(run, "init_gain", 1.0))
    sw2 = theory.sigma_w2(init, width, width, gain)
    if model == "mlp" and norm == "none" and math.isfinite(first_m2):
        q1 = sw2 * first_m2 + theory.bias_variance(init, width)
        return theory.predicted_backprop_gain(act, init, width, width, gain, q0=q1, depth=n), MEAN_FIELD
    if model == "mlp" and norm == "batch":
        return np.full(n, math.sqrt(_bn_rate(int(value(run, "batch_size", 64)), act))), BATCH_NORM
    if model == "resmlp" and norm == "none":
        growth = theory.residual_variance_growth(float(value(run, "res_scale", 1.0)), act, sw2)
        if math.isfinite(growth):
            return np.full(n, math.sqrt(growth)), RESIDUAL
    return np.full(n, np.nan), NO_THEORY


def step0_backprop(stats: pd.DataFrame) -> pd.DataFrame:
    """Step-0 back-propagated norms of hidden layers: run_id, layer, layer_index, value (input side first)."""
    rows = hidden(select(stats, "backprop", "l2", step=0))
    return rows[["run_id", "layer", "layer_index", "value"]].sort_values(["run_id", "layer_index"])


def first_layer_m2(stats: pd.DataFrame) -> pd.Series:
    """E[x₀²] = mean² + std² of layer L000's output at step 0, by run_id (where the length map starts)."""
    rows = select(stats, "act", step=0)
    rows = rows[(rows["layer"] == "L000") & rows["stat"].isin(["mean", "std"])]
    wide = rows.pivot_table(index="run_id", columns="stat", values="value", aggfunc="first")
    if not {"mean", "std"} <= set(wide.columns):
        return pd.Series(dtype=float)
    return wide["mean"] ** 2 + wide["std"] ** 2


def is_gan(run: Mapping[str, Any]) -> bool:
    """Whether the run trained a GAN generator (its loss is one of the GAN generator losses)."""
    return value(run, "loss") in GAN_LOSSES


def _verdict(gain: float, tolerance: float) -> str:
    return "unknown" if math.isnan(gain) else theory.verdict(gain, tolerance)


def gan_loss_gradient(runs: pd.DataFrame, stats: pd.DataFrame) -> pd.Series:
    """Median over logged steps of the generator loss's factor ∂L_G/∂logit: D(G(z)) or 1 − D(G(z)), by run_id."""
    family, _, stat = keys.parse(keys.GAN_D_FAKE)
    d_fake = select(stats, family, stat).groupby("run_id")["value"].median()
    saturating = set(runs.loc[runs["loss"] == "gan_saturating", "run_id"]) if "loss" in runs else set()
    return pd.Series({run_id: d if run_id in saturating else 1 - d for run_id, d in d_fake.items()}, dtype=float)


def _gan_verdict(factor: float) -> str:
    return "unknown" if not math.isfinite(factor) else "vanishing" if factor < GAN_VANISHING else "healthy"


def gain_table(runs: pd.DataFrame, stats: pd.DataFrame, tolerance: float = VERDICT_TOLERANCE) -> pd.DataFrame:
    """One row per run: measured and predicted per-layer gain at step 0, the theory used, the verdict."""
    norms = step0_backprop(stats)
    by_run = {run_id: group["value"].to_numpy() for run_id, group in norms.groupby("run_id", sort=False)}
    m2 = first_layer_m2(stats)
    gan_factor = gan_loss_gradient(runs, stats)
    rows = []
    for run in runs.to_dict("records"):
        measured_norms = by_run.get(run["run_id"], np.empty(0))
        gain = theory.measure_gain(measured_norms) if measured_norms.size >= 2 else None
        measured = gain.gain if gain else math.nan
        per_layer, rule = predicted_layer_gains(run, float(m2.get(run["run_id"], math.nan)))
        if gain and gain.first >= 0 and per_layer.size == measured_norms.size - 1:  # theory over the measured span
            per_layer = per_layer[gain.first : gain.last]
        predicted = float(np.exp(np.log(per_layer).mean())) if per_layer.size and np.all(per_layer > 0) else math.nan
        # A GAN's pathology is its loss saturating, not depth: its verdict is the generator loss's gradient.
        verdict = (
            _gan_verdict(float(gan_factor.get(run["run_id"], math.nan)))
            if is_gan(run)
            else _verdict(measured, tolerance)
        )
        rows.append(
            {
                "run_id": run["run_id"],
                "measured_gain": measured,
                "predicted_gain": predicted,
                "theory": rule if math.isfinite(predicted) else NO_THEORY,
                "verdict": verdict,
                "verdict_tolerance": tolerance,
                "gain_note": gain.note() if gain else "",
            }
        )
    columns = ["run_id", "measured_gain", "predicted_gain", "theory", "verdict", "verdict_tolerance", "gain_note"]
    return pd.DataFrame(rows, columns=columns).astype({"measured_gain": float, "predicted_gain": float})


def theory_profile(run: Mapping[str, Any], norms: np.ndarray, first_m2: float) -> np.ndarray:
    """Predicted backprop norms of layers 0…depth−1, anchored at the measured norm of the last hidden layer."""
    per_layer, _ = predicted_layer_gains(run, first_m2)
    if per_layer.size != norms.size - 1 or not np.all(np.isfinite(per_layer)):
        return np.full(norms.size, np.nan)
    # norm_l = norm_{D−1} · Π_{k=l+1}^{D−1} g_k: multiply the gains from the output side inwards.
    inward = np.concatenate([np.cumprod(per_layer[::-1])[::-1], [1.0]])
    return norms[-1] * inward


# -------------------------------------------------------------------------------------- outcomes


def final_loss_ratio(stats: pd.DataFrame) -> pd.Series:
    """Final training loss (mean of the last 20 % of logged steps) over the step-0 loss, by run_id."""
    loss = select(stats, "train", "loss").sort_values(["run_id", "step"])

    def ratio(group: pd.DataFrame) -> float:
        values = group["value"].to_numpy()
        tail = values[-max(1, math.ceil(TAIL_SHARE * len(values))) :]
        return float(np.mean(tail) / values[0]) if values[0] > 0 else math.nan

    return loss.groupby("run_id").apply(ratio, include_groups=False) if not loss.empty else pd.Series(dtype=float)


def _gan_modes(runs: pd.DataFrame, stats: pd.DataFrame) -> pd.Series:
    """val/modes of each run (its MLflow metric, else the last validation in the stats table), by run_id."""
    column = f"metrics.{keys.VAL_MODES}"
    if column in runs:
        return pd.Series(pd.to_numeric(runs[column], errors="coerce").to_numpy(float), index=runs["run_id"])
    family, _, stat = keys.parse(keys.VAL_MODES)
    return select(stats, family, stat).sort_values("step").groupby("run_id")["value"].last()


def training_outcome(runs: pd.DataFrame, stats: pd.DataFrame) -> pd.Series:
    """trained / vanished / diverged / unknown by run_id, by the rules of OUTCOME_RULE for the run's task.

    Never contradicts the run's `outcome` tag: diverged exactly when the tag says so (or, for a run without the
    tag, when its final loss is not finite); a GAN's loss may be negative, so only a tag can say it diverged.
    """
    ratios = final_loss_ratio(stats)
    modes = _gan_modes(runs, stats)
    result = {}
    for run in runs.to_dict("records"):
        run_id, tag = run["run_id"], value(run, "outcome")
        if tag == "diverged":
            result[run_id] = "diverged"
        elif is_gan(run):
            found = float(modes.get(run_id, math.nan))
            result[run_id] = "unknown" if not math.isfinite(found) else "trained" if found >= 1 else "vanished"
        elif run_id not in ratios.index:
            result[run_id] = "unknown"
        elif not math.isfinite(r := ratios[run_id]):
            result[run_id] = "diverged" if tag is None else "unknown"
        else:
            result[run_id] = "vanished" if r >= STALL_SHARE else "trained"
    return pd.Series(result, dtype=object, name="training")


SUMMARY_COLUMNS = ("measured_gain", "predicted_gain", "theory", "verdict", "verdict_tolerance", "gain_note", "training")


def annotate(runs: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the per-run summary columns (gains, theory, verdict, training outcome); a no-op if present."""
    if all(c in runs for c in SUMMARY_COLUMNS):
        return runs
    runs = runs.drop(columns=[c for c in SUMMARY_COLUMNS if c in runs])
    gains = gain_table(runs, stats)
    annotated = runs.merge(gains, on="run_id", how="left")  # a left merge keeps the order of runs
    return annotated.assign(training=training_outcome(runs, stats).reindex(runs["run_id"]).to_numpy())


OUTCOME_RULE = (
    f"diverged = the run's outcome tag is diverged (the loss or a gradient became non-finite); for the other runs, "
    f"by task: a GAN (loss gan_saturating or gan_nonsaturating) trained when its generator covers at least one "
    f"mode at the last validation (val/modes ≥ 1), vanished when it covers none; every other run vanished when its "
    f"training loss at the end (mean of the last {TAIL_SHARE:.0%} of logged steps) is still ≥ {STALL_SHARE:.0%} "
    f"of its value at initialization, i.e. the objective stayed at chance, trained otherwise; unknown = the run "
    f"recorded no training loss (no val/modes for a GAN) or a loss ratio that is not a number"
)
