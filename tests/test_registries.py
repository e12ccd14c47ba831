"""The registries are complete: every activation entry against autograd and the kernels, every figure with its parts.

An activation is one entry of gradprobe/activations.py and a figure one @figure function in analysis/figures/;
every other table is derived from them. A missing or wrong piece fails here, not silently in a plot.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, require_fused
from matplotlib.colors import is_color_like
from torch import nn

from analysis import figures, report, summary, theory
from analysis.figures import registry as figure_registry
from analysis.figures import style
from analysis.load import StudyData
from gradprobe import activations, definitions, fused, stats
from gradprobe import recurrent as gradprobe_recurrent
from gradprobe import theory as core
from gradprobe.activations import ACTIVATIONS, Activation, Theory, name_of
from models import recurrent
from models.registry import MODELS
from pipelines import config, memory

NAMES = list(ACTIVATIONS)
# Off the kinks of ReLU and leaky ReLU (z = 0), where φ' has no value for autograd to agree with.
GRID = torch.linspace(-7.0, 7.0, 2801, dtype=torch.float64) + 0.00123


def _autograd_derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """φ'(z) of the registry's torch module, by autograd in float64: the independent reference."""
    zz = z.detach().clone().requires_grad_(True)
    (d,) = torch.autograd.grad(ACTIVATIONS[name].make().double()(zz).sum(), zz)
    return d


# ------------------------------------------------------------------------------------ activations


def test_every_field_of_an_activation_must_be_stated() -> None:
    """No default for the fields that may be None: an entry states its kernel kind and theory, even if None."""
    required = {f.name for f in dataclasses.fields(Activation) if f.default is dataclasses.MISSING}
    assert {"make", "modules", "max_derivative", "fused_kind", "theory", "color", "saturating", "rnn"} <= required


@pytest.mark.parametrize("name", NAMES)
def test_activation_entry_is_complete(name: str) -> None:
    act = ACTIVATIONS[name]
    module = act.make()
    assert isinstance(module, nn.Module) and act.modules and isinstance(module, act.modules)
    assert all(isinstance(c, type) and issubclass(c, nn.Module) for c in act.modules)
    assert math.isfinite(act.max_derivative) and act.max_derivative > 0
    assert (act.from_output_ is None) != (act.from_input is None)  # exactly one way to φ'
    assert act.fused_kind is None or isinstance(act.fused_kind, int)
    assert act.theory is None or isinstance(act.theory, Theory)
    assert isinstance(act.color, str) and is_color_like(act.color)
    assert isinstance(act.saturating, bool) and isinstance(act.rnn, bool) and isinstance(act.binary, bool)


def test_activation_colours_are_distinct() -> None:
    colours = [ACTIVATIONS[n].color.lower() for n in NAMES]
    assert len(set(colours)) == len(colours)


@pytest.mark.parametrize("name", [n for n in NAMES if ACTIVATIONS[n].theory is not None])
def test_theory_phi_and_derivative_match_the_torch_module(name: str) -> None:
    th = ACTIVATIONS[name].theory
    expected_phi = ACTIVATIONS[name].make().double()(GRID).numpy()
    np.testing.assert_allclose(th.phi(GRID.numpy()), expected_phi, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(th.dphi(GRID.numpy()), _autograd_derivative(name, GRID).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if ACTIVATIONS[n].theory is not None])
def test_homogeneous_flag_means_positive_homogeneity(name: str) -> None:
    """theory.fixed_point treats a homogeneous φ's length map as affine: φ(c·z) = c·φ(z) must hold for c > 0."""
    th, z = ACTIVATIONS[name].theory, GRID.numpy()
    homogeneous = all(np.allclose(th.phi(c * z), c * th.phi(z), rtol=1e-12, atol=1e-12) for c in (0.3, 2.5))
    assert th.homogeneous == homogeneous


@pytest.mark.parametrize("name", NAMES)
def test_max_derivative_is_the_largest_slope(name: str) -> None:
    fine = torch.linspace(-8.0, 8.0, 160_001, dtype=torch.float64)  # step 1e-4, z = 0 included
    assert _autograd_derivative(name, fine).max().item() == pytest.approx(ACTIVATIONS[name].max_derivative, rel=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_the_probe_derivative_matches_autograd(name: str) -> None:
    z = GRID.float()
    act = ACTIVATIONS[name]
    got = act.derivative(z, act.make()(z)).double()
    np.testing.assert_allclose(got.numpy(), _autograd_derivative(name, GRID).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if ACTIVATIONS[n].fused_kind is not None])
