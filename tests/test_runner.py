"""The study runner against real stores: Optuna journal/SQLite storages and an MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hold import hold_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_data import _write_cifar, _write_mnist

import pipelines.train
from studies.objective import DUPLICATE, objective_for
from studies.progress import StudyProgress
from studies.runner import run_study
from studies.spec import list_specs, load_spec
from studies.tree import PARENT_ATTR

SMOKE = {"max_steps": 3, "log_every": 1, "val_every": 3, "metric_points": 0}
FILE_SPECS = {
    "mnist": lambda root: _write_mnist(root, compress=True),
    "cifar10": _write_cifar,
}  # specs of file-based datasets: their writers


def write_spec(folder: Path, body: str) -> str:
    path = folder / "spec.yaml"
    path.write_text(body)
    return str(path)


TINY = """
name: tiny
fixed: {depth: 2, width: 8, max_steps: 4, val_every: 2, batch_size: 32}
space:
  activation: [relu, tanh, sigmoid]
  init: [xavier_normal, kaiming_normal]
sampler: {type: random, seed: 3}
objective: {metric: val/acc}
n_trials: 2
"""


def study_tree(study: str) -> tuple[dict, list]:
    """The parent run and the trial runs of a study, as MLflow holds them."""
    client = MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.study = '{study}'"
    )
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    return parents[0], trials


def load(study: str, storage: str) -> optuna.Study:
    return optuna.load_study(
        study_name=study, storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    )


def check_links(study: optuna.Study, parent, trials) -> None:
    """Every finished Optuna trial has exactly one MLflow run nested under the parent, and they name each other."""
    assert study.user_attrs[PARENT_ATTR] == parent.info.run_id
    by_trial = {int(r.data.tags["trial"]): r for r in trials}
    assert len(by_trial) == len(trials), "a trial has two MLflow runs"
    finished = [
        t
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        and t.user_attrs.get("outcome") != DUPLICATE
    ]  # a duplicate grid draw never trains
    assert sorted(by_trial) == sorted(t.number for t in finished)
    for t in finished:
        run = by_trial[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["study"] == study.study_name


@pytest.mark.slow
@pytest.mark.parametrize("spec", list_specs())
def test_two_trials_of_every_shipped_spec(spec: str, tracking: str, tmp_path: Path) -> None:
    storage = str(tmp_path / "optuna.journal")
    overrides = dict(SMOKE)
    if spec in FILE_SPECS:  # tiny files in the real formats (tests/test_data.py writes them)
        FILE_SPECS[spec](tmp_path / "files")
        overrides.update(data_dir=str(tmp_path / "files"), width=4, batch_size=4)
    summary = run_study(spec, n_trials=2, storage=storage, report=False, overrides=overrides)
    assert summary["trials"] == 2
    parent, trials = study_tree(spec)
    check_links(load(spec, storage), parent, trials)
    assert all(r.data.tags["outcome"] in ("completed", "diverged", "pruned") for r in trials)
    assert all(r.info.status == "FINISHED" for r in trials)
    client = MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {
        "study/trials.csv",
        "study/summary.json",
    }
    metrics = client.get_run(trials[0].info.run_id).data.metrics
    assert "grad/l2/L000" in metrics and "backprop/l2/L000" in metrics


def test_rerun_resumes_without_repeating_and_nests_the_worker(tracking: str, tmp_path: Path) -> None:
    spec, storage = write_spec(tmp_path, TINY), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    run_study(spec, storage=storage, report=False)  # nothing left to do
    study = load("tiny", storage)
    assert len(study.trials) == 2
    run_study(spec, n_trials=3, storage=storage, report=False)  # one more
    study = load("tiny", storage)
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)
    parent, trials = study_tree("tiny")
    check_links(study, parent, trials)
    workers = MlflowClient().search_runs([parent.info.experiment_id], filter_string="tags.role = 'worker'")
    assert len(workers) == 2
    assert all(w.data.tags["mlflow.parentRunId"] == parent.info.run_id for w in workers)


@pytest.mark.slow
def test_two_workers_share_one_study(tracking: str, tmp_path: Path) -> None:
    spec, storage = write_spec(tmp_path, TINY.replace("n_trials: 2", "n_trials: 4")), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, workers=2, report=False)
    study = load("tiny", storage)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(finished) <= 5  # a second worker may start one more before it sees the total
    assert len({t.number for t in study.trials}) == len(study.trials)
    parent, trials = study_tree("tiny")
    check_links(study, parent, trials)


@pytest.mark.slow
@pytest.mark.parametrize("chosen", [None, "chosen"], ids=["default-experiment", "experiment-name"])
def test_cli_under_mlflow_run_with_two_workers(tracking: str, tmp_path: Path, chosen: str | None) -> None:
    """As `mlflow run . -e study` starts it: MLFLOW_RUN_ID names the entry point's run, and a fresh interpreter
    starts its extra worker before importing torch; that worker must not inherit the run (it would take it over).

    In an experiment the user chose (`--experiment-name`), that run is the parent. In Default (plain
    `mlflow run`), the study goes to its own experiment and the launcher run is ended and points there.
    """
    import os
    import subprocess
    import sys

    from studies.ui import MOVED_TAG

    spec, storage = write_spec(tmp_path, TINY.replace("n_trials: 2", "n_trials: 4")), str(tmp_path / "optuna.journal")
    client = MlflowClient()
    experiment = "0" if chosen is None else client.create_experiment(chosen)
    own = client.create_run(experiment).info.run_id
    # Each worker's first run waits until both workers are in a trial: neither can do all four alone.
    env = {
        **os.environ,
        "MLFLOW_RUN_ID": own,
        "MLFLOW_EXPERIMENT_ID": experiment,
        **hold_env(tmp_path / "hold", workers=2),
    }
    cmd = [sys.executable, "-m", "studies.run", "--spec", spec, "--storage", storage, "--workers", "2", "--no-report"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    study = load("tiny", storage)
    parent, trials = study_tree("tiny")
    launcher = client.get_run(own)
    assert "model" not in launcher.data.params  # no trial wrote into it
    if chosen is None:
        assert client.get_experiment(parent.info.experiment_id).name == "tiny" and parent.info.run_id != own
        assert launcher.info.status == "FINISHED" and launcher.data.tags[MOVED_TAG] == parent.info.experiment_id
        assert (
            launcher.data.tags["launched_study"] == "tiny"
            and parent.info.run_id in launcher.data.tags["mlflow.note.content"]
        )
        assert [r.info.run_id for r in client.search_runs(["0"])] == [own]  # Default holds only that pointer
    else:
        assert parent.info.run_id == own and parent.info.experiment_id == experiment
    assert {t.info.experiment_id for t in trials} == {parent.info.experiment_id}
    check_links(study, parent, trials)
    assert len(trials) >= 4
    trained = [t for t in study.trials if t.user_attrs.get("outcome") != DUPLICATE]  # a duplicate draw never trains
    assert len({t.user_attrs["pid"] for t in trained}) == 2  # both workers ran trials


def test_diverged_trial_is_recorded_and_the_study_goes_on(tracking: str, tmp_path: Path) -> None:
    body = (
        TINY.replace("fixed: {", "fixed: {lr: 1000000.0, init: kaiming_normal, ")
        .replace("init: [xavier_normal, kaiming_normal]", "init_gain: [1.0, 2.0]")
        .replace("activation: [relu, tanh, sigmoid]", "activation: [linear]")
    )
    spec, storage = write_spec(tmp_path, body), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    study = load("tiny", storage)
    trained = [t for t in study.trials if t.user_attrs["outcome"] != DUPLICATE]  # a point drawn again never trains
    assert sorted(t.params["init_gain"] for t in trained) == [1.0, 2.0]
    for t in trained:
        assert t.state == TrialState.PRUNED and t.user_attrs["outcome"] == "diverged"
        assert isinstance(t.user_attrs["diverged_step"], int)
    _, trials = study_tree("tiny")
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] == "diverged" for r in trials)
    assert all("diverged_step" in r.data.tags for r in trials)


def test_trial_that_raises_fails_alone(tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipelines.train.make_trainer

    def flaky(cfg, callbacks, progress_bar):
        if cfg.activation == "tanh":
            raise RuntimeError("simulated crash inside a trial")
        return real(cfg, callbacks, progress_bar)

    monkeypatch.setattr(pipelines.train, "make_trainer", flaky)
    body = (
        TINY.replace("sampler: {type: random, seed: 3}", "sampler: grid")
        .replace("activation: [relu, tanh, sigmoid]", "activation: [relu, tanh]")
        .replace("init: [xavier_normal, kaiming_normal]", "init: [kaiming_normal]")
    )
    spec, storage = write_spec(tmp_path, body), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    study = load("tiny", storage)
    states = {t.params["activation"]: t.state for t in study.trials}
    assert states == {"relu": TrialState.COMPLETE, "tanh": TrialState.FAIL}
    _, trials = study_tree("tiny")
    status = {r.data.params["activation"]: r.info.status for r in trials}
    assert status == {"relu": "FINISHED", "tanh": "FAILED"}


def test_objective_is_reported_at_each_validation(tracking: str, tmp_path: Path) -> None:
    spec, storage = write_spec(tmp_path, TINY), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    for t in load("tiny", storage).trials:
        assert sorted(t.intermediate_values) == [2, 4]
        assert t.value == t.intermediate_values[4]


GRID = TINY.replace("sampler: {type: random, seed: 3}", "sampler: grid").replace("n_trials: 2\n", "")


@pytest.mark.slow
def test_grid_with_two_workers_runs_every_point_exactly_once(tracking: str, tmp_path: Path) -> None:
    """Optuna's GridSampler can hand two workers one point; the runner prunes the second draw untrained."""
    spec, storage = write_spec(tmp_path, GRID), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, workers=2, report=False)
    study = load("tiny", storage)
    real = [t for t in study.trials if t.user_attrs.get("outcome") != DUPLICATE]
    points = [(t.params["activation"], t.params["init"]) for t in real]
    assert sorted(points) == sorted(
        (a, i) for a in ("relu", "tanh", "sigmoid") for i in ("xavier_normal", "kaiming_normal")
    )
    assert all(t.state == TrialState.COMPLETE for t in real)
    for t in study.trials:
        if t.user_attrs.get("outcome") == DUPLICATE:
            assert t.state == TrialState.PRUNED and "mlflow_run_id" not in t.user_attrs
    parent, trials = study_tree("tiny")
    check_links(study, parent, trials)
    assert len(trials) == 6


