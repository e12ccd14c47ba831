"""Every report figure renders with the Agg canvas from a small study, with the axes it promises, or returns None."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import REAL_STUDY, SYNTHETIC_STUDY, pointed_at
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from analysis import figures, load

NAMES = [n for n in figures.FIGURES if n not in figures.TASK_FIGURES]  # tests/test_loss_figures.py: the rest
MLP_ONLY = ("backprop_by_layer", "gain_scatter", "phase_diagram", "saturation")


@pytest.fixture(scope="module")
def data(synthetic_store: str) -> load.StudyData:
    with pointed_at(synthetic_store):
        return load.study(SYNTHETIC_STUDY)


def draw(name: str, runs, stats) -> Figure | None:
    return figures.FIGURES[name](runs, stats)


def panels(fig: Figure) -> list:
    """The visible data axes (colorbars excluded)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def legend_texts(fig: Figure) -> set[str]:
    return {t.get_text() for legend in fig.legends for t in legend.get_texts()}


@pytest.mark.parametrize("name", NAMES)
def test_every_figure_renders_titled_and_labelled(data: load.StudyData, name: str, tmp_path) -> None:
    fig = draw(name, data.runs, data.stats)
    assert isinstance(fig, Figure) and isinstance(fig.canvas, FigureCanvasAgg)
    assert fig.get_suptitle()
    axes = panels(fig)
    assert axes and any(ax.get_xlabel() for ax in axes) and any(ax.get_ylabel() for ax in axes)
    assert all(ax.get_xlabel() or ax.get_title() for ax in axes)  # stacked panels share the bottom row's label
    path = figures.save_figure(fig, tmp_path / f"{name}.png")
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (round(fig.get_figwidth() * figures.DPI), round(fig.get_figheight() * figures.DPI))


def test_backprop_by_layer_log_scale_and_theory_lines(data: load.StudyData) -> None:
    fig = figures.backprop_by_layer(data.runs, data.stats)
    axes = panels(fig)
    assert {ax.get_title() for ax in axes} <= {"plain", "batch norm", "residual α=0.177"}
    for ax in axes:
        assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
        assert "layer index" in ax.get_xlabel() and "∂L/∂x" in ax.get_ylabel()
    assert any(line.get_linestyle() == ":" for ax in axes for line in ax.lines)  # the mean-field lines
    assert {"measured", "relu"} <= legend_texts(fig)


def test_gain_scatter_is_log_log_with_identity_line(data: load.StudyData) -> None:
    fig = figures.gain_scatter(data.runs, data.stats)
    (ax,) = panels(fig)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "predicted" in ax.get_xlabel() and "measured" in ax.get_ylabel()
    identity = [line for line in ax.lines if np.allclose(line.get_xdata(), line.get_ydata())]
    assert identity and "y = x" in legend_texts(fig)
    assert sum(len(c.get_offsets()) for c in ax.collections) >= 3  # one point per run with a prediction


def test_gradient_heatmaps_one_panel_per_chosen_run(data: load.StudyData) -> None:
    fig = figures.gradient_heatmaps(data.runs, data.stats, max_runs=4)
    axes = panels(fig)
    assert len(axes) == 4
    for ax in axes:
        assert any(isinstance(c, QuadMesh) for c in ax.collections)
        assert ax.get_xlabel() == "training step" and "layer" in ax.get_ylabel()
    colorbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert colorbar and "log₁₀" in colorbar[0].get_ylabel()
    chosen = data.runs["run_id"].iloc[:2].tolist()
    assert len(panels(figures.gradient_heatmaps(data.runs, data.stats, run_ids=chosen))) == 2


def test_phase_diagram_cells_and_outcome_legend(data: load.StudyData) -> None:
    fig = figures.phase_diagram(data.runs, data.stats, objective="val/acc", direction="maximize")
    axes = panels(fig)
    assert {ax.get_title() for ax in axes} <= {"plain", "batch norm", "residual α=0.177"}
    for ax in axes:
        assert ax.get_ylabel() == "depth (hidden layers)" and ax.get_xlabel() == "activation / init"
        assert {t.get_text() for t in ax.get_yticklabels()} <= {"2", "6"}
    annotations = [t.get_text() for ax in axes for t in ax.texts]
    assert annotations and all(t.split("\n")[0] == "–" or 0 <= float(t.split("\n")[0]) <= 1 for t in annotations)
    assert legend_texts(fig) >= {"trained", "vanished", "diverged"}


def test_clipping_norms_and_share(data: load.StudyData) -> None:
    left, right = panels(figures.clipping(data.runs, data.stats))
    assert left.get_yscale() == "log" and left.get_xlabel() == "training step"
    assert right.get_ylabel() == "share of logged steps clipped" and right.get_ylim() == (0, 1.05)
    heights = [p.get_height() for p in right.patches if not math.isnan(p.get_height())]
    assert heights and all(0 <= h <= 1 for h in heights)


