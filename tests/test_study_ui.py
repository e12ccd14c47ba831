"""What a study shows in MLflow: its own experiment, trial names, a figure per trial, the parent's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import trial_figure
from studies import naming, ui
from studies.runner import run_study
from studies.spec import load_spec

SPEC = """
name: named
fixed: {depth: 3, width: 8, max_steps: 6, log_every: 1, val_every: 3, batch_size: 32, optimizer: adam}
space:
  activation: [relu, tanh]
  arch:
    bundles:
      plain: {norm: none}
      bn: {norm: batch}
  optim:
    bundles:
      slow: {lr: 0.003}
      fast: {lr: 0.01, optimizer: adam}
sampler: {type: random, seed: 0}
objective: {metric: val/acc}
n_trials: 5
"""


def test_names_carry_every_varying_field_and_only_those(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "s.yaml"))
    # The optimizer is adam in every bundle: it does not vary, and lr is named on its own.
    assert naming.varying_fields(spec) == ["activation", "norm", "lr"]
    cfg = spec.config({"activation": "tanh", "norm": "batch", "lr": 0.003})
    assert naming.trial_name(spec, cfg) == "tanh-bn-lr3e-3"
    assert naming.trial_name(spec, spec.config({"activation": "relu", "norm": "none", "lr": 0.01})) == "relu-lr0.01"


def test_the_forget_bias_is_named_on_lstm_trials_only() -> None:
    spec = load_spec("recurrent")  # the LSTM twice (forget bias 1 and 0) beside an RNN and a GRU
    assert "forget_bias" in naming.varying_fields(spec)
    params = {param.name: param for param in spec.space}

    def point(cell: str) -> dict:  # the run-config fields the sampler's choices expand to, as a trial gets them
        return {**params["cell"].expand(cell), **params["seq_len"].expand(100), **params["training"].expand("adam")}

    names = {cell: naming.trial_name(spec, spec.config(point(cell))) for cell in ("rnn", "lstm", "lstm_fb0", "gru")}
    assert names == {
        "rnn": "rnn-g1-adam0.01-noclip-T100",
        "lstm": "lstm-g1-adam0.01-noclip-fb1-T100",
        "lstm_fb0": "lstm-g1-adam0.01-noclip-fb0-T100",
        "gru": "gru-g1-adam0.01-noclip-T100",
    }


@pytest.mark.parametrize(
    ("value", "text"), [(0.003, "3e-3"), (0.1, "0.1"), (32, "32"), (1.5e-5, "1.5e-5"), (0.177, "0.177")]
)
def test_numbers_are_short(value: float, text: str) -> None:
    assert naming.number(value) == text and float(text) == pytest.approx(value)


def test_a_taken_name_gets_the_trial_number() -> None:
    assert naming.unique("relu", 7, ["tanh", None]) == "relu"
    assert naming.unique("relu", 7, ["tanh", "relu"]) == "relu-t7"


def _table(values: np.ndarray) -> pd.DataFrame:
    """A recorder table of grad/l2/<layer> with values[layer, step] (steps 0, 2, 4, …)."""
    layers, steps = values.shape
    rows = [
        {"step": 2 * s, "layer": f"L{layer:03d}", "family": "grad", "stat": "l2", "value": values[layer, s]}
        for layer in range(layers)
        for s in range(steps)
    ]
    rows.append({"step": 0, "layer": "", "family": "train", "stat": "loss", "value": 1.0})  # run-wide: not a layer
    return pd.DataFrame(rows)


def test_trial_figure_draws_log10_of_the_recorded_norms_by_layer_and_step() -> None:
    values = np.random.default_rng(0).uniform(1e-6, 10, size=(4, 5))
    values[2, 3] = 0.0  # log of 0: a masked (grey) cell, not -inf
    layers, steps, cells = trial_figure.grid(_table(values), "grad", "l2")
    np.testing.assert_array_equal(layers, [0, 1, 2, 3])
    np.testing.assert_array_equal(steps, [0, 2, 4, 6, 8])
    with np.errstate(divide="ignore"):
        expected = np.where(values > 0, np.log10(values), np.nan)
    np.testing.assert_allclose(cells, expected)
    fig = trial_figure.draw(_table(values), "t")
    assert fig is not None and len(fig.images) == 2  # one panel (only grad was recorded) and its colour strip
    assert trial_figure.draw(_table(values).iloc[-1:]) is None  # no per-layer statistic: no figure


@pytest.mark.parametrize("bad", ["x](javascript:alert(1))", "0" * 32], ids=["markdown", "not-in-this-store"])
def test_a_best_run_id_from_the_storage_is_linked_only_when_it_is_a_run_here(tracking: str, bad: str) -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(value=0.5, params={}, distributions={}, user_attrs={"mlflow_run_id": bad})
    )
    tags = ui.best_tags(study, MlflowClient())
    assert tags == {"best_trial": "0", "best_value": "0.5"}
    spec = load_spec("default")
    note = ui.description(study, spec, "p" * 32, "1", tags, {"completed": 1}, [])
    assert "javascript" not in note and "Best trial #0" in note


@pytest.mark.slow
def test_a_study_has_its_experiment_distinct_names_figures_and_a_parent_that_names_the_best(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    run_study(str(tmp_path / "s.yaml"), storage=str(tmp_path / "optuna.journal"), workers=1)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("named")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 5 and client.search_runs(["0"]) == []
    names = [t.info.run_name for t in trials]
    assert len(set(names)) == len(names)  # 5 trials over 8 points of random sampling: names are still unique
    for t in trials:  # each name says the trial's activation, norm and lr
        params = t.data.params
        assert t.info.run_name.startswith(params["activation"])
        assert ("-bn-" in t.info.run_name) == (params["norm"] == "batch")
        assert f"lr{naming.number(float(params['lr']))}" in t.info.run_name
        assert "figures/gradient_profile.png" in [a.path for a in client.list_artifacts(t.info.run_id, "figures")]
    by_number = sorted(trials, key=lambda t: int(t.data.tags["trial"]))  # a tie: Optuna's best is the first trial
    best = max(by_number, key=lambda t: t.data.metrics["val/acc"])
    tags = parent.data.tags
    assert tags["best_run_id"] == best.info.run_id and tags["best_trial"] == best.data.tags["trial"]
    assert float(tags["best_value"]) == pytest.approx(best.data.metrics["val/acc"], rel=1e-5)
    note = tags[ui.NOTE]
    assert f"[{best.info.run_name}](#/experiments/{experiment.experiment_id}/runs/{best.info.run_id})" in note
    plots = {Path(a.path).stem for a in client.list_artifacts(parent.info.run_id, ui.OPTUNA_DIR)}
    assert {"optimization_history", "param_importances", "slice", "timeline", "intermediate_values"} <= plots