def test_fused_kind_counts_the_same_saturated_units_as_the_eager_path(name: str, monkeypatch) -> None:
    monkeypatch.delenv(fused.ENV, raising=False)
    require_fused()
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(s, generator=g) * 3 for s in [(64, 40), (200, 33)]]
    zs[0][:, :3] = 0.0  # exact zeros: ReLU's boundary
    outputs = [ACTIVATIONS[name].make()(z) for z in zs]
    threshold = activations.SATURATION_SHARE * ACTIVATIONS[name].max_derivative
    rows, _ = fused.act_rows(outputs, ACTIVATIONS[name].fused_kind, threshold, stats.ONE_PASS_LIMIT)
    for row, z, a in zip(rows, zs, outputs):
        eager = activations.saturation(name, a, z)
        # φ' read off the float32 output, by the kernel and by torch, can round differently at the threshold
        d = ACTIVATIONS[name].derivative(z, a)
        near = ((d - threshold).abs() < 1e-5).sum().item()
        assert abs(row[2].item() - eager.item()) * a.numel() <= near + 1e-3


def test_fused_kinds_are_the_kernel_branches() -> None:
    """fused.KINDS is the registry's; each kind but 0 (fused.c's `else`: none saturate) is a branch of fused.c."""
    assert fused.KINDS == {n: a.fused_kind for n, a in ACTIVATIONS.items() if a.fused_kind is not None}
    branches = {int(k) for k in re.findall(r"kind == (\d+)", (ROOT / "gradprobe" / "fused.c").read_text())}
    assert set(fused.KINDS.values()) - {0} <= branches
    assert not any(ACTIVATIONS[n].needs_input for n in fused.KINDS)  # the kernels see outputs only


def test_name_of_recognises_each_entry_and_nothing_it_does_not_compute() -> None:
    for name in NAMES:
        assert name_of(ACTIVATIONS[name].make()) == name
    assert name_of(nn.ReLU(inplace=True)) == "relu"  # in place computes the same φ
    assert name_of(nn.LeakyReLU(0.2)) is None  # another slope: not the registry's leaky_relu
    assert name_of(nn.GELU(approximate="tanh")) is None
    assert name_of(nn.Linear(3, 3)) is None and name_of(nn.SiLU()) is None


def test_tables_elsewhere_are_derived_from_the_registry() -> None:
    assert theory.ACTIVATIONS == core.ACTIVATIONS == tuple(n for n in NAMES if ACTIVATIONS[n].theory is not None)
    assert all(theory.max_derivative(n) == ACTIVATIONS[n].max_derivative for n in theory.ACTIVATIONS)
    assert style.SATURATING == tuple(n for n in NAMES if ACTIVATIONS[n].saturating)
    assert list(style.ACTIVATION_COLORS) == NAMES
    assert recurrent.RNN_ACTIVATIONS == tuple(n for n in NAMES if ACTIVATIONS[n].rnn)


def _spec_activations(node: object) -> set[str]:
    """Every value under an `activation` key of a study spec (fixed values and searched lists)."""
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "activation":
                found |= set(value) if isinstance(value, list) else {value} if isinstance(value, str) else set()
            found |= _spec_activations(value)
        return found
    if isinstance(node, list):
        return set().union(*map(_spec_activations, node)) if node else set()
    return set()


def test_every_activation_a_config_or_a_study_names_is_in_the_registry() -> None:
    assert set(config.choices("activation")) == set(NAMES)
    assert set(recurrent.FUSED_RNN_ACTIVATIONS) <= set(recurrent.RNN_ACTIVATIONS)  # nn.RNN's own: usable in an RNN
    named = set().union(
        *(_spec_activations(yaml.safe_load(p.read_text())) for p in (ROOT / "studies" / "specs").glob("*.yaml"))
    )
    assert named and named <= set(NAMES)


@pytest.mark.parametrize("name", [n for n in NAMES if ACTIVATIONS[n].rnn])
def test_an_rnn_activation_runs_the_cell_equations(name: str) -> None:
    """Usable in a vanilla RNN: the lab's layer computes h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh) with it."""
    torch.manual_seed(0)
    layer = recurrent.RecurrentLayer("rnn", 3, 5, name, "none")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    layer = layer.double()
    phi = ACTIVATIONS[name].make().double()
    with torch.no_grad():
        w_ih, w_hh, b = layer.rnn.weight_ih_l0, layer.rnn.weight_hh_l0, layer.rnn.bias_ih_l0 + layer.rnn.bias_hh_l0
        h, expected = torch.zeros(2, 5, dtype=torch.float64), []
        for t in range(6):
            h = phi(x[:, t] @ w_ih.T + h @ w_hh.T + b)
            expected.append(h)
        torch.testing.assert_close(layer(x), torch.stack(expected, dim=1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if not ACTIVATIONS[n].rnn])
