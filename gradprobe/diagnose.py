"""Why won't my network train? A per-layer diagnosis of one run's recorded gradient statistics.

    python -m gradprobe.diagnose --run-id RUN [--tracking-uri URI] [--out FILE] [--log]

`diagnose(table)` reads the long table the recorder writes (step, layer, family, stat, value; keys of
gradprobe/keys.py) and gives each layer a verdict (gradprobe/verdict.py: diverged, dead units, saturated,
exploding, vanishing or healthy) with its evidence: the gain ‖∂L/∂x_l‖/‖∂L/∂x_{l+1}‖ at the first and the last
recorded step, the share of dead or saturated entries, the update ratio and non-finite gradients; where
mean-field theory covers the architecture (a plain chain of Linear layers with one activation and a known
weight variance), the predicted gain beside the measured one. `Diagnosis.markdown()` is the report a run logs
as `diagnosis.md`. MLflow is needed only to read or log a run, and is imported then.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradprobe import keys as K
from gradprobe import theory
from gradprobe import verdict as V
from gradprobe.stats import LARGEST_NORM

DIAGNOSIS_ARTIFACT = "diagnosis.md"
COLUMNS = ["step", "layer", "family", "stat", "value"]
NO_THEORY = "no mean-field theory for this architecture"
# Verdicts under which a layer's updates are small because its gradient is: no learning-rate advice then.
BLOCKED = ("vanishing", "dead units", "saturated")


# -- the architecture mean-field theory covers ---------------------------------------------------------


@dataclass(frozen=True)
class MeanField:
    """A plain chain of `depth` Linear(width → width) → φ blocks (the first from the data) and a readout."""

    activation: str
    init: str
    width: int
    depth: int
    gain: float = 1.0  # the init's scale multiplier (the lab's init_gain)


def mean_field_from_params(params: Mapping[str, Any]) -> MeanField | None:
    """The covered architecture described by a lab run's params (model mlp, norm none), or None.

    Params come from a shared store: every value is checked against the theory's own lists and parsed as a
    number, never evaluated.
    """
    if params.get("model", "mlp") != "mlp" or params.get("norm", "none") != "none":
        return None
    activation, init = str(params.get("activation", "")), str(params.get("init", ""))
    if activation not in theory.ACTIVATIONS or init not in theory.INITS:
        return None
    try:
        width, depth, gain = int(params["width"]), int(params["depth"]), float(params.get("init_gain", 1.0))
    except (KeyError, TypeError, ValueError):
        return None
    if width < 1 or depth < 1 or not (math.isfinite(gain) and gain > 0):
        return None
    return MeanField(activation, init, width, depth, gain)


def predicted_chain_gains(arch: MeanField, first_m2: float) -> np.ndarray:
    """Predicted ‖∂L/∂x_{l−1}‖/‖∂L/∂x_l‖ for hidden layers l = 1…depth−1 at initialization (input side first).

    `first_m2` is the measured E[x₀²] of the first layer's output at step 0: the data's statistics are not
    recorded, so the length map starts from what the first layer produced.
    """
    n = arch.depth - 1
    if n < 1 or not math.isfinite(first_m2):
        return np.full(max(n, 0), np.nan)
    sw2 = theory.sigma_w2(arch.init, arch.width, arch.width, arch.gain)
    q1 = sw2 * first_m2 + theory.bias_variance(arch.init, arch.width)
    return theory.predicted_backprop_gain(arch.activation, arch.init, arch.width, arch.width, arch.gain, q0=q1, depth=n)


# -- the evidence --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerEvidence:
    """One layer's verdict and what it rests on (NaN where the run did not record it)."""

    layer: str
    verdict: str
    gain_start: float  # ‖∂L/∂x_l‖/‖∂L/∂x_{l+1}‖ at the first recorded step (NaN for the last layer)
    gain_end: float  # the same at the last step with back-propagated norms
    predicted: float  # mean-field prediction of gain_start, or NaN
    judged: bool  # whether the gain enters the verdict (not for the readout, whose fan-out is the task's)
    activation: str | None
    inactive_start: float  # share of entries passing (almost) no gradient: dead (ReLU-like) or saturated
    inactive_end: float
    update_ratio: float  # median ‖ΔW‖/‖W‖ per step
    nonfinite: float  # logged steps where its gradient had NaN/inf entries or a norm past the probe's guard
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    """The verdicts of a run's layers, the network's gain and the run-wide findings."""

    layers: tuple[LayerEvidence, ...]
    first_step: int
    last_step: int
    gain_start: V.GainMeasurement | None  # over every layer but the readout
    gain_end: V.GainMeasurement | None
    predicted_gain: float  # geometric mean of the predicted per-layer gains, or NaN
    theory: str  # what the prediction rests on, or NO_THEORY
    diverged_step: int | None
    update_ratio: float  # median over layers

    @property
    def verdict(self) -> str:
        """The run's verdict: the most telling of its layers' (VERDICTS order)."""
        return V.worst([e.verdict for e in self.layers] + (["diverged"] if self.diverged_step is not None else []))

    def named(self, verdict: str) -> list[str]:
        """The layers with this verdict, in forward order."""
        return [e.layer for e in self.layers if e.verdict == verdict]

    def summary(self) -> str:
        """One line: the run's verdict, how many layers have it, the gain per layer and the learning-rate advice."""
        parts = [self.verdict]
        flagged = [e for e in self.layers if e.verdict != "healthy"]
        if flagged:
            parts.append(f"{len(flagged)} of {len(self.layers)} layers not healthy ({_count_by_verdict(flagged)})")
        if self.gain_start is not None and math.isfinite(self.gain_start.gain):
            predicted = f" (predicted {self.predicted_gain:.3g})" if math.isfinite(self.predicted_gain) else ""
            parts.append(f"gain per layer {self.gain_start.gain:.3g} at step {self.first_step}{predicted}")
        if self.diverged_step is not None:
            parts.append(f"non-finite gradients at step {self.diverged_step}")
        advice = V.learning_rate_advice(self.update_ratio)
        if advice:
            parts.append(f"{advice} (update ratio {self.update_ratio:.2g})")
        return "; ".join(parts)

    def markdown(self) -> str:
        """A small report: the answer in a paragraph, then one table row per layer with its evidence."""
        lines = ["# Gradient diagnosis", "", f"**{_escape(self.summary())}**", "", "## Why won't my network train?", ""]
        lines += [self.answer(), "", f"## Per layer (steps {self.first_step} → {self.last_step}, forward order)", ""]
        lines += [
            "| layer | verdict | gain at start | gain at end | predicted | dead / saturated (start → end) "
            "| update ratio | non-finite | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in self.layers:
            gain_end = _num(e.gain_end) + ("" if e.judged or math.isnan(e.gain_end) else " (readout, not judged)")
            cells = [
                f"`{_escape(e.layer, code=True)}`",
                e.verdict,
                _num(e.gain_start),
                gain_end,
                _num(e.predicted),
                f"{_share(e.inactive_start)} → {_share(e.inactive_end)}",
                _num(e.update_ratio, ".2g"),
                _num(e.nonfinite, ".0f"),
                _escape("; ".join(e.notes)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _THRESHOLDS, ""]
        return "\n".join(lines)

    def answer(self) -> str:
        """The one-paragraph answer to "Why won't my network train?"."""
        sentences = []
        if self.diverged_step is not None:
            where = _listing(self.named("diverged"))
            sentences.append(
                f"Training diverged at step {self.diverged_step}: the gradients became NaN or inf"
                f"{' in ' + where if where else ''}. Lower the learning rate or clip the gradients."
            )
        if dead := self.named("dead units"):
            sentences.append(
                f"{_listing(dead)} {_have(dead)} dead units: at least {V.DEAD_SHARE:.0%} of the "
                "ReLU entries pass no gradient, so those units stop learning. Check for large negative "
                "biases or a learning rate that pushed them off; a leaky ReLU or a smaller step helps."
            )
        if saturated := self.named("saturated"):
            sentences.append(
                f"{_listing(saturated)} {_are(saturated)} saturated: at least {V.SATURATED_SHARE:.0%} "
                "of the entries sit in the flat tails of the nonlinearity. Scale the initialization down "
                "or normalize the pre-activations (batch or layer norm)."
            )
        sentences += self._gain_sentences()
        advice = V.learning_rate_advice(self.update_ratio)
        if advice:
            # Tiny updates behind a blocked gradient are its consequence: raising the learning rate cures neither.
            blocked = self.update_ratio < V.UPDATE_RATIO_LOW and any(self.named(v) for v in BLOCKED)
            why = "; fix the gradient flow first, the small updates follow from it" if blocked else ""
            sentences.append(
                f"The median update ratio ‖ΔW‖/‖W‖ is {self.update_ratio:.2g} per step against the usual "
                f"1e-3: {advice}{why}."
            )
        if not sentences:
            sentences.append(
                "Nothing in the gradients looks pathological: every layer passes the gradient on "
                "without shrinking or growing it much, few units are dead or saturated and the updates "
                "are of the usual size. If the network still does not learn, look at the data, the "
                "loss and the learning-rate schedule."
            )
        if math.isfinite(self.predicted_gain):
            sentences.append(
                f"Mean-field theory ({self.theory}) predicts a gain of {self.predicted_gain:.3g} per "
                "layer at initialization for this architecture."
            )
        return " ".join(sentences)

    def _gain_sentences(self) -> list[str]:
        out = []
        for verdict, how, fix in (
            (
                "vanishing",
                "shrinks",
                "Use an initialization matched to the activation (Kaiming for ReLU, Xavier for "
                "tanh), a non-saturating activation, normalization or residual connections.",
            ),
            (
                "exploding",
                "grows",
                "Scale the initialization down (Kaiming for ReLU, Xavier for tanh), normalize, or clip the gradients.",
            ),
        ):
            layers = self.named(verdict)
            if not layers:
                continue
            span = ""
            g = self.gain_start
            if g is not None and math.isfinite(g.gain) and g.last > g.first:
                total = g.gain ** (g.last - g.first)
                span = (
                    f" Over the network it changes by {g.gain:.3g} per layer: the first layer receives "
                    f"{total:.3g}× the gradient of the last."
                )
            out.append(f"The gradient {how} from layer to layer ({verdict}) at {_listing(layers)}.{span} {fix}")
        return out


_THRESHOLDS = (
    f"Thresholds: a layer's gain outside [{1 / V.LAYER_GAIN_BAND:.2g}, {V.LAYER_GAIN_BAND:.3g}] is vanishing / "
    f"exploding; dead units at ≥ {V.DEAD_SHARE:.0%} of a ReLU-like layer's entries passing no gradient; saturated "
    f"at ≥ {V.SATURATED_SHARE:.0%} of entries in the flat tails; update ratio outside "
    f"[{V.UPDATE_RATIO_LOW:g}, {V.UPDATE_RATIO_HIGH:g}] (usual: 1e-3)."
)


def _count_by_verdict(flagged: Sequence[LayerEvidence]) -> str:
    counts = pd.Series([e.verdict for e in flagged]).value_counts()
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda item: V.VERDICTS.index(item[0])))