def test_saturation_and_update_ratio_axes(data: load.StudyData) -> None:
    for ax in panels(figures.saturation(data.runs, data.stats)):
        assert ax.get_ylim() == (-0.02, 1.02)
        assert ax.get_title().split(",")[0] in ("sigmoid", "tanh", "relu")
    left, right = panels(figures.update_ratio(data.runs, data.stats))
    assert left.get_yscale() == right.get_yscale() == "log"
    assert any(np.allclose(line.get_ydata(), 1e-3) for line in left.lines)  # the 10⁻³ reference


def test_optimizer_curves_steps_and_time(data: load.StudyData) -> None:
    axes = panels(figures.optimizer_curves(data.runs, data.stats))
    assert len(axes) == 4 and all(ax.get_yscale() == "log" for ax in axes)
    assert [ax.get_xlabel().split(" (")[0] for ax in axes] == ["training step", "wall-clock time"] * 2
    assert [ax.get_ylabel() for ax in axes] == ["training loss"] * 2 + ["validation loss"] * 2


def test_bptt_log_norm_against_time(data: load.StudyData) -> None:
    axes = panels(figures.bptt(data.runs, data.stats))
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_yscale() == "log" and ax.get_xlabel().startswith("time step t") and ax.lines


@pytest.mark.parametrize("name", NAMES)
def test_missing_data_gives_none(data: load.StudyData, name: str) -> None:
    assert draw(name, data.runs.iloc[:0], data.stats.iloc[:0]) is None
    completed = data.runs[data.runs["outcome"] == "completed"]
    assert draw(name, completed, data.stats.iloc[:0]) is None  # runs that wrote no statistics
    recurrent = data.runs[data.runs["model"].isin(["rnn", "lstm", "gru"])]
    feedforward = data.runs[~data.runs["run_id"].isin(recurrent["run_id"])]
    if name in MLP_ONLY:
        assert draw(name, recurrent, data.stats) is None
    if name == "bptt":
        assert draw(name, feedforward, data.stats) is None
    if name in ("clipping", "clipping_effect"):
        assert draw(name, data.runs[data.runs["clip"] == "none"], data.stats) is None
    if name == "recurrent_curves":
        assert draw(name, feedforward, data.stats) is None


def test_clipping_pairs_match_runs_that_differ_only_in_clipping(data: load.StudyData) -> None:
    pairs = figures.clipping_pairs(data.runs)
    assert len(pairs) >= 1
    by_id = data.runs.set_index("run_id")
    for pair in pairs.to_dict("records"):
        off, on = by_id.loc[pair["run_id_off"]], by_id.loc[pair["run_id_on"]]
        assert off["clip"] == "none" and on["clip"] in ("norm", "value")
        differing = {c for c in figures.PAIR_CONFIG if str(off[c]) != str(on[c])}
        assert differing == set()
    # A run whose twin differs in anything else (here the learning rate) has no pair.
    changed = data.runs.assign(lr=[0.1 * (i + 1) for i in range(len(data.runs))])
    assert figures.clipping_pairs(changed).empty


@pytest.mark.parametrize(
    ("run", "setting"),
    [
        ({"optimizer": "sgd", "batch_size": 2000, "n_train": 1437, "schedule": "none"}, "GD (full batch)"),
        ({"optimizer": "sgd", "batch_size": 1, "n_train": 1437, "schedule": "none"}, "SGD (batch 1)"),
        ({"optimizer": "sgd", "batch_size": 32, "n_train": 1437, "schedule": "none"}, "sgd"),
        ({"optimizer": "momentum", "batch_size": 32, "n_train": 1437, "schedule": "onecycle"}, "momentum + onecycle"),
        ({"optimizer": "adam", "batch_size": 32}, "adam"),  # older runs without the n_train tag
    ],
)
def test_optimizer_setting_names_full_batch_batch_one_and_schedules(run: dict, setting: str) -> None:
    assert figures.optimizer_setting(run) == setting


def test_figures_leave_pyplot_and_rc_params_alone(data: load.StudyData) -> None:
    before = dict(matplotlib.rcParams)
    figures.backprop_by_layer(data.runs, data.stats)
    assert plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before


@pytest.mark.slow
def test_every_figure_from_a_real_study(real_store: str) -> None:
    with pointed_at(real_store):
        real = load.study(REAL_STUDY)
    drawn = {name: draw(name, real.runs, real.stats) for name in NAMES}
    assert all(isinstance(fig, Figure) for fig in drawn.values()), [n for n, f in drawn.items() if f is None]
    (scatter,) = panels(drawn["gain_scatter"])
    assert scatter.get_xscale() == "log"
    assert all(ax.get_yscale() == "log" for ax in panels(drawn["bptt"]))
