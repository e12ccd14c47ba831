"""The study runner against real stores: Optuna journal/SQLite storages and an MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import pipelines.train
from studies.runner import PARENT_ATTR, run_study
from studies.spec import list_specs

SMOKE = {"max_steps": 3, "log_every": 1, "val_every": 3, "metric_points": 0}


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
    return optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))  # fmt: skip


def check_links(study: optuna.Study, parent, trials) -> None:
    """Every finished Optuna trial has exactly one MLflow run nested under the parent, and they name each other."""
    assert study.user_attrs[PARENT_ATTR] == parent.info.run_id
    by_trial = {int(r.data.tags["trial"]): r for r in trials}
    assert len(by_trial) == len(trials), "a trial has two MLflow runs"
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
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
    summary = run_study(spec, n_trials=2, storage=storage, report=False, overrides=SMOKE)
    assert summary["trials"] == 2
    parent, trials = study_tree(spec)
    check_links(load(spec, storage), parent, trials)
    assert all(r.data.tags["outcome"] in ("completed", "diverged", "pruned") for r in trials)
    assert all(r.info.status == "FINISHED" for r in trials)
    client = MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {
        "study/trials.csv", "study/summary.json"}  # fmt: skip
    metrics = client.get_run(trials[0].info.run_id).data.metrics
    assert "grad/L000/l2" in metrics and "backprop/L000/l2" in metrics


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
    workers = MlflowClient().search_runs(["0"], filter_string="tags.role = 'worker'")
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


def test_diverged_trial_is_recorded_and_the_study_goes_on(tracking: str, tmp_path: Path) -> None:
    body = TINY.replace("fixed: {", "fixed: {lr: 1000000.0, init: kaiming_normal, ").replace(
        "init: [xavier_normal, kaiming_normal]", "init_gain: [1.0, 2.0]").replace(
        "activation: [relu, tanh, sigmoid]", "activation: [linear]")  # fmt: skip
    spec, storage = write_spec(tmp_path, body), str(tmp_path / "optuna.journal")
    run_study(spec, storage=storage, report=False)
    study = load("tiny", storage)
    assert len(study.trials) == 2
    for t in study.trials:
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
    body = TINY.replace("sampler: {type: random, seed: 3}", "sampler: grid").replace(
        "activation: [relu, tanh, sigmoid]", "activation: [relu, tanh]").replace(
        "init: [xavier_normal, kaiming_normal]", "init: [kaiming_normal]")  # fmt: skip
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
