"""The invariance report: accuracy against shift, consistency, equivariance error by layer, the gradient checks.

    python -m analysis.invariance_report [--run-id RUN] [--out-dir reports]
    mlflow run . -e invariance_report --env-manager local

Reads what `python -m experiments.invariance` logged (no training, no recomputation): the zoo table of one
invocation (by default the newest) and each zoo run's `invariance/metrics.parquet`, through analysis.load.
Writes reports/invariance/index.html with the PNGs and summary.csv beside it, and logs the folder as the
artifacts `report/` of the invariance parent run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import html
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import load
from analysis.figures import style
from analysis.figures.style import PAGE_STYLE, save_figure, styled
from analysis.report import remove_own_outputs
from common.cli import OneLineParser
from common.errors import ConfigError
from common.preflight import check_tracking
from gradprobe import keys as K

ARTIFACT_PATH = "report"
FOLDER = K.INVARIANCE  # reports/<FOLDER>/index.html
FLOOR = 1e-12  # exact zeros are drawn here on log axes
ROUNDING = {"float32": 1e-6, "float64": 1e-12}  # what counts as float rounding in the captions and the verdict

# Zoo names → legend labels, in the order they are drawn; unknown names are drawn after these, as they are.
LABELS = {
    "mlp": "MLP",
    "mlp_bn": "MLP + batch norm",
    "cnn_circ": "CNN circular, stride 1, GAP",
    "cnn_zeros": "CNN zero padding",
    "cnn_circ_stride2": "CNN stride 2",
    "cnn_circ_pool": "CNN max-pool",
    "cnn_circ_flatten": "CNN flatten head",
    "cnn_circ_bn": "CNN + batch norm",
}
MODES = {"circ": "circular shift", "zero": "non-circular shift (background fills in)"}
STATES = {"init": "at initialization", "trained": "trained"}
STATE_COLORS = {"init": "0.7", "trained": sns.color_palette("colorblind")[0]}
DATASET_TITLES = {"mnist1d": "mnist1d (1-D shifts)", "digits": "digits (2-D diagonal shifts)"}


def label(name: str) -> str:
    """The legend label of a zoo model."""
    return LABELS.get(name, name)


def _order(names) -> list[str]:
    present = list(dict.fromkeys(names))
    return [n for n in LABELS if n in present] + sorted(n for n in present if n not in LABELS)


def _palette(names) -> dict[str, object]:
    colors = sns.color_palette("colorblind", 10)
    return {label(n): colors[i % 10] for i, n in enumerate(_order(list(LABELS) + list(names)))}


def _datasets(table: pd.DataFrame) -> list[str]:
    known = ["mnist1d", "digits"]
    present = list(dict.fromkeys(table["dataset"]))
    return [d for d in known if d in present] + [d for d in present if d not in known]


# ------------------------------------------------------------------------------------------ figures
# Built with the report's style helpers (analysis/figures/style.py): the Agg canvas, never pyplot. Each figure
# is as wide as its panels plus room for the legend beside them.
new_figure = functools.partial(style.new_figure, min_width=0.0, legend_room=2.2)


@styled
def accuracy_vs_shift(table: pd.DataFrame) -> Figure | None:
    """Validation accuracy of the trained models against the shift k, per dataset (columns) and shift mode (rows)."""
    rows = table[(table["metric"] == "acc") & (table["state"] == "trained")].copy()
    if rows.empty:
        return None
    rows["model"] = rows["name"].map(label)
    datasets, palette = _datasets(rows), _palette(rows["name"])
    hue_order = [label(n) for n in _order(rows["name"])]
    fig, axes = new_figure(len(K.SHIFT_MODES), len(datasets), width=5.4, height=3.6, sharey=True)
    for i, mode in enumerate(K.SHIFT_MODES):
        for j, dataset in enumerate(datasets):
            ax = axes[i, j]
            part = rows[(rows["mode"] == mode) & (rows["dataset"] == dataset)].astype({"shift": int})
            sns.lineplot(
                part,
                x="shift",
                y="value",
                hue="model",
                hue_order=hue_order,
                palette=palette,
                marker="o",
                markersize=4,
                ax=ax,
                legend=i == 0 and j == 0,
            )
            ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}: {MODES[mode]}", fontsize="medium")
            ax.set_xlabel("shift k (samples / pixels per axis)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("validation accuracy")
            ax.set_ylim(0, 1.02)
    legend = axes[0, 0].get_legend()
    if legend is not None:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="outside right center", fontsize="small", title="trained model")
    fig.suptitle("Accuracy against shift (trained models; k = 0 is the unshifted validation set)")
    return fig


@styled
def consistency_bars(table: pd.DataFrame) -> Figure | None:
    """Consistency under a one-step shift, per model, at initialization and trained; datasets × shift modes."""
    rows = table[(table["metric"] == "consistency") & table["shift"].isna()].copy()
    if rows.empty:
        return None
    rows["model"] = rows["name"].map(label)
    rows["state"] = rows["state"].map(STATES)
    datasets = _datasets(rows)
    order = [label(n) for n in _order(rows["name"])]
    fig, axes = new_figure(
        len(K.SHIFT_MODES), len(datasets), width=5.2, height=0.35 * len(order) + 1.4, sharex=True, sharey=True
    )
    palette = {STATES[s]: c for s, c in STATE_COLORS.items()}
    for i, mode in enumerate(K.SHIFT_MODES):
        for j, dataset in enumerate(datasets):
            ax = axes[i, j]
            part = rows[(rows["mode"] == mode) & (rows["dataset"] == dataset)]
            sns.barplot(
                part,
                y="model",
                x="value",
                hue="state",
                order=order,
                hue_order=list(STATES.values()),
                palette=palette,
                ax=ax,
                legend=i == 0 and j == 0,
            )
            for container in ax.containers:
                ax.bar_label(container, fmt="%.2f", fontsize=7, padding=2)
            ax.axvline(1.0, color="0.3", lw=0.8, ls="--")
            ax.set_xlim(0, 1.15)
            ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}: {MODES[mode]}", fontsize="medium")
            ax.set_xlabel("consistency" if i == len(K.SHIFT_MODES) - 1 else "")
            ax.set_ylabel("")
    legend = axes[0, 0].get_legend()
    if legend is not None:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(
        "Shift consistency (Zhang 2019): share of inputs whose top-1 class a one-step shift (k = ±1) leaves unchanged"
    )
    return fig


def _short(value: float) -> str:
    """A cell annotation: 0 for an exact zero, else two significant digits."""
    if value == 0:
        return "0"
    return f"{value:.1e}".replace("e-0", "e-").replace("e+00", "") if value < 0.01 else f"{value:.2f}"


@styled
def equivariance_by_layer(table: pd.DataFrame) -> Figure | None:
    """‖f_l(T_k x) − T_{k/s} f_l(x)‖/‖f_l(x)‖ of every conv layer (columns, init | trained) and model (rows; k = 1,
    and k = s for layers with a total stride s > 1), one heatmap per dataset, log colour scale."""
    rows = table[table["metric"] == "eqerr"].copy()
    if rows.empty:
        return None
    # Rows exist for k = 1 and, on layers whose total stride s > 1, for k = s.
    rows["row"] = [f"{label(n)}, k = {'1' if k == 1 else 's'}" for n, k in zip(rows["name"], rows["shift"])]
    rows["column"] = rows["state"] + "\n" + rows["layer"]
    datasets = _datasets(rows)
    order = [f"{label(n)}, k = {k}" for n in _order(rows["name"]) for k in ("1", "s")]
    fig, axes = new_figure(1, len(datasets), width=5.6, height=0.42 * rows["row"].nunique() + 1.6)
    low, high = -8, 0.5  # log10 colour range: float32 rounding and below are the darkest
    for j, dataset in enumerate(datasets):
        ax = axes[0, j]
        part = rows[rows["dataset"] == dataset]
        grid = part.pivot_table(index="row", columns="column", values="value", aggfunc="first")
        grid = grid.reindex([r for r in order if r in grid.index])
        grid = grid[sorted(grid.columns, key=lambda c: (c.split("\n")[0] != "init", c))]
        logged = np.log10(grid.clip(lower=10.0**low).astype(float))
        sns.heatmap(
            logged,
            ax=ax,
            vmin=low,
            vmax=high,
            cmap="rocket",
            annot=grid.map(lambda v: "" if pd.isna(v) else _short(v)).to_numpy(),
            fmt="",
            annot_kws={"fontsize": 7.5},
            cbar=j == len(datasets) - 1,
            cbar_kws={"label": "log₁₀ relative error (≤ −8: exact or rounding)"},
            linewidths=0.5,
            linecolor="white",
        )
        ax.axvline(sum(c.startswith("init") for c in grid.columns), color="white", lw=3)
        ax.set_title(DATASET_TITLES.get(dataset, dataset), fontsize="medium")
        ax.set_xlabel("conv layer (input side first), at initialization | trained")
        ax.set_ylabel("" if j else "model, shift k (s = the layer's total stride)")
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("Equivariance error ‖f_l(T_k x) − T_{k/s} f_l(x)‖ / ‖f_l(x)‖ under circular shifts")
    return fig


GRADIENT_STATS = {
    (K.BN_SCALE, "grad_scale"): ("batch norm: layer before BN", "1/c"),
    (K.RELU_RESCALE, "grad_scale_l"): ("ReLU: layer l (× c)", "1/c"),
    (K.RELU_RESCALE, "grad_scale_next"): ("ReLU: layer l+1 (× 1/c)", "c"),
}
CHANGE_STATS = {
    (K.BN_SCALE, "out_change"): "batch norm (eps ≈ 0): output",
    (K.BN_SCALE, "out_change_eps"): "batch norm (eps = 1e-5): output",
    (K.RELU_RESCALE, "out_change"): "ReLU rescaling: output",
    (K.BN_SCALE, "step_change"): "batch norm: output after one SGD step",
    (K.RELU_RESCALE, "step_change"): "ReLU rescaling: output after one SGD step",
}


@styled
def gradient_checks(table: pd.DataFrame) -> Figure | None:
    """Left: gradient-norm ratio ‖g'‖/‖g‖ against the scale c with the predicted 1/c and c lines. Right: how
    much the output changes (nothing, up to rounding or BN's eps) and how much it changes one SGD step later."""
    rows = table[table["metric"].isin([K.BN_SCALE, K.RELU_RESCALE])].copy()
    if rows.empty:
        return None
    rows["which"] = [GRADIENT_STATS.get((m, s), (None,))[0] for m, s in zip(rows["metric"], rows["stat"])]
    rows["change"] = [CHANGE_STATS.get((m, s)) for m, s in zip(rows["metric"], rows["stat"])]
    fig, axes = new_figure(1, 2, width=5.6, height=4.4)
    ax = axes[0, 0]
    scales = np.array(sorted(rows["scale"].unique()))
    grid = np.geomspace(scales.min() / 1.3, scales.max() * 1.3, 50)
    ax.plot(grid, 1 / grid, color="0.3", ls="--", lw=1, label="predicted 1/c")
    ax.plot(grid, grid, color="0.3", ls=":", lw=1.2, label="predicted c")
    grads = rows.dropna(subset=["which"]).copy()
    nudge = dict(zip([v[0] for v in GRADIENT_STATS.values()], [0.93, 1.075, 1.0]))  # BN and ReLU-l share 1/c
    grads["scale"] = grads["scale"] * grads["which"].map(nudge)
    markers = dict(zip([v[0] for v in GRADIENT_STATS.values()], ["o", "s", "^"]))
    sns.scatterplot(
        grads,
        x="scale",
        y="value",
        hue="which",
        style="which",
        markers=markers,
        s=55,
        alpha=0.7,
        hue_order=list(markers),
        style_order=list(markers),
        ax=ax,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("scale c applied to the weights")
    ax.set_ylabel("gradient-norm ratio ‖g′‖ / ‖g‖")
    ax.set_title("Gradients are scaled, as predicted", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper center")
    ax = axes[0, 1]
    changes = rows.dropna(subset=["change"]).copy()
    changes["shown"] = changes["value"].clip(lower=1e-17)
    changes["c"] = changes["scale"].map(lambda v: f"{v:g}")
    order = [v for v in CHANGE_STATS.values() if v in set(changes["change"])]
    paired = sns.color_palette("Paired", 10)
    colors = dict(zip(CHANGE_STATS.values(), [paired[1], paired[9], paired[3], paired[0], paired[2]]))
    sns.stripplot(
        changes,
        x="c",
        y="shown",
        hue="change",
        hue_order=order,
        dodge=True,
        jitter=0.12,
        size=4,
        alpha=0.75,
        palette=colors,
        ax=ax,
        order=[f"{v:g}" for v in scales],
    )
    ax.set_yscale("log")
    ax.set_ylim(1e-17, 10)
    ax.axhspan(1e-17, ROUNDING["float64"], color="0.92", lw=0)
    ax.set_xlabel("scale c")
    ax.set_ylabel("relative change ‖f′ − f‖ / ‖f‖")
    ax.set_title("Same function, different training step", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="relative change of")
    fig.suptitle("Invariances that shape gradients (float64; every zoo model, at initialization and trained)")
    return fig


FIGURES = {
    "accuracy_vs_shift": accuracy_vs_shift,
    "consistency": consistency_bars,
    "equivariance_by_layer": equivariance_by_layer,
    "gradient_checks": gradient_checks,
}

CAPTIONS = {
    "accuracy_vs_shift": (
        "Accuracy against shift",
        "Validation accuracy of each trained model when every input is shifted by k (mnist1d: k samples; digits: "
        "k rows and k columns). Top: circular shifts (torch.roll); bottom: non-circular shifts, where what leaves "
        "the frame is lost and the background fills in. Expect the circular, stride-1, global-average-pool CNNs "
        "(with or without batch norm) to be flat under circular shifts: they are exactly invariant (Azulay &amp; "
        "Weiss 2019). The MLP, the flatten head and, less so, the zero-padded, strided and pooled CNNs lose accuracy "
        "as k grows. Under non-circular shifts nothing is exactly invariant: content leaves the frame.",
    ),
    "consistency": (
        "Consistency under a one-step shift",
        "Share of validation inputs whose top-1 class is unchanged by a shift of one step (mean over k = +1 and "
        "k = −1; Zhang 2019), at initialization (grey) and trained (blue). The circular/stride-1/GAP CNNs score "
        "exactly 1.0 under circular shifts; zero padding breaks it at the borders, a stride of 2 or max-pooling "
        "(subsampling, Azulay &amp; Weiss 2019) breaks it for shifts that are not multiples of the stride, and a "
        "flatten head or an MLP has no built-in invariance at all. An untrained network often predicts one "
        "class for most inputs, which makes its consistency high for an uninteresting reason.",
    ),
    "equivariance_by_layer": (
        "Equivariance error by layer",
        "‖f_l(T_k x) − T_{k/s} f_l(x)‖ / ‖f_l(x)‖ for every conv block l under a circular shift T_k of the input, "
        "where s is the block's total stride (strides and pooling up to its output). One heatmap per dataset: a row "
        "per model and shift (k = 1, and k = s for blocks with s > 1), a column per conv block at initialization, "
        "then (right of the white line) trained; the colour is log₁₀ of the error, the number in the cell its value. "
        "When k is not a multiple of s no shift of the output grid matches, and the error is against the nearer of "
        "⌊k/s⌋ and ⌈k/s⌉. Expect float32 rounding (the darkest cells: ≤ 10⁻⁸ or exactly 0) for circular "
        "stride-1 blocks, and for strided or pooled blocks at k = s; a large error at k = 1 for strided or pooled "
        "blocks (subsampling is not shift equivariant); and a non-zero error in every block with zero padding (the "
        "borders see zeros, not the wrapped-around input). The head does not change the conv layers, so the flatten "
        "CNN's errors equal the circular CNN's: it loses invariance only in the readout.",
    ),
    "gradient_checks": (
        "Invariances that shape gradients",
        "Measured with autograd on each zoo network (float64 copies, 64 training examples, the pipeline's loss). "
        "Batch norm (models with batch norm): the weight before the first batch norm is scaled by c; the output is "
        "unchanged (up to batch norm's eps = 1e-5, which adds a relative change of order eps/Var) while the weight's "
        "gradient is scaled by 1/c. ReLU positive homogeneity (models without normalization): block L000's weight and "
        "bias are scaled by c and the next layer's weight by 1/c; the output is unchanged to float64 rounding (grey "
        "band), the gradients are scaled by 1/c and c. Left: measured ‖g′‖/‖g‖ against the predicted lines. Right: the "
        "output change, and the change of the output after one SGD step (lr 0.1) from both parametrizations: the "
        "same function trains differently, so gradient descent is not invariant to these symmetries.",
    ),
}


# ---------------------------------------------------------------------------------------------- page


def tidy(zoo: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics table with each run's zoo name and dataset."""
    names = zoo[["run_id", "model", "dataset"]].rename(columns={"model": "name"})
    return metrics.merge(names, on="run_id", how="inner")


def _pick(rows: pd.DataFrame, state: str, metric: str, mode: str | None = None, shift: int | None = None) -> float:
    """The largest value of one metric of one run: a mode's one-step summary, or the rows at one shift."""
    part = rows[(rows["state"] == state) & (rows["metric"] == metric)]
    if mode is not None:
        part = part[(part["mode"] == mode) & part["shift"].isna()]
    if shift is not None:
        part = part[part["shift"] == shift]
    return float(part["value"].max()) if len(part) else math.nan


def summary_table(zoo: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """A row per zoo run: dataset, model, accuracy, one-step consistency and probability change, equivariance errors."""
    out = []
    for run in zoo.to_dict("records"):
        rows = table[table["run_id"] == run["run_id"]]
        record = {"dataset": run["dataset"], "model": run["model"], "accuracy": _pick(rows, "trained", "acc", shift=0)}
        for state in K.INVARIANCE_STATES:
            for mode in K.SHIFT_MODES:
                record[f"consistency_{mode}_{state}"] = _pick(rows, state, "consistency", mode)
            record[f"prob_change_circ_{state}"] = _pick(rows, state, "prob_change", "circ")
            record[f"eqerr_k1_max_{state}"] = _pick(rows, state, "eqerr", shift=1)
        strided = rows[(rows["metric"] == "eqerr") & (rows["stride"] > 1) & (rows["shift"] == rows["stride"])]
        record["eqerr_ks_max_trained"] = _pick(strided, "trained", "eqerr")
        record["reused"], record["run_id"] = bool(run.get("reused", False)), run["run_id"]
        out.append(record)
    return pd.DataFrame(out)


def exact_invariance(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of models that must be exactly invariant (circular, stride 1, GAP) with whether they are."""
    rows = summary[summary["model"].isin(["cnn_circ", "cnn_circ_bn"])].copy()
    tol = ROUNDING["float32"]
    rows["exact"] = (
        (rows["consistency_circ_init"] == 1.0)
        & (rows["consistency_circ_trained"] == 1.0)
        & (rows[["prob_change_circ_init", "prob_change_circ_trained"]].max(axis=1) <= tol)
        & (rows[["eqerr_k1_max_init", "eqerr_k1_max_trained"]].max(axis=1) <= tol)
    )
    return rows


def write_html(invocation: pd.Series, summary: pd.DataFrame, written: dict[str, Path | None], path: Path) -> Path:
    """index.html: what was tested, the exact-invariance verdict, every figure beside its caption, the table."""
    sections, missing = [], []
    for name, png in written.items():
        title, caption = CAPTIONS[name]
        if png is None:
            missing.append(f"<li>{title}: no data.</li>")
            continue
        sections.append(
            f'<section class="fig"><img src="{png.name}" alt="{title}">'
            f"<div><h2>{title}</h2><p>{caption}</p></div></section>"
        )
    exact = exact_invariance(summary)
    verdict = "".join(
        f"<li>{html.escape(r['dataset'])} / {html.escape(label(r['model']))}: consistency "
        f"{r['consistency_circ_init']:.3f}"
        f" (init), {r['consistency_circ_trained']:.3f} (trained); probability change ≤ "
        f"{_short(max(r['prob_change_circ_init'], r['prob_change_circ_trained']))}; equivariance error ≤ "
        f"{_short(max(r['eqerr_k1_max_init'], r['eqerr_k1_max_trained']))}: "
        f"<b>{'exactly invariant' if r['exact'] else 'NOT exact'}"
        f"</b></li>"
        for r in exact.to_dict("records")
    )
    reused = int(summary["reused"].sum())
    shown = summary.assign(run_id=summary["run_id"].str[:8])
    table_html = shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3g}", classes="runs", border=0)
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    skipped = f"<h2>Not drawn</h2><ul>{''.join(missing)}</ul>" if missing else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invariance tests</title>
{PAGE_STYLE}</head><body>
<h1>Invariance tests</h1>
<p>Generated {now} from MLflow: invocation run <code>{html.escape(str(invocation["run_id"]))}</code>, {len(summary)} zoo
runs ({reused} reused, {len(summary) - reused} trained by that invocation). A model f is invariant to a shift T when
f(T x) = f(x) and equivariant when f(T x) = T f(x). Every number is logged to its zoo run under
<code>invariance/&lt;init|trained&gt;/…</code> and in its artifact <code>{K.INVARIANCE_ARTIFACT}</code>; the table
below is also in <a href="summary.csv">summary.csv</a>.</p>
<div class="rule"><b>Exact invariance</b> (circular padding, stride 1, global average pool; circular shifts; rounding
tolerance {ROUNDING["float32"]:g}):<ul>{verdict or "<li>no such model in this zoo</li>"}</ul></div>
{"".join(sections)}
{skipped}
<h2>Models</h2>
<p>accuracy: trained, unshifted validation set. consistency_&lt;mode&gt;_&lt;state&gt;: one-step shift.
prob_change: mean |Δp| of the predicted class under a one-step circular shift. eqerr_k1_max: the largest
equivariance error over conv layers at k = 1; eqerr_ks_max: at k = s over the strided/pooled layers.</p>
{table_html}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_report(invocation: pd.Series, zoo: pd.DataFrame, metrics: pd.DataFrame, folder: Path) -> Path:
    """Figures, summary.csv and index.html into `folder`; returns index.html.

    What an earlier build wrote there is removed first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    remove_own_outputs(folder, FIGURES)
    table = tidy(zoo, metrics)
    summary = summary_table(zoo, table)
    summary.to_csv(folder / "summary.csv", index=False)
    written = {}
    for name, draw in FIGURES.items():
        fig = draw(table)
        written[name] = None if fig is None else save_figure(fig, folder / f"{name}.png")
    return write_html(invocation, summary, written, folder / "index.html")


def tree_parent(invocation: pd.Series) -> str:
    """The parent run of the invariance tree the invocation belongs to (itself when it is the parent)."""
    parent = invocation.get("parent_run_id")
    return (
        str(parent)
        if invocation.get("role") == "worker" and isinstance(parent, str) and parent
        else str(invocation["run_id"])
    )


def build(run_id: str | None = None, out_dir: str | Path = "reports") -> Path:
    """Regenerate the report of invocation `run_id` (default: the newest) into out_dir/invariance/ and log it to
    the parent run as `report/`; returns index.html. LookupError when the store holds no invariance run."""
    invocation, zoo = load.invariance_invocation(run_id)
    runs = load.runs(run_ids=list(zoo["run_id"]), role=None)
    metrics = load.invariance_metrics(runs)
    index = write_report(invocation, zoo, metrics, Path(out_dir) / FOLDER)
    MlflowClient().log_artifacts(tree_parent(invocation), str(index.parent), artifact_path=ARTIFACT_PATH)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build the report; exit code 2 when there is nothing to report."""
    parser = OneLineParser(
        prog="python -m analysis.invariance_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-id", default="", help="an invocation run of experiments.invariance (default: the newest)"
    )
    parser.add_argument("--out-dir", default="reports", help="folder that receives invariance/index.html")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        check_tracking()  # an unreachable or corrupt store: one line within seconds
        index = build(args.run_id or None, args.out_dir)
    except (LookupError, MlflowException, ConfigError) as exc:  # MlflowException: a --run-id of no run
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    own = os.environ.get("MLFLOW_RUN_ID")  # the run `mlflow run` made for this entry point: file it in the tree
    if own:
        invocation, _ = load.invariance_invocation(args.run_id or None)
        for key, value in {
            "study": K.INVARIANCE,
            "role": "report",
            "mlflow.runName": f"{K.INVARIANCE}-report",
            "mlflow.parentRunId": tree_parent(invocation),
        }.items():
            MlflowClient().set_tag(own, key, value)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
