"""Study specs: every shipped spec validates; every kind of bad spec is refused with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studies.spec import SpecError, list_specs, load_spec, parse_overrides, parse_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "t", "space": {"depth": [2, 3]}, "objective": {"metric": "val/acc"}, "sampler": "grid"}


@pytest.mark.parametrize("name", list_specs())
def test_shipped_spec_validates(name: str) -> None:
    spec = load_spec(name)
    assert spec.n_trials >= 1 and spec.space
    assert spec.config({}).dataset  # the fixed fields alone make a valid run config


def test_shipped_specs_include_the_issue_list() -> None:
    assert {"default", "vanishing", "exploding", "recurrent", "optimizers", "losses"} <= set(list_specs())


def test_default_spec_covers_pathologies_and_cures() -> None:
    spec = load_spec("default")
    values: dict[str, set] = {}
    for p in spec.space:
        for v in p.grid_values():
            for field, value in p.expand(v).items():
                values.setdefault(field, set()).add(value)
    assert {"sigmoid", "tanh", "relu"} <= values["activation"]
    assert {"torch_default", "orthogonal"} <= values["init"]
    assert any(i.startswith("xavier") for i in values["init"]) and any(i.startswith("kaiming") for i in values["init"])
    assert min(values["depth"]) <= 2 and max(values["depth"]) >= 30
    assert {"none", "batch"} <= values["norm"] and "resmlp" in values["model"]
    assert len(values["optimizer"]) >= 3
    assert "none" in values["clip"] and len(values["clip_threshold"]) >= 2


def test_grid_without_n_trials_is_the_grid_size() -> None:
    spec = parse_spec({**GOOD, "space": {"depth": [2, 3], "activation": ["relu", "tanh", "sigmoid"]}}, "t.yaml")
    assert spec.n_trials == 6


def test_bundle_expands_to_fields() -> None:
    raw = {**GOOD, "space": {"arch": {"bundles": {"bn": {"norm": "batch"}, "res": {"model": "resmlp"}}}}}
    spec = parse_spec(raw, "t.yaml")
    assert spec.space[0].expand("res") == {"model": "resmlp"}


def test_overrides_replace_fixed_fields_and_are_validated(tmp_path: Path) -> None:
    assert parse_overrides(["max_steps=5", "lr=1e-3"]) == {"max_steps": 5, "lr": 0.001}
    assert load_spec("recurrent", {"max_steps": 3}).fixed["max_steps"] == 3
    with pytest.raises(SpecError, match="depth"):
        load_spec("default", {"depth": 0})


BAD = [
    ({**GOOD, "colour": 1}, "colour", "unknown field"),
    ({**GOOD, "space": {"depth": []}}, "space.depth", "empty"),
    ({**GOOD, "space": {"depth": [2, 0]}}, "space.depth", "depth=0"),
    ({**GOOD, "space": {"activation": ["relu", "swish"]}}, "space.activation", "swish"),
    ({**GOOD, "sampler": "tpe", "n_trials": 3, "space": {"lr": {"float": [0.1, 0.01]}}}, "space.lr", "low=0.1 > high=0.01"),
    ({**GOOD, "sampler": "tpe", "n_trials": 3, "space": {"lr": {"float": [0, 0.1], "log": True}}}, "space.lr", "log range"),
    ({**GOOD, "space": {"lr": {"float": [0.01, 0.1]}}}, "space.lr", "grid sampler"),
    ({**GOOD, "space": {"colour": ["red"]}}, "space.colour", "not a run-config field"),
    ({**GOOD, "fixed": {"dataset": "adding", "loss": "mse"}}, "objective.metric", "classification"),
    ({**GOOD, "objective": {"metric": "val/dice"}}, "objective.metric", "needs a segmentation dataset, not 'digits'"),
    ({**GOOD, "objective": {"metric": "val/knn_acc"}}, "objective.metric", "needs a metric dataset"),
    ({**GOOD, "fixed": {"model": "lstm"}}, "fixed.model", "lstm"),
    ({**GOOD, "space": {"model": ["mlp", "lstm"]}}, "space.model", "lstm"),
    ({**GOOD, "sampler": "annealing"}, "sampler.type", "annealing"),
    ({**GOOD, "objective": {"metric": "val/f1"}}, "objective.metric", "val/f1"),
    ({**GOOD, "sampler": "random"}, "n_trials", "missing"),
    ({**GOOD, "n_trials": 0}, "n_trials", "0"),
    ({**GOOD, "space": {"arch": {"bundles": {"x": {"colour": 1}}}}}, "space.arch.x.colour", "unknown run-config field"),
    ({**GOOD, "fixed": {"clip": "norm", "clip_threshold": -1.0}}, "fixed.clip_threshold", "-1.0"),
]


@pytest.mark.parametrize(
    "fixed, metric",
    [
        ({"dataset": "breast_cancer", "loss": "bce"}, "val/acc"),
        ({"dataset": "segment1d", "loss": "dice", "model": "cnn", "head": "dense"}, "val/dice"),
        ({"dataset": "segment1d", "loss": "iou", "model": "cnn", "head": "dense"}, "val/iou"),
        ({"dataset": "digits_metric", "loss": "triplet"}, "val/knn_acc"),
    ],
)
def test_task_metrics_are_objectives_of_their_tasks_and_maximized(fixed: dict, metric: str) -> None:
    spec = parse_spec({**GOOD, "fixed": fixed, "objective": {"metric": metric}}, "ok.yaml")
    assert spec.metric == metric and spec.direction == "maximize"


@pytest.mark.parametrize(("raw", "where", "problem"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_spec_names_file_field_and_problem(raw: dict, where: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml: {where}:"), message
    assert problem in message and "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["name: x\nspace: {depth: []}\nobjective: {metric: val/acc}\nn_trials: 2\n", "name: [unclosed\n", "- just a list\n"],
)
def test_cli_refuses_bad_spec_with_exit_2_and_writes_nothing(tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "studies.run", "--spec", "bad.yaml", "--storage", str(tmp_path / "optuna.journal")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.yaml" in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("name", ["it's", "../up", "a/b", "-x"])
def test_study_name_flag_follows_the_spec_name_rule(name: str, tmp_path, monkeypatch, capsys) -> None:
    """--study-name becomes the MLflow tag and the report folder: a quote or a path is refused, nothing written."""
    from studies import run as study_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = study_cli.main(["--spec", "default", f"--study-name={name}"])
    assert code == 2 and "study_name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