def test_a_non_rnn_activation_is_refused_for_an_rnn_in_one_line(name: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        config.validate(config.RunConfig(dataset="adding", model="rnn", activation=name, loss="mse"))
    assert refused.value.field == "activation" and "\n" not in str(refused.value)


def test_recurrent_model_names_have_one_home() -> None:
    cells = tuple(recurrent.CELLS)
    assert cells == definitions.CELL_KINDS and recurrent.CELLS is gradprobe_recurrent.CELLS
    assert config.RECURRENT == summary.RECURRENT == cells
    assert set(cells) <= set(MODELS) and set(cells) <= set(memory.ESTIMATORS)


# ---------------------------------------------------------------------------------------- figures


@pytest.mark.parametrize("name", list(figures.REGISTRY))
def test_every_figure_states_title_caption_and_needs(name: str) -> None:
    entry = figures.REGISTRY[name]
    assert entry.name == name and entry.title.strip() and len(entry.caption) > 80
    assert isinstance(entry.needs, figures.Needs) and entry.needs.data.strip() and entry.needs.task in figures.TASKS
    assert all(d in figures.DERIVED or d in summary.CONFIG_COLUMNS for d in entry.needs.vary)
    params = inspect.signature(entry.draw).parameters
    assert list(params)[:2] == ["runs", "stats"]
    assert entry.takes_objective == ({"objective", "direction"} <= set(params))
    assert entry.theme in figure_registry.THEMES and figures.FIGURES[name] is entry.draw


def test_the_report_draws_exactly_the_registry_in_order(tmp_path: Path) -> None:
    empty = StudyData("empty", pd.DataFrame({"run_id": pd.Series(dtype=str)}), pd.DataFrame(), None)
    written = report.render_figures(empty, tmp_path, ("val/loss", "minimize"))
    assert list(written) == list(figures.REGISTRY)  # nothing drawn: every figure says why
    assert all(isinstance(why, str) and why for why in written.values())
    page = report.write_html(
        "empty", pd.DataFrame({"run_id": []}), written, ("val/loss", "minimize"), tmp_path / "index.html"
    ).read_text()
    places = [page.find(f"<li>{entry.title}: ") for entry in figures.REGISTRY.values()]
    assert -1 not in places and places == sorted(places) and page.count("<li>") == len(places)


def _figure_modules() -> list:
    package = Path(figures.__file__).parent
    return [importlib.import_module(f"analysis.figures.{m.name}") for m in pkgutil.iter_modules([str(package)])]


def test_no_figure_function_outside_the_registry() -> None:
    """A function of analysis/figures that returns `Figure | None` is a report figure: it must be registered."""
    registered = {entry.draw for entry in figures.REGISTRY.values()}
    drawing = [
        obj
        for module in _figure_modules()
        for name, obj in vars(module).items()
        if inspect.isfunction(obj)
        and obj.__module__ == module.__name__
        and obj.__annotations__.get("return") == "Figure | None"
        and not name.startswith("_")
    ]
    assert drawing and set(drawing) == registered
    themes = {m.__name__.rsplit(".", 1)[-1] for m in _figure_modules() if m.__name__.rsplit(".", 1)[-1] != "registry"}
    assert set(figure_registry.THEMES) <= themes  # every theme is a module


def test_registering_refuses_a_second_figure_of_a_name_and_a_module_outside_the_themes() -> None:
    needs = figures.Needs("runs")
    with pytest.raises(ValueError, match="registered twice"):
        figures.figure(title="t", caption="c", needs=needs, name="saturation")(lambda runs, stats: None)
    with pytest.raises(ValueError, match="THEMES"):
        figures.figure(title="t", caption="c", needs=needs, name="new_one")(lambda runs, stats: None)
    with pytest.raises(ValueError, match="needs.task"):
        figures.figure(title="t", caption="c", needs=figures.Needs("runs", task="nope"), name="x")(lambda r, s: None)
    assert "new_one" not in figure_registry.entries() and "x" not in figure_registry.entries()
