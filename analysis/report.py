"""The study report: every figure that has data, a per-run summary table and an HTML page, logged to the study's parent run.

    python -m analysis.report --study vanishing [--out-dir reports]
    mlflow run . -e report -P study=vanishing --env-manager local

Writes reports/<study>/index.html, the PNGs beside it and summary.csv, then logs the folder as the
artifacts `report/` of the study's parent MLflow run. Reads MLflow only through analysis.load.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import figures, load, summary
from analysis.load import StudyData

ARTIFACT_PATH = "report"
T = summary.VERDICT_TOLERANCE
VERDICT_RULE = (f"verdict from the measured per-layer gain g at step 0 (theory.verdict): vanishing if g < {1 - T:g}, "
                f"exploding if g > {1 + T:g}, healthy otherwise (tolerance {T:g}); unknown when fewer than two hidden "
                f"layers were measured")  # fmt: skip

# name → (title, caption). Captions say what to look for and what theory predicts.
CAPTIONS: dict[str, tuple[str, str]] = {
    "backprop_by_layer": (
        "Back-propagated gradient by layer at initialization",
        "‖∂L/∂x_l‖ (backprop/&lt;layer&gt;/l2 at step 0, L2 norm over the batch) for each hidden layer, one solid "
        "line per configuration (runs that differ only in optimizer or clipping share step 0, so one is drawn). "
        "Lines falling towards the input (left) are vanishing gradients, rising ones exploding. The dotted line "
        "of the same colour is the mean-field prediction, anchored at the last hidden layer's measurement and "
        "multiplied inwards by theory's per-layer factor: √χ₁(q_l) = √(σ_w²·E[φ′(h)²]) along the forward "
        "variance trajectory for plain networks (flat for ReLU with He init; about ¼ per layer for sigmoid), "
        "√rate of Yang et al. (2019) for batch norm (explodes towards the input: ≈ √(π/(π−1)) per layer for "
        "ReLU), √(1+α²χ₁) per residual block. No dotted line where theory has no closed form (tanh/sigmoid "
        "residual nets, layer norm, CNNs).",
    ),
    "gain_scatter": (
        "Measured vs predicted per-layer gain",
        "Each point is one run: the measured per-layer gain (geometric mean of ‖∂L/∂x_{l−1}‖/‖∂L/∂x_l‖ over the "
        "hidden layers at step 0, theory.measured_gain) against theory's prediction for the same layers "
        "(marker = which closed form). Points on the dashed y = x line agree with mean-field theory; the green "
        "band is the healthy range of the verdict. Expect agreement within a few percent for wide plain "
        "networks; batch-norm and residual predictions assume infinite width and are looser at width 32–64. "
        "Runs without a closed-form prediction (NaN) are counted in the legend but not drawn.",
    ),
    "gradient_heatmaps": (
        "Weight-gradient norm by layer and step",
        "log₁₀ ‖∂L/∂W_l‖ (grad/&lt;layer&gt;/l2) for a few runs spread from the most vanishing to the most "
        "exploding measured gain, one shared colour scale. A dark band at the bottom (input side) that stays "
        "dark is a vanishing gradient that training does not repair (Glorot &amp; Bengio 2010: for sigmoid the "
        "back-propagated signal shrinks while weight gradients can stay flatter); a bright bottom is explosion. "
        "Grey cells are non-finite values (a diverged step).",
    ),
    "phase_diagram": (
        "Trainability phase diagram",
        "Cells are depth × activation/init, one panel per architecture; the colour is the outcome of the best "
        "run in the cell, the number its objective (and k/n = how many of n runs trained, when there are "
        "several). Rule: {rule}. Mean-field theory predicts that plain networks away from χ₁ = 1 (sigmoid; tanh "
        "or ReLU with a too-small or too-large init) fail more often as depth grows, that batch norm without "
        "skips explodes with depth, and that residual connections with a small α keep deep nets trainable.",
    ),
    "clipping": (
        "Gradient clipping",
        "Left: the global gradient norm before (solid, grad/global_l2) and after clipping (dashed, "
        "grad/global_l2_clipped), dotted lines at norm-clipping thresholds. Right: the share of logged steps at "
        "which clipping changed the gradient, by threshold and optimizer. Pascanu et al. (2013): norm clipping "
        "caps the step taken on a cliff of the loss without changing its direction; a threshold that clips "
        "every step acts as a smaller, normalized learning rate, one that never clips does nothing. Adaptive "
        "optimizers (Adam) rescale the gradient anyway, so clipping matters less to them.",
    ),
    "saturation": (
        "Saturation and dead units",
        "Share of units whose derivative is below 5 % of its maximum (act/&lt;layer&gt;/saturation): sigmoid "
        "near 0/1, tanh near ±1, ReLU outputs exactly 0, at the start, middle and end of training, averaged "
        "over runs. Glorot &amp; Bengio (2010): the top sigmoid layers saturate early and slow learning. For ReLU "
        "about half the outputs are 0 at initialization by symmetry; a layer drifting towards 1 is dying.",
    ),
    "update_ratio": (
        "Weight-update ratio",
        "‖ΔW‖/‖W‖ of each step (update/&lt;layer&gt;/ratio) by layer and over training, median and "
        "interquartile band over runs per optimizer. The common rule of thumb is about 10⁻³: much smaller and "
        "the layer barely learns (vanishing gradients show as low ratios near the input under SGD), much larger "
        "and training is unstable. Adam's update is scale-free, so its ratios are flat across layers.",
    ),
    "optimizer_curves": (
        "Optimizers: loss against steps and time",
        "Training loss (every logged step) and validation loss against step and against wall-clock seconds "
        "(time/elapsed, the median clock of the runs at each step), the median and interquartile band over the "
        "runs of each optimizer setting (colour = optimizer, black = full-batch GD, grey = SGD with batch 1, "
        "dashes = learning-rate schedule), each run interpolated inside its own range and a point drawn only where at least "
        "half the runs have data. Compare per step for sample efficiency and per second for cost; diverged runs "
        "drop out where their loss stopped being finite.",
    ),
    "optimizer_results": (
        "Optimizers: final result and cost",
        "The final validation accuracy (validation loss where there is no accuracy) of every run, by optimizer "
        "setting (dots = runs, e.g. seeds; bars = their mean), and the wall-clock milliseconds per training step "
        "(time/elapsed at the last step over the steps). Full-batch gradient descent is SGD whose batch holds the "
        "whole training set (tag n_train): each step costs the most and is the least noisy; SGD with batch 1 is "
        "the cheapest and noisiest step. Adaptive methods (RMSprop, Adagrad, Adam, AdamW) reach a low loss "
        "with little tuning; schedules (step, cosine, one-cycle) trade early speed for a better end point.",
    ),
    "bptt": (
        "Gradients through time (recurrent nets)",
        "‖∂L/∂h_t‖ against the time step t for each RNN/LSTM/GRU run (first recurrent layer), at initialization "
        "and at the last logged step, log scale. The loss reads the last step, so the curve is the gradient "
        "travelling back in time: Pascanu et al. (2013) bound its decay per step by λ·γ (largest singular "
        "value of W_hh times sup|φ′|), so a tanh RNN's curve falls exponentially towards t = 0, while the "
        "LSTM's and GRU's additive memory keeps it flat enough to learn the adding problem's long lags "
        "(Hochreiter &amp; Schmidhuber 1997).",
    ),
    "recurrent_curves": (
        "Recurrent cells by sequence length",
        "The loss of every RNN/LSTM/GRU run against the training step, one panel per sequence length "
        "(validation loss when every run was validated at least three times, else training loss); solid lines "
        "trained without clipping, dashed with it, × where a run diverged. On the adding problem the dotted line "
        "is the trivial baseline, always predicting the mean: MSE = Var(U₁ + U₂) = 1/6. Hochreiter &amp; "
        "Schmidhuber (1997): a tanh RNN stays at the baseline once the lag is long (its gradient through time "
        "vanishes, see the figure above), while the LSTM and GRU fall far below it; at short lengths all three "
        "learn.",
    ),
    "clipping_effect": (
        "Clipping on runs that explode",
        "Runs that differ only in gradient clipping, paired. Left: the global gradient norm before clipping "
        "(grad/global_l2) of the pairs whose unclipped run reached the largest norm, unclipped solid, clipped "
        "dashed, × where a run diverged. Right: each pair's objective without (x) and with clipping (y), on the "
        "side of the diagonal the title names where clipping helped; × on the edge marks a run that diverged. Pascanu et al. "
        "(2013): an RNN with spectral radius above 1 under plain SGD meets gradient cliffs; an unclipped step "
        "there throws the weights far away (often to non-finite values), a norm-clipped step keeps the "
        "direction and caps the length, so the same run trains.",
    ),
    "output_gradient": (
        "The gradient side of the loss: sigmoid + MSE vs sigmoid + cross-entropy",
        "Binary classification with one sigmoid output (breast_cancer): the training loss relative to its value "
        "at step 0 (top) and the norm of the readout's weight gradient (bottom, grad/out/l2), median and "
        "interquartile band over runs of each run's rolling median over 5 logged steps, a column per hidden activation; dashed lines start from a larger "
        "init_gain, so the output starts saturated. With MSE on σ(z) the output delta is (σ − y)·σ′(z): "
        "when the unit saturates on the wrong side σ′ ≈ 0 and learning crawls (the learning slowdown); "
        "cross-entropy cancels σ′, its delta is σ − y, largest exactly when the output is most wrong.",
    ),
    "gan_gradient": (
        "GAN generator losses when the discriminator wins",
        "A GAN on a ring of Gaussians with the discriminator stepped several times per generator step, so it "
        "wins early (right: D(G(z)), the mean probability it gives to fakes, gan/d_fake). Left: the norm of the "
        "generator's output-layer weight gradient (grad/out/l2), median and interquartile band over seeds "
        "(each run smoothed by a rolling median over 5 logged steps). "
        "Goodfellow et al. (2014): the saturating loss log(1 − D(G(z))) has ∂/∂logit = −D(G(z)), which "
        "vanishes when D rejects the fakes confidently; the non-saturating −log D(G(z)) has −(1 − D(G(z))), "
        "largest exactly then.",
    ),
}
NEEDS = {
    "backprop_by_layer": "non-recurrent runs with at least two hidden layers measured at step 0",
    "gain_scatter": "runs whose architecture has a closed-form prediction (plain MLP, batch-norm MLP, ReLU residual MLP)",
    "gradient_heatmaps": "runs with per-layer weight-gradient norms",
    "phase_diagram": "non-recurrent runs with a depth",
    "clipping": "runs with clipping on (clip = norm or value)",
    "saturation": "non-recurrent runs with activation statistics",
    "update_ratio": "runs with update ratios",
    "optimizer_curves": "runs with training-loss records",
    "optimizer_results": "at least two optimizer settings with a final validation result",
    "bptt": "recurrent runs (rnn, lstm, gru) with per-time-step BPTT norms",
    "recurrent_curves": "recurrent runs (rnn, lstm, gru) with loss records",
    "clipping_effect": "pairs of runs that differ only in clipping (clip = none and clip = norm or value)",
    "output_gradient": "breast_cancer runs with both the bce and the mse loss",
    "gan_gradient": "GAN runs (loss gan_saturating or gan_nonsaturating)",
}

# The page style, shared with the invariance report.
PAGE_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; }
section.fig { display: flex; gap: 1.5em; align-items: flex-start; margin: 1.5em 0;
  border-top: 1px solid #ddd; padding-top: 1em; }
section.fig img { max-width: 68%; height: auto; }
section.fig p { line-height: 1.45; }
table.runs { border-collapse: collapse; font-size: 0.8em; }
table.runs th, table.runs td { padding: 2px 6px; border-bottom: 1px solid #eee; text-align: right; }
.rule { background: #f6f6f6; padding: 0.6em 1em; }
</style>"""


