"""Each report figure against the data it was given: lines, cells, points, axis scales and limits, counts in titles.

Small hand-made (runs, stats) frames, shaped like analysis.load's, so every expected number is computed here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis import figures, summary
from gradprobe import keys


def run(run_id: str, **fields) -> dict:
    """One runs row: a plain ReLU MLP with He init on digits unless `fields` say otherwise."""
    base = {
        "run_id": run_id,
        "model": "mlp",
        "norm": "none",
        "activation": "relu",
        "init": "kaiming_normal",
        "init_gain": 1.0,
        "res_scale": 1.0,
        "depth": 4,
        "width": 64,
        "batch_size": 64,
        "dataset": "digits",
        "loss": "ce",
        "optimizer": "sgd",
        "lr": 0.1,
        "clip": "none",
        "clip_threshold": math.nan,
        "seed": 0,
        "seq_len": math.nan,
        "outcome": "completed",
        "diverged_step": math.nan,
        "n_train": 1000,
        "schedule": "none",
    }
    return {**base, **fields}


def rows(run_id: str, family: str, stat: str, values, layer: str = "", steps=None) -> pd.DataFrame:
    """Stats rows of one (family, layer, stat) of one run, at steps 0, 10, 20, … unless given."""
    values = list(values)
    steps = list(steps) if steps is not None else [10 * i for i in range(len(values))]
    return pd.DataFrame(
        {
            "run_id": run_id,
            "step": steps,
            "layer": layer,
            "family": family,
            "stat": stat,
            "value": np.asarray(values, float),
        }
    )


def frames(runs: list[dict], *parts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(runs), pd.concat(parts, ignore_index=True)


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def step0_backprop(run_id: str, norms) -> pd.DataFrame:
    return pd.concat([rows(run_id, "backprop", "l2", [v], layer=f"L{i:03d}", steps=[0]) for i, v in enumerate(norms)])


def loss_curve(run_id: str, values) -> pd.DataFrame:
    return rows(run_id, "train", "loss", values)


# ------------------------------------------------------------------------------------ backprop


def test_backprop_by_layer_draws_one_line_per_step0_configuration_with_anchored_theory() -> None:
    he, xavier = [8.0, 4.0, 2.0, 1.0], [0.8, 0.4, 0.2, 0.1]
    runs, stats = frames(
        [
            run("he"),
            run("he-adam", optimizer="adam"),
            run("xavier", init="xavier_normal"),
            run("he-mse", loss="mse"),
        ],  # the loss changes the gradient at step 0: its own line
        step0_backprop("he", he),
        step0_backprop("he-adam", he),
        step0_backprop("xavier", xavier),
        step0_backprop("he-mse", [4.0, 2.0, 1.0, 0.5]),
    )
    (ax,) = panels(figures.backprop_by_layer(runs, stats))
    measured = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert len(measured) == 3  # he and he-adam share step 0
    assert sorted(tuple(line.get_ydata()) for line in measured) == sorted(map(tuple, (he, xavier, [4, 2, 1, 0.5])))
    assert ax.get_yscale() == "log"
    assert all(float(t).is_integer() for t in ax.get_xticks())  # layer indices are whole numbers
    # No layer-0 activation statistics: the plain-net length map has no start, so no dotted line.
    assert not [line for line in ax.lines if line.get_linestyle() == ":"]


def test_backprop_by_layer_theory_line_is_anchored_and_falls_by_the_predicted_factor() -> None:
    norms = [8.0, 4.0, 2.0, 1.0]
    act = pd.concat(
        [
            rows("x", "act", "mean", [0.5], layer="L000", steps=[0]),
            rows("x", "act", "std", [0.8], layer="L000", steps=[0]),
        ]
    )
    runs, stats = frames([run("x", init="xavier_normal")], step0_backprop("x", norms), act)
    (ax,) = panels(figures.backprop_by_layer(runs, stats))
    (dotted,) = [line for line in ax.lines if line.get_linestyle() == ":"]
    y = np.asarray(dotted.get_ydata())
    assert y[-1] == norms[-1]
    # ReLU with Xavier on square layers: σ_w² = 1, χ₁ = σ_w²/2 for every input variance.
    np.testing.assert_allclose(y[:-1] / y[1:], math.sqrt(0.5), rtol=1e-6)


# ------------------------------------------------------------------------------------ gain scatter


def test_gain_scatter_one_point_per_predicted_run_limits_around_them_and_singular_count() -> None:
    def act(r: str) -> pd.DataFrame:
        return pd.concat(
            [
                rows(r, "act", "mean", [0.5], layer="L000", steps=[0]),
                rows(r, "act", "std", [0.8], layer="L000", steps=[0]),
            ]
        )

    runs, stats = frames(
        [run("a"), run("b", init="xavier_normal"), run("ln", norm="layer")],
        step0_backprop("a", [1, 1, 1, 1]),
        act("a"),
        step0_backprop("b", [8, 4, 2, 1]),
        act("b"),
        step0_backprop("ln", [1, 1, 1, 1]),
    )
    fig = figures.gain_scatter(runs, stats)
    (ax,) = panels(fig)
    points = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert len(points) == 2  # the layer-norm run has no closed form
    lo, hi = ax.get_ylim()
    assert lo < points.min() and points.max() < hi and ax.get_xlim() == ax.get_ylim()
    np.testing.assert_allclose(sorted(points[:, 1]), [1.0, 2.0])  # measured: geometric mean of 8/4, 4/2, 2/1
    texts = legend_texts(fig)
    assert "1 run with no closed-form\nprediction: not shown" in texts
    assert "relu (2 runs)" in texts
    assert "healthy: 1 ± 0.05" in texts  # the band is in view (1 lies between the points)


def test_gain_scatter_leaves_the_healthy_band_out_of_the_legend_when_out_of_view() -> None:
    runs, stats = frames(
        [run("b", init="xavier_normal")],
        step0_backprop("b", [1, 2, 4, 8]),
        rows("b", "act", "mean", [0.5], layer="L000", steps=[0]),
        rows("b", "act", "std", [0.8], layer="L000", steps=[0]),
    )
    fig = figures.gain_scatter(runs, stats)
    (ax,) = panels(fig)
    assert ax.get_ylim()[1] < 0.95 and not any(t.startswith("healthy") for t in legend_texts(fig))


# ------------------------------------------------------------------------------------ heatmaps


def test_gradient_heatmaps_one_cell_per_layer_and_step() -> None:
    grads = [rows("a", "grad", "l2", [10.0**-k] * 5, layer=f"L{k:03d}") for k in range(3)]
    grads.append(rows("a", "grad", "l2", [1.0] * 5, layer="out"))
    runs, stats = frames([run("a", depth=3)], *grads)
    fig = figures.gradient_heatmaps(runs, stats)
    (ax,) = panels(fig)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh.get_array().shape == (4, 5)  # 3 hidden layers + readout × 5 logged steps
    colorbar = [a for a in fig.axes if a.get_label() == "<colorbar>"][0]
    assert colorbar.get_ylim()[0] == pytest.approx(np.quantile([0, -1, -2, 0] * 5, 0.02))


def test_gradient_heatmaps_of_a_run_that_diverged_at_once_has_whole_step_ticks() -> None:
    runs, stats = frames(
        [run("a", depth=2, outcome="diverged", diverged_step=1)],
        *(rows("a", "grad", "l2", [1.0], layer=f"L{k:03d}", steps=[0]) for k in range(2)),
    )
    (ax,) = panels(figures.gradient_heatmaps(runs, stats))
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [0.0]
    assert "diverged at step 1" in ax.get_title()


# ------------------------------------------------------------------------------------ phase diagram


def test_phase_diagram_cells_counts_and_the_unsampled_legend() -> None:
    runs = [run("a", depth=2), run("b", depth=2, seed=1), run("c", depth=8, activation="tanh")]
    runs, stats = frames(runs, loss_curve("a", [2, 1, 0.5]), loss_curve("b", [2, 2, 2]), loss_curve("c", [2, 1, 1]))
    runs["metrics.val/acc"] = [0.9, 0.1, 0.8]
    fig = figures.phase_diagram(runs, stats, objective="val/acc", direction="maximize")
    (ax,) = panels(fig)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    grid = mesh.get_array()
    assert grid.shape == (2, 2) and int(np.ma.count(grid)) == 2  # 2 depths × 2 columns, 2 sampled
    assert sorted(t.get_text() for t in ax.texts) == ["0.80", "0.90\n1/2"]  # best objective; k/n trained
    assert "not sampled" in legend_texts(fig)
    full = pd.concat([runs, runs.assign(run_id=["d", "e", "f"], depth=[8, 8, 2])])
    stats2 = pd.concat([stats, *(loss_curve(r, [2, 1, 0.5]) for r in "def")])
    assert "not sampled" not in legend_texts(figures.phase_diagram(full, stats2))


# ------------------------------------------------------------------------------------ clipping


def test_clipping_share_bars_match_the_steps_clipped() -> None:
    before, after = [4.0, 2.0, 0.4, 0.3], [1.0, 1.0, 0.4, 0.3]  # clipped at 2 of 4 steps
    runs, stats = frames(
        [run("c", clip="norm", clip_threshold=1.0)],
        rows("c", "grad", "global_l2", before),
        rows("c", "grad", "global_l2_clipped", after),
    )
    left, right = panels(figures.clipping(runs, stats))
    heights = [p.get_height() for p in right.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert heights == [pytest.approx(0.5)]
    assert any(np.allclose(line.get_ydata(), 1.0) and line.get_linestyle() == ":" for line in left.lines)


# ------------------------------------------------------------------------------------ saturation


def test_saturation_panels_by_activation_and_depth_with_mean_lines() -> None:
    sat = lambda r, v: pd.concat([rows(r, "act", "saturation", [v, v, v], layer=f"L{i:03d}") for i in range(2)])  # noqa: E731
    runs, stats = frames(
        [run("a", depth=2), run("b", depth=2, seed=1), run("t", depth=2, activation="tanh")],
        sat("a", 0.4),
        sat("b", 0.6),
        sat("t", 0.1),
    )
    axes = panels(figures.saturation(runs, stats))
    assert [ax.get_title().split(",")[0] for ax in axes] == ["tanh", "relu"]
    relu = axes[1]
    assert len(relu.lines) == 3  # start, middle, end of training
    assert all(np.allclose(line.get_ydata(), 0.5) for line in relu.lines)  # the mean over the two runs
    assert all(float(t).is_integer() for t in relu.get_xticks())


# ------------------------------------------------------------------------------------ optimizers


def _clock(run_id: str, seconds_per_step: float, steps: int = 3) -> pd.DataFrame:
    return rows(run_id, "time", "elapsed", [seconds_per_step * 10 * i for i in range(steps)])


def test_optimizer_curves_legend_counts_runs_per_setting() -> None:
    runs, stats = frames(
        [run("s1"), run("s2", seed=1), run("a", optimizer="adam")],
        *(loss_curve(r, [2, 1, 0.5]) for r in ("s1", "s2", "a")),
        *(_clock(r, 0.01) for r in ("s1", "s2", "a")),
    )
    fig = figures.optimizer_curves(runs, stats)
    assert legend_texts(fig) == ["sgd (2 runs)", "adam (1 run)"]
    top_left = panels(fig)[0]
    assert top_left.get_yscale() == "log" and len(top_left.lines) == 2


@pytest.mark.parametrize(
    ("seeds", "title"),
    [(1, "one run per setting (bar = its value)"), (2, "bar = mean over each setting's 2 runs, dots = runs")],
)
def test_optimizer_results_title_says_what_the_bar_is(seeds: int, title: str) -> None:
    chosen = [run(f"{o}{s}", optimizer=o, seed=s) for o in ("sgd", "adam") for s in range(seeds)]
    runs, stats = frames(chosen, *(_clock(r["run_id"], 0.002) for r in chosen))
    runs["metrics.val/acc"] = np.linspace(0.5, 0.9, len(chosen))
    left, right = panels(figures.optimizer_results(runs, stats))
    assert left.get_title() == title
    assert left.get_xscale() == "linear" and left.get_xlim()[0] == 0
    bars = sorted(p.get_width() for p in left.patches if isinstance(p, Rectangle) and p.get_width() > 0)
    means = sorted(runs.groupby("optimizer")["metrics.val/acc"].mean())
    np.testing.assert_allclose(bars, means)
    ms = sorted(p.get_width() for p in right.patches if isinstance(p, Rectangle) and p.get_width() > 0)
    np.testing.assert_allclose(ms, [2.0, 2.0])  # 0.002 s per step


def test_update_ratio_one_line_per_optimizer_and_whole_layer_ticks() -> None:
    ratios = [rows(r, "update", "ratio", [1e-3] * 3, layer=f"L{i:03d}") for r in ("s", "a") for i in range(3)]
    runs, stats = frames([run("s", depth=3), run("a", depth=3, optimizer="adam")], *ratios)
    fig = figures.update_ratio(runs, stats)
    left, right = panels(fig)
    assert len([line for line in left.lines if len(line.get_xdata()) == 3]) == 2
    assert not left.texts and "10⁻³ rule of thumb" in legend_texts(fig)  # no label for the curves to run through
    assert all(float(t).is_integer() for t in left.get_xticks())


# ------------------------------------------------------------------------------------ recurrent


def test_bptt_one_line_per_run_in_each_panel() -> None:
    def through_time(run_id: str) -> pd.DataFrame:
        return pd.concat(
            [rows(run_id, "bptt", keys.time_stat(t), [0.5**t, 0.9**t], layer="L000", steps=[0, 20]) for t in range(5)]
        )

    runs, stats = frames(
        [run("r", model="rnn", depth=1, seq_len=5), run("l", model="lstm", depth=1, seq_len=5)],
        through_time("r"),
        through_time("l"),
    )
    axes = panels(figures.bptt(runs, stats))
    assert [len(ax.lines) for ax in axes] == [2, 2]
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), [0.5**t for t in range(5)])


def test_recurrent_curves_a_panel_per_sequence_length() -> None:
    chosen = [
        run(f"{m}{n}", model=m, depth=1, seq_len=n, dataset="adding", loss="mse")
        for m in ("rnn", "lstm")
        for n in (10, 50)
    ]
    runs, stats = frames(chosen, *(loss_curve(r["run_id"], [0.3, 0.2, 0.1]) for r in chosen))
    axes = panels(figures.recurrent_curves(runs, stats))
    assert [ax.get_title() for ax in axes] == ["seq_len 10", "seq_len 50"]
    assert all(len([line for line in ax.lines if len(line.get_xdata()) == 3]) == 2 for ax in axes)


# ------------------------------------------------------------------------------------ clipping pairs


def _pair(objective: str, off: float, on: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, stats = frames(
        [run("off"), run("on", clip="norm", clip_threshold=1.0)],
        rows("off", "grad", "global_l2", [1.0, 2.0, 3.0]),
        rows("on", "grad", "global_l2", [1.0, 1.5, 2.0]),
    )
    runs[f"metrics.{objective}"] = [off, on]
    return runs, stats


def test_clipping_effect_accuracy_on_a_linear_axis_one_pair_singular() -> None:
    runs, stats = _pair("val/acc", 0.6, 0.9)
    left, right = panels(figures.clipping_effect(runs, stats, objective="val/acc", direction="maximize"))
    assert right.get_xscale() == right.get_yscale() == "linear"
    assert right.get_title().startswith("1 pair (above")
    assert left.get_title().startswith("the 1 pair with the largest unclipped norm")
    lo, hi = right.get_ylim()
    assert lo < 0.6 and 0.9 < hi < 1.5  # around the scores, not decades of them
    (point,) = [c.get_offsets()[0] for c in right.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(point, [0.6, 0.9])


def test_clipping_effect_loss_on_log_axes() -> None:
    runs, stats = _pair("val/loss", 0.5, 0.05)
    _, right = panels(figures.clipping_effect(runs, stats, objective="val/loss", direction="minimize"))
    assert right.get_xscale() == right.get_yscale() == "log"
    lo, hi = right.get_ylim()
    assert lo < 0.05 and 0.5 < hi


# ------------------------------------------------------------------------------------ GAN


def test_gan_gradient_lines_and_run_counts() -> None:
    d_fake = [0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02]
    chosen = [
        run("s", loss="gan_saturating", dataset="gmm"),
        run("n1", loss="gan_nonsaturating", dataset="gmm"),
        run("n2", loss="gan_nonsaturating", dataset="gmm", seed=1),
    ]
    runs, stats = frames(
        chosen,
        *(rows(r["run_id"], "grad", "l2", [1.0, 0.1, 0.01], layer="out") for r in chosen),
        *(rows(r["run_id"], "gan", "d_fake", d_fake) for r in chosen),
    )
    fig = figures.gan_gradient(runs, stats)
    left, right = panels(fig)
    assert len(left.lines) == len(right.lines) == 2  # a median line per loss
    texts = legend_texts(fig)
    assert any(t.endswith("(1 run)") and t.startswith("saturating") for t in texts)
    assert any(t.endswith("(2 runs)") and t.startswith("non-saturating") for t in texts)
    # Each run smoothed by a centred rolling median over 5 logged steps, then the median over runs (all equal here).
    smoothed = [np.median(d_fake[max(0, i - 2) : i + 3]) for i in range(len(d_fake))]
    np.testing.assert_allclose(right.lines[0].get_ydata(), smoothed)


# ------------------------------------------------------------------------------------ needs


def test_a_single_gan_configuration_needs_leave_out_what_cannot_say_anything() -> None:
    gan = pd.DataFrame(
        [
            run(f"g{s}", loss=loss, dataset="gmm", optimizer="adam", seed=s)
            for loss in summary.GAN_LOSSES
            for s in range(3)
        ]
    )
    unmet = {name: figures.unmet(needs, gan) for name, needs in figures.NEEDS.items()}
    for name in ("phase_diagram", "saturation", "bptt", "recurrent_curves"):
        assert unmet[name] is not None and "has no" in unmet[name], name
    for name in ("optimizer_curves", "optimizer_results"):
        assert unmet[name] == (
            "it compares optimizer setting, which this study's 6 runs do not vary (optimizer setting = adam)"
        )
    for name in ("backprop_by_layer", "gain_scatter", "gan_gradient", "update_ratio"):
        assert unmet[name] is None, name


def test_needs_met_by_a_study_that_varies_the_dimensions() -> None:
    varied = pd.DataFrame([run("a", depth=2, optimizer="sgd"), run("b", depth=8, optimizer="adam")])
    for name in ("phase_diagram", "saturation", "optimizer_curves", "optimizer_results"):
        assert figures.unmet(figures.NEEDS[name], varied) is None, name
    same = pd.DataFrame([run("a"), run("b", seed=1)])
    assert figures.unmet(figures.NEEDS["phase_diagram"], same) == (
        "it compares depth, which this study's 2 supervised feed-forward (not recurrent, not GAN) runs do not vary "
        "(depth = 4)"
    )


def test_optimizer_results_loss_axis_holds_every_run() -> None:
    chosen = [run(f"{o}{s}", optimizer=o, seed=s) for o in ("sgd", "adam") for s in range(2)]
    runs, stats = frames(chosen, *(_clock(r["run_id"], 0.002) for r in chosen))
    runs["metrics.val/loss"] = [0.15, 0.2, 0.17, 0.3]
    left, _ = panels(figures.optimizer_results(runs, stats))
    lo, hi = left.get_xlim()
    assert left.get_xscale() == "log" and lo < 0.15 and 0.3 < hi < 1.0


def test_optimizer_results_leaves_diverged_runs_out_and_says_so() -> None:
    chosen = [run(f"{o}{s}", optimizer=o, seed=s) for o in ("sgd", "adam") for s in range(2)]
    chosen[3]["outcome"] = "diverged"
    runs, stats = frames(chosen, *(_clock(r["run_id"], 0.002) for r in chosen))
    runs["metrics.val/loss"] = [0.15, 0.2, 0.17, 1.797e308]  # how MLflow stores an infinite loss
    left, _ = panels(figures.optimizer_results(runs, stats))
    assert left.get_xlim()[1] < 1.0
    assert left.get_title() == "bar = mean over each setting's 1–2 runs, dots = runs; 1 diverged run left out"