def test_a_grid_point_already_taken_is_pruned_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(write_spec(tmp_path, GRID))
    study = optuna.create_study(sampler=spec.make_sampler())
    params = {"activation": "relu", "init": "xavier_normal"}
    distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in spec.grid().items()}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5))
    study.enqueue_trial(params)  # as if a second worker drew the same point

    def must_not_train(*args, **kwargs):
        raise AssertionError("a duplicate grid point was trained")

    monkeypatch.setattr(pipelines.train, "run", must_not_train)
    study.optimize(objective_for(spec, "tiny", "parent-id"), n_trials=1)
    duplicate = study.trials[-1]
    assert duplicate.state == TrialState.PRUNED and duplicate.user_attrs["outcome"] == DUPLICATE
    assert duplicate.user_attrs["duplicate_of"] == 0


def test_grid_workers_share_one_grid_order(tmp_path: Path) -> None:
    """Workers alternate on one storage: their GridSamplers must agree on which index is which point."""
    spec = load_spec(write_spec(tmp_path, GRID))
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(study_name="g", storage=storage, sampler=spec.make_sampler(w), load_if_exists=True)
        for w in (0, 1)
    ]
    points = []
    for i in range(6):  # the grid's size, asked by worker 0, 1, 0, 1, …
        study = studies[i % 2]
        trial = study.ask()
        for param in spec.space:
            param.suggest(trial)
        points.append(tuple(sorted(trial.params.items())))
        if i < 5:  # after the last point GridSampler stops the study, which ask-and-tell cannot (Optuna docs)
            study.tell(trial, 0.0)
    assert len(set(points)) == 6


