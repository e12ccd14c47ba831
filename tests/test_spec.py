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
    (
        {**GOOD, "sampler": "tpe", "n_trials": 3, "space": {"lr": {"float": [0.1, 0.01]}}},
        "space.lr",
        "low=0.1 > high=0.01",
    ),
    (
        {**GOOD, "sampler": "tpe", "n_trials": 3, "space": {"lr": {"float": [0, 0.1], "log": True}}},
        "space.lr",
        "log range",
    ),
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
    ({**GOOD, "pruner": {"type": "median", "n_warmup_steps": "5"}}, "pruner.n_warmup_steps", "an integer ≥ 0"),
    ({**GOOD, "pruner": {"type": "median", "interval_steps": 0}}, "pruner.interval_steps", "an integer ≥ 1"),
    ({**GOOD, "pruner": {"type": "median", "percentile": 50}}, "pruner.percentile", "not an argument of the median"),
    ({**GOOD, "pruner": {"type": "percentile", "percentile": "50"}}, "pruner.percentile", "a number in [0, 100]"),
    ({**GOOD, "pruner": {"type": "percentile", "percentile": 150}}, "pruner.percentile", "a number in [0, 100]"),
    ({**GOOD, "pruner": {"type": "hyperband", "reduction_factor": 1.5}}, "pruner.reduction_factor", "an integer ≥ 2"),
    ({**GOOD, "pruner": {"type": "hyperband", "max_resource": "all"}}, "pruner.max_resource", "or 'auto'"),
    ({**GOOD, "pruner": {"type": "hyperband", "min_resource": True}}, "pruner.min_resource", "an integer ≥ 1"),
    ({**GOOD, "fixed": {"width": 10_000_000}}, "fixed.width", "fits in memory"),
    ({**GOOD, "space": {"width": [4, 10_000_000]}}, "space.width", "fits in memory"),
    ({**GOOD, "fixed": {"depth": 100_000}, "space": {"activation": ["relu", "tanh"]}}, "fixed.depth", "fits in memory"),
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
    [
        "name: x\nspace: {depth: []}\nobjective: {metric: val/acc}\nn_trials: 2\n",
        "name: [unclosed\n",
        "- just a list\n",
    ],
)
def test_cli_refuses_bad_spec_with_exit_2_and_writes_nothing(tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "studies.run", "--spec", "bad.yaml", "--storage", str(tmp_path / "optuna.journal")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def test_valid_pruner_arguments_are_accepted() -> None:
    for pruner in (
        {"type": "median", "n_startup_trials": 0, "n_warmup_steps": 3, "interval_steps": 2, "n_min_trials": 1},
        {"type": "percentile", "percentile": 25.5},
        {"type": "hyperband", "max_resource": "auto"},
        {"type": "hyperband", "min_resource": 2, "max_resource": 20, "reduction_factor": 3},
    ):
        assert parse_spec({**GOOD, "pruner": pruner}, "ok.yaml").make_pruner() is not None


def _bomb(levels: int) -> str:
    """A 'billion laughs' document: each level an alias list of ten of the previous one (10**levels leaves)."""
    names = [f"l{i}" for i in range(levels + 1)]
    text = f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x, x]\n"
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    return text


@pytest.mark.parametrize(
    "text, problem",
    [
        (_bomb(9), "expands to more than"),
        ("&a [*a]\n", "recursive alias"),
        ("space: &s {depth: *s}\n", "recursive alias"),
    ],
)
def test_alias_bombs_and_recursive_aliases_are_refused_before_anything_is_built(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "bomb.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "bomb.yaml"))
    assert info.value.where == "yaml" and problem in info.value.problem, str(info.value)
    with pytest.raises(SpecError):  # the same reader parses --set values
        parse_overrides([f"depth={text}"])


def test_aliases_of_a_sane_size_still_load(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(
        "name: t\nfixed: {depth: &d 3, width: *d}\nspace: {activation: [relu, tanh]}\n"
        "objective: {metric: val/acc}\nsampler: grid\n"
    )
    spec = load_spec(str(tmp_path / "ok.yaml"))
    assert spec.fixed == {"depth": 3, "width": 3}