class NoRuns(LookupError):
    """No MLflow run carries the tag study=<name>."""


def objective_of(data: StudyData) -> tuple[str, str]:
    """(metric, direction) of the study's objective, from its parent run's `objective` param ('maximize val/acc')."""
    if data.parent_run_id is not None:
        parent = load.runs(run_ids=[data.parent_run_id], role=None)
        text = str(parent["objective"].iloc[0]) if "objective" in parent else ""
        direction, _, metric = text.partition(" ")
        if direction in ("maximize", "minimize") and metric:
            return metric, direction
    if "metrics.val/acc" in data.runs:
        return "val/acc", "maximize"
    return "val/loss", "minimize"


def summary_table(runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/acc") -> pd.DataFrame:
    """One row per run: ids, config, outcome, training result, objective, measured/predicted gain, verdict."""
    runs = summary.annotate(runs, stats)
    ids = [c for c in ("run_id", "trial") if c in runs]
    config = [c for c in summary.CONFIG_COLUMNS if c in runs]
    tags = [c for c in ("outcome", "diverged_step") if c in runs]
    metric = f"metrics.{objective}"
    table = runs[[*ids, *config, *tags, "training"]].copy()
    table[objective] = runs[metric].to_numpy() if metric in runs else float("nan")
    return table.join(runs[list(summary.SUMMARY_COLUMNS[:-1])])


def draw_one(name: str, data: StudyData, folder: Path, objective: tuple[str, str]) -> Path | None:
    """Draw one figure of FIGURES into folder/<name>.png; None when the study lacks its data."""
    takes_objective = name in ("phase_diagram", "clipping_effect")
    extra = {"objective": objective[0], "direction": objective[1]} if takes_objective else {}
    fig = figures.FIGURES[name](data.runs, data.stats, **extra)
    return None if fig is None else figures.save_figure(fig, folder / f"{name}.png")


def render_figures(data: StudyData, folder: Path, objective: tuple[str, str]) -> dict[str, Path | None]:
    """Draw every figure that has data into `folder`; name → PNG path, or None when the study lacks its data."""
    return {name: draw_one(name, data, folder, objective) for name in figures.FIGURES}


def _table_html(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["verdict_tolerance"], errors="ignore")
    shown = shown.assign(run_id=shown["run_id"].str[:8])
    return shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", classes="runs", border=0)


def _counts(table: pd.DataFrame, column: str) -> str:
    if column not in table or table.empty:
        return "none"
    return ", ".join(f"{k}: {v}" for k, v in table[column].value_counts().items())


def _gain_notes(table: pd.DataFrame) -> str:
    """The sentence saying how many runs' gains leave layers out (theory.measure_gain), or ''."""
    notes = table.get("gain_note", pd.Series(dtype=object)).fillna("")
    count = int((notes != "").sum())
    if not count:
        return ""
    runs = "run's gain leaves" if count == 1 else "runs' gains leave"
    return (
        f"Gains span the hidden layers whose step-0 norm is positive and finite: {count} {runs} layers out "
        f"(column gain_note, e.g. {notes[notes != ''].iloc[0]}). "
    )


def write_html(study: str, table: pd.DataFrame, written: dict[str, Path | None], objective: tuple[str, str],
               path: Path) -> Path:  # fmt: skip
    """The self-contained index.html: header, rules, every figure beside its caption, the table of runs."""
    sections, missing = [], []
    for name, png in written.items():
        title, caption = CAPTIONS[name]
        caption = caption.replace("{rule}", html.escape(summary.OUTCOME_RULE))
        if png is None:
            missing.append(f"<li>{title}: this study has no {NEEDS[name]}.</li>")
            continue
        sections.append(f'<section class="fig"><img src="{png.name}" alt="{title}">'
                        f"<div><h2>{title}</h2><p>{caption}</p></div></section>")  # fmt: skip
    skipped = f"<h2>Not drawn</h2><ul>{''.join(missing)}</ul>" if missing else ""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(study)}: gradient report</title>
{PAGE_STYLE}</head><body>
<h1>Gradient report: study <code>{html.escape(study)}</code></h1>
<p>Generated {now} from MLflow (runs tagged <code>study={html.escape(study)}</code>). {len(table)} trial runs;
outcome: {_counts(table, "outcome")}; training: {_counts(table, "training")}; verdict at initialization:
{_counts(table, "verdict")}. Objective: {objective[1]} <code>{objective[0]}</code>.</p>
<p class="rule"><b>Verdict</b>: {html.escape(VERDICT_RULE)}.<br><b>Training outcome</b>:
{html.escape(summary.OUTCOME_RULE)}.<br>{html.escape(_gain_notes(table))}The per-run table is also in <a href="summary.csv">summary.csv</a>.</p>
{"".join(sections)}
{skipped}
<h2>Runs</h2>
{_table_html(table)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_report(data: StudyData, folder: Path) -> Path:
    """Figures, summary.csv and index.html of one study into `folder` (stale PNGs removed first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # index.html must list exactly the figures this build drew
        old.unlink()
    objective = objective_of(data)
    data = dataclasses.replace(data, runs=summary.annotate(data.runs, data.stats))  # gains computed once
    table = summary_table(data.runs, data.stats, objective[0])
    table.to_csv(folder / "summary.csv", index=False)
    written = render_figures(data, folder, objective)
    return write_html(data.name, table, written, objective, folder / "index.html")


def log_report(folder: Path, parent_run_id: str | None) -> bool:
    """Log the report folder as artifacts `report/` of the study's parent run; False when there is no parent."""
    if parent_run_id is None:
        print("warning: the study has no parent run; the report is not logged to MLflow", file=sys.stderr)
        return False
    MlflowClient().log_artifacts(parent_run_id, str(folder), artifact_path=ARTIFACT_PATH)
    return True


def build(study: str, out_dir: str | Path = "reports") -> Path:
    """Regenerate the report of `study` into out_dir/<study>/ and log it to the parent run; returns index.html."""
    data = load.study(study)
    if data.runs.empty and data.parent_run_id is None:
        raise NoRuns(f"no MLflow runs carry the tag study={study!r} in this tracking store")
    index = write_report(data, Path(out_dir) / study)
    log_report(index.parent, data.parent_run_id)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build one study's report; exit code 2 when the study has no runs."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--study", required=True, help="the study name (the runs' `study` tag)")
    parser.add_argument("--out-dir", default="reports", help="folder that receives <study>/index.html")
    args = parser.parse_args(argv)
    try:
        index = build(args.study, args.out_dir)
    except NoRuns as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