def _listing(layers: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(f"`{_escape(name, code=True)}`" for name in layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _have(layers: Sequence[str]) -> str:
    return "has" if len(layers) == 1 else "have"


def _are(layers: Sequence[str]) -> str:
    return "is" if len(layers) == 1 else "are"


def _num(value: float, fmt: str = ".3g") -> str:
    return "–" if value is None or math.isnan(value) else format(value, fmt)


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0%}"


def _escape(text: str, *, code: bool = False) -> str:
    """Text from a run (layer names are untrusted) made inert in markdown: no table break, no HTML, no code end."""
    text = " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("`", "'") if code else text


# -- from the table to the verdicts ------------------------------------------------------------------


def layer_order(table: pd.DataFrame) -> list[str]:
    """The layers of the table in order of first appearance (the probe records them in forward order)."""
    layers = table["layer"].astype(str)
    return [name for name in pd.unique(layers) if name]


def _wide(table: pd.DataFrame, family: str, stat: str, layers: list[str]) -> pd.DataFrame:
    """step × layer values of one statistic (the last value where a step repeats)."""
    rows = table[(table["family"].astype(str) == family) & (table["stat"].astype(str) == stat)]
    wide = (
        rows.pivot_table(
            index="step", columns=rows["layer"].astype(str), values="value", aggfunc="last", dropna=False, observed=True
        )
        if len(rows)
        else pd.DataFrame()
    )
    return wide.reindex(columns=layers).sort_index().astype(float)


def _at(wide: pd.DataFrame, step: int | None) -> pd.Series:
    return wide.loc[step] if step is not None and step in wide.index else pd.Series(np.nan, index=wide.columns)


def _ratios(norms: pd.Series) -> list[float]:
    """‖∂L/∂x_l‖/‖∂L/∂x_{l+1}‖ per layer (NaN for the last): 0 where no gradient reaches layer l at all."""
    values = norms.to_numpy(dtype=float)
    ratios = []
    for here, ahead in zip(values[:-1], values[1:]):
        if not (math.isfinite(here) and math.isfinite(ahead) and here >= 0):
            ratios.append(math.nan)
        elif here == 0:
            ratios.append(0.0)  # nothing gets back to this layer
        else:
            ratios.append(float(here / ahead) if ahead > 0 else math.nan)
    return ratios + [math.nan]


def _activation_kinds(layers: list[str], activations: str | Mapping[str, str] | None) -> dict[str, str | None]:
    if isinstance(activations, str):
        return dict.fromkeys(layers, activations)
    return {layer: (activations or {}).get(layer) for layer in layers}


def _nonfinite_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that show a diverged step: NaN/inf gradient entries, a gradient norm past the probe's guard
    (stats.LARGEST_NORM: beyond it norm clipping cannot work), or a non-finite training loss."""
    fam, stat, value = table["family"].astype(str), table["stat"].astype(str), table["value"]
    return table[
        ((fam == "grad") & (stat == "nonfinite") & (value > 0))
        | ((fam == "grad") & (stat == "l2") & ~(value <= LARGEST_NORM))
        | ((fam + "/" + stat == K.TRAIN_LOSS) & ~np.isfinite(value))
    ]


def diagnose(
    table: pd.DataFrame | Mapping[str, Iterable[tuple[int, float]]],
    *,
    activations: str | Mapping[str, str] | None = None,
    architecture: MeanField | None = None,
    params: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Per-layer verdicts and their evidence from a run's long table (or a metric history: key → (step, value)).

    `activations` names the hidden nonlinearity (one for every layer, or per layer); `architecture` the chain
    mean-field theory covers. A lab run's `params` give both (activation, model, norm, init, width, depth).
    """
    if not isinstance(table, pd.DataFrame):
        table = table_from_history(table)
    if params is not None:
        activations = activations if activations is not None else params.get("activation")
        architecture = architecture if architecture is not None else mean_field_from_params(params)
    layers = layer_order(table[table["layer"].astype(str) != ""])
    wide = {(f, s): _wide(table, f, s, layers) for f, s in PER_LAYER}
    backprop = wide["backprop", "l2"].dropna(how="all")
    steps = sorted(set(table["step"].astype(int))) or [0]
    first = int(backprop.index.min()) if len(backprop) else steps[0]
    last = int(backprop.index.max()) if len(backprop) else steps[-1]
    start, end = _at(backprop, first), _at(backprop, last)
    bad = _nonfinite_rows(table)
    predicted_by_layer = _predicted(layers, architecture, wide["act", "mean"], wide["act", "std"], first)
    evidence = _evidence(layers, wide, (first, last), _activation_kinds(layers, activations), predicted_by_layer, bad)
    body = layers[:-1]  # the network's gain leaves the readout out, as the lab's verdict does

    def network_gain(norms: pd.Series) -> V.GainMeasurement | None:
        return V.measure_gain(norms[body].to_numpy(dtype=float)) if len(body) >= 2 else None

    predicted = np.asarray([e.predicted for e in evidence if math.isfinite(e.predicted) and e.predicted > 0])
    updates = np.asarray([e.update_ratio for e in evidence if math.isfinite(e.update_ratio)])
    return Diagnosis(
        layers=evidence,
        first_step=first,
        last_step=last,
        gain_start=network_gain(start),
        gain_end=network_gain(end),
        predicted_gain=float(np.exp(np.log(predicted).mean())) if predicted.size else math.nan,
        theory="plain chain, Poole et al. 2016 / Schoenholz et al. 2017" if predicted.size else NO_THEORY,
        diverged_step=int(bad["step"].min()) if len(bad) else None,
        update_ratio=float(np.median(updates)) if updates.size else math.nan,
    )


PER_LAYER = [("backprop", "l2"), ("act", "saturation"), ("act", "mean"), ("act", "std"), ("update", "ratio")]


def _evidence(
    layers: list[str],
    wide: dict[tuple[str, str], pd.DataFrame],
    span: tuple[int, int],
    kinds: dict[str, str | None],
    predicted: list[float],
    bad: pd.DataFrame,
) -> tuple[LayerEvidence, ...]:
    """Each layer's evidence at the first and the last step with back-propagated norms (`span`), and its verdict."""
    first, last = span
    backprop, saturation = wide["backprop", "l2"], wide["act", "saturation"]
    gains_start, gains_end = _ratios(_at(backprop, first)), _ratios(_at(backprop, last))
    sat_start = _at(saturation, first)
    sat_end = _at(saturation, int(saturation.index.max()) if len(saturation) else None)
    mean_end, std_end = _at(wide["act", "mean"], last), _at(wide["act", "std"], last)
    ratios = wide["update", "ratio"]
    updates = ratios.where(np.isfinite(ratios)).median()
    named = bad[bad["layer"].astype(str) != ""]
    nonfinite = named.groupby(named["layer"].astype(str), observed=True)["step"].nunique()
    out = []
    for i, layer in enumerate(layers):
        judged = i < len(layers) - 2  # the ratio into the last layer (the readout) depends on the task's width
        shares = np.asarray([sat_start[layer], sat_end[layer]], dtype=float)
        inactive = float(np.nanmax(shares)) if np.isfinite(shares).any() else math.nan
        found = [V.saturation_verdict(inactive, kinds[layer], mean_end[layer], std_end[layer])]
        if judged:
            found += [V.gain_verdict(gains_start[i]), V.gain_verdict(gains_end[i])]
        if nonfinite.get(layer, 0) > 0:
            found.append("diverged")
        update, verdict = float(updates.get(layer, math.nan)), V.worst(found)
        advice = V.learning_rate_advice(update)
        if advice and update < V.UPDATE_RATIO_LOW and verdict in BLOCKED:
            advice = f"tiny updates: they follow from the {verdict} gradient"
        notes = (advice,) if advice else ()
        out.append(
            LayerEvidence(
                layer,
                verdict,
                gains_start[i],
                gains_end[i],
                predicted[i],
                judged,
                kinds[layer],
                *shares,
                update,
                float(nonfinite.get(layer, 0)),
                notes,
            )
        )
    return tuple(out)


def _predicted(
    layers: list[str], arch: MeanField | None, act_mean: pd.DataFrame, act_std: pd.DataFrame, first: int
) -> list[float]:
    """The predicted gain of each layer (NaN where none): hidden layers 0…depth−2 of a covered chain."""
    out = [math.nan] * len(layers)
    if arch is None or len(layers) != arch.depth + 1:  # depth hidden layers and the readout, or not this chain
        return out
    first_m2 = float(_at(act_mean, first).iloc[0] ** 2 + _at(act_std, first).iloc[0] ** 2) if layers else math.nan
    for i, gain in enumerate(predicted_chain_gains(arch, first_m2)):
        out[i] = float(gain)
    return out


def table_from_history(history: Mapping[str, Iterable[tuple[int, float]]]) -> pd.DataFrame:
    """The long table from metric histories (key → (step, value) pairs); keys outside the contract are skipped."""
    rows = []
    for metric_key, points in history.items():
        try:
            family, layer, stat = K.parse(metric_key)
        except ValueError:
            continue  # the headline copies and anything a logger adds besides the contract
        rows += [(int(step), layer, family, stat, float(value)) for step, value in points]
    table = pd.DataFrame(rows, columns=COLUMNS)
    # Histories carry no forward order: lab layers sort as L000, L001, …, out; other names by their numbers.
    order = sorted({layer for layer in table["layer"] if layer}, key=_natural)
    rank = {layer: i for i, layer in enumerate(order)}
    return table.sort_values(
        ["layer", "step"], key=lambda c: c.map(rank).fillna(-1) if c.name == "layer" else c, kind="stable"
    ).reset_index(drop=True)


def _natural(name: str) -> tuple:
    """Sort key: `out` last, numbers compared as numbers (layers.10 after layers.2)."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)
    return (name == "out", parts)


# -- MLflow: read a run, log the report ------------------------------------------------------------


def log_diagnosis(
    table: pd.DataFrame | Mapping[str, Iterable[tuple[int, float]]],
    client_or_logger: Any,
    run_id: str | None = None,
    **options: Any,
) -> Diagnosis | None:
    """Diagnose and log `diagnosis.md` to the run; a failure is a warning, never the training run's end.

    `client_or_logger` is an MlflowClient (with `run_id`) or Lightning's MLFlowLogger (its client and run).
    """
    try:
        client = getattr(client_or_logger, "experiment", client_or_logger)
        run_id = run_id or client_or_logger.run_id
        result = diagnose(table, **options)
        client.log_text(run_id, result.markdown(), DIAGNOSIS_ARTIFACT)
        return result
    except Exception as exc:
        warnings.warn(f"no {DIAGNOSIS_ARTIFACT} for run {run_id}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


class UsageError(ValueError):
    """Bad command-line input: one line naming the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        super().__init__(f"{field}={value!r} is not allowed; allowed: {allowed}")


def read_run(client: Any, run_id: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """A run's long table (its parquet artifact, else its per-layer metric histories) and its params."""
    from gradprobe.recorder import STATS_ARTIFACT

    run = client.get_run(run_id)
    folder, name = os.path.split(STATS_ARTIFACT)
    if any(f.path == STATS_ARTIFACT for f in client.list_artifacts(run_id, folder)):
        with tempfile.TemporaryDirectory() as tmp:  # only the artifact we name, into a folder of our own
            table = pd.read_parquet(client.download_artifacts(run_id, STATS_ARTIFACT, tmp))  # data, no pickle
        return table, dict(run.data.params)
    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in run.data.metrics
        if _per_layer_or_loss(k)
    }
    return table_from_history(history), dict(run.data.params)


def _per_layer_or_loss(metric_key: str) -> bool:
    try:
        return K.per_layer(metric_key) or metric_key == K.TRAIN_LOSS
    except ValueError:
        return False


def _impatient() -> Any:
    """MLflow's HTTP client without retries and with a short timeout (a bad URI is an answer in seconds), and
    no download progress bar on stderr; the environment as it was after the block."""
    from unittest import mock  # patch.dict restores os.environ on exit, whatever happens in the block

    return mock.patch.dict(
        os.environ,
        {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        },
    )


def _check_sqlite(uri: str) -> None:
    """A `sqlite:` URI must name an existing file: reading a run never creates a store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?")[0])
        if not path.is_file():
            raise UsageError("--tracking-uri", uri, f"an existing SQLite store; {path} is not a file")


def make_parser() -> argparse.ArgumentParser:
    """--run-id, --tracking-uri, --out, --log."""
    parser = argparse.ArgumentParser(
        prog="python -m gradprobe.diagnose", description=__doc__.split("\n")[0], exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument("--run-id", required=True, help="the MLflow run to diagnose")
    parser.add_argument("--tracking-uri", default=None, help="the tracking store (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("--log", action="store_true", help=f"log the report to the run as {DIAGNOSIS_ARTIFACT}")
    return parser


USAGE = "--run-id RUN [--tracking-uri URI] [--out FILE] [--log]"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise UsageError(exc.argument_name or "argument", None, USAGE) from None
    if extra:
        raise UsageError("argument", extra[0], USAGE)
    if not args.run_id:
        raise UsageError("--run-id", args.run_id, "an MLflow run id")
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise UsageError("--out", args.out, "a file in an existing folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and optionally write and log) the diagnosis of one recorded run; 2 on bad input."""
    try:
        args = _parse(argv)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UsageError("mlflow", "not installed", "pip install mlflow, to read a run") from None
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        _check_sqlite(uri)
        with _impatient():
            client = MlflowClient(uri)
            try:
                table, params = read_run(client, args.run_id)
            except Exception as exc:
                raise UsageError("--run-id", args.run_id, f"the id of a run in {uri} ({type(exc).__name__})") from None
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = diagnose(table, params=params).markdown()
    print(report)
    if args.out is not None:
        Path(args.out).write_text(report, encoding="utf-8")
    if args.log:
        client.log_text(args.run_id, report, DIAGNOSIS_ARTIFACT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