def test_progress_bar_counts_every_workers_trials(tmp_path: Path) -> None:
    """The bar shows the study's finished trials (another worker's too) and the best value so far."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))  # "another worker's", before this one starts
    progress = StudyProgress(study, total=4)
    assert progress.bar.n == 1
    for value in (0.5, 0.75):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING))  # not finished: not counted
    progress(study, study.trials[-1])
    assert progress.bar.n == 3
    assert "best 0.75 (trial 2)" in str(progress.bar)
    for _ in range(3):  # more than the total: the bar stops at it
        study.add_trial(optuna.trial.create_trial(value=0.1, params={}, distributions={}))
    progress(study, study.trials[-1])
    assert progress.bar.n == 4
    progress.close()


def test_a_failure_after_the_trials_ends_the_study_run_failed_with_the_reason(tracking: str, tmp_path: Path) -> None:
    """A 300-character study name: the report's folder name is too long for the file system (OSError)."""
    spec, storage, name = write_spec(tmp_path, TINY), str(tmp_path / "optuna.journal"), "s" * 300
    with pytest.raises(RuntimeError, match="File name too long"):  # studies.run prints it as one line, exit 1
        run_study(spec, study_name=name, storage=storage, report=True)
    parent, trials = study_tree(name)
    assert parent.info.status == "FAILED" and "File name too long" in parent.data.tags["failure"]
    study = load(name, storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # the trials are intact
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 2
    check_links(study, parent, trials)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_an_extended_seeded_study_proposes_new_points(sampler: str, tracking: str, tmp_path: Path) -> None:
    """n_trials 2, then 4: the second invocation continues the sampler instead of re-proposing trials 0 and 1."""
    body = TINY.replace("sampler: {type: random, seed: 3}", f"sampler: {{type: {sampler}, seed: 0}}")
    spec, storage = write_spec(tmp_path, body), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    run_study(spec, n_trials=4, storage=storage, report=False)
    study = load("tiny", storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    points = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(points)) == 4, points
    duplicates = [t for t in study.trials if t.user_attrs.get("outcome") == DUPLICATE]
    assert all(t.state == TrialState.PRUNED and "mlflow_run_id" not in t.user_attrs for t in duplicates)


def test_a_random_study_stops_when_its_space_is_exhausted(tracking: str, tmp_path: Path) -> None:
    """Asked for more trials than the space has points: each point once, then the study stops."""
    body = TINY.replace("init: [xavier_normal, kaiming_normal]", "init: [kaiming_normal]").replace(
        "activation: [relu, tanh, sigmoid]", "activation: [relu, tanh]"
    )
    spec, storage = write_spec(tmp_path, body), str(tmp_path / "optuna.journal")
    run_study(spec, n_trials=5, storage=storage, report=False)
    complete = [t for t in load("tiny", storage).trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["activation"] for t in complete) == ["relu", "tanh"]
