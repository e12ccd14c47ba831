"""The one generic study runner: any spec becomes an Optuna study whose trials are nested MLflow runs.

The study's parent MLflow run is found through the study itself (user attribute
`mlflow_parent_run_id`): the first invocation's run becomes the parent; a later one (a resume, another
worker, another machine) nests its own run under it with `role=worker`, and all trials nest under the
parent, so a study is one tree in the MLflow UI. `n_trials` is the study's total: running the same
command again resumes it and runs only what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch
from mlflow.tracking import MlflowClient
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from pipelines import train
from studies.spec import StudySpec, load_spec
from studies.storage import DEFAULT_STORAGE, is_rdb, mask, open_storage

PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class StudyContext:
    """Everything a worker process needs to run trials of one study (picklable)."""

    spec_source: str
    study_name: str
    storage: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    n_trials: int
    overrides: dict[str, Any]


def _experiment_id() -> str:
    """The experiment of this invocation: mlflow run's, MLFLOW_EXPERIMENT_NAME's, or Default."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id
    return mlflow.set_experiment("Default").experiment_id


def open_study(spec: StudySpec, study_name: str, storage: str, worker: int = 0) -> optuna.Study:
    """Create or load the study with the spec's sampler (seeded per worker) and pruner."""
    try:
        return optuna.create_study(
            study_name=study_name,
            storage=open_storage(storage, spec.retries),
            sampler=spec.make_sampler(worker),
            pruner=spec.make_pruner(),
            direction=spec.direction,
            load_if_exists=True,
        )
    except ValueError as exc:  # e.g. an existing study with another direction
        raise SystemExit(f"error: study {study_name!r} in {mask(storage)}: {exc}") from None


def attach_parent(
    study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient, n_trials: int
) -> tuple[str, str, str]:
    """(parent run id, this invocation's run id, its role): the study's one MLflow tree."""
    own = os.environ.pop("MLFLOW_RUN_ID", None)  # the run `mlflow run` made for this entry point
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is not None:
        try:
            experiment_id = client.get_run(parent).info.experiment_id
        except mlflow.exceptions.MlflowException:
            print(f"warning: the study's parent run {parent} is not in this tracking store; starting a new tree",
                  file=sys.stderr)  # fmt: skip
            parent = None
    if parent is None:
        experiment_id = _experiment_id() if own is None else client.get_run(own).info.experiment_id
        if own is None:
            own = client.create_run(experiment_id, run_name=study.study_name).info.run_id
        client.set_tag(own, "mlflow.runName", study.study_name)
        client.set_tag(own, "study", study.study_name)
        client.set_tag(own, "role", "parent")
        _log_spec(client, own, spec, storage, n_trials)
        study.set_user_attr(PARENT_ATTR, own)
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        return own, own, "parent"
    if own is None:
        own = client.create_run(experiment_id, run_name=f"{study.study_name}-worker").info.run_id
    for key, value in {"mlflow.parentRunId": parent, "study": study.study_name, "role": "worker",
                       "host": socket.gethostname()}.items():  # fmt: skip
        client.set_tag(own, key, value)
    return parent, own, "worker"


def _log_spec(client: MlflowClient, run_id: str, spec: StudySpec, storage: str, n_trials: int) -> None:
    # Prefixed: `mlflow run` already logged the entry point's own parameters (spec, n_trials, …) here.
    params = {"study_spec": spec.name, "study_sampler": spec.sampler["type"], "study_pruner": spec.pruner["type"],
              "study_objective": f"{spec.direction} {spec.metric}", "study_n_trials": n_trials,
              "study_storage": mask(storage)}  # fmt: skip
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_artifact(run_id, spec.source, artifact_path="study")


def objective_for(spec: StudySpec, study_name: str, parent_run_id: str):
    """The Optuna objective: one trial = one nested MLflow training run (`.interrupted` lists Ctrl-C'd trials)."""
    interrupted: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        values: dict[str, Any] = {}
        for param in spec.space:
            values.update(param.suggest(trial))
        cfg = spec.config(values)
        trial.set_user_attr("outcome", "running")  # a retry inherits its failed trial's attributes
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())

        def report(step: int, metrics: dict[str, float]) -> bool:
            if spec.metric not in metrics or not math.isfinite(metrics[spec.metric]):
                return False
            trial.report(metrics[spec.metric], step)
            return trial.should_prune()

        try:
            result = train.run(
                cfg,
                parent_run_id=parent_run_id,
                tags={"study": study_name, "trial": str(trial.number), "role": "trial"},
                on_validation=report,
                on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
                progress_bar=False,
            )
        except KeyboardInterrupt:
            # End this trial cleanly (pruned, not a traceback), stop the study; a resume re-runs it.
            trial.set_user_attr("outcome", "interrupted")
            interrupted.append(trial.number)
            trial.study.stop()
            raise optuna.TrialPruned("interrupted") from None
        trial.set_user_attr("outcome", result.outcome)
        if result.outcome == "diverged":
            trial.set_user_attr("diverged_step", result.diverged_step)
            raise optuna.TrialPruned(f"diverged at step {result.diverged_step}")
        if result.outcome == "pruned":
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        value = result.metrics.get(spec.metric, math.nan)
        if not math.isfinite(value):
            trial.set_user_attr("outcome", "diverged")
            raise optuna.TrialPruned(f"{spec.metric} is {value}")
        return value

    objective.interrupted = interrupted
    return objective


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that already have a retry (Optuna's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def recover(study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient) -> list[int]:
    """Fail trials whose worker died, retry them if the spec allows, and close orphaned MLflow runs.

    RDB storages detect dead workers by heartbeat (Optuna fails and retries them). For the journal file,
    the rule is: a RUNNING trial started on this host by a process that no longer exists is dead (a
    worker on another host cannot be checked from here; use an RDB storage for many machines). A trial
    interrupted by Ctrl-C is retried once, whatever `retries` says. Retries are Optuna's own
    (RetryFailedTrialCallback: same params, a new trial). Returns the numbers of the trials failed here.
    """
    failed = []
    if not is_rdb(storage):
        host, store = socket.gethostname(), open_storage(storage)
        study_id = store.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get("pid")
            if t.user_attrs.get("host") == host and pid is not None and not _alive(int(pid)):
                trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
                store.set_trial_state_values(trial_id, TrialState.FAIL)
                failed.append(t.number)
                if spec.retries:
                    RetryFailedTrialCallback(max_retry=spec.retries)(study, study.get_trials()[t.number])
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.user_attrs.get("outcome") == "interrupted" and t.state.is_finished() and t.number not in _retried(trials):
            RetryFailedTrialCallback()(study, t)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    orphans = client.search_runs(
        [study.user_attrs.get(EXPERIMENT_ATTR, "0")],
        filter_string=f"tags.study = '{study.study_name}' and tags.role = 'trial' and attributes.status = 'RUNNING'",
    )
    for run in orphans:
        if int(run.data.tags.get("trial", -1)) not in running:
            client.set_tag(run.info.run_id, "outcome", "killed")
            client.set_terminated(run.info.run_id, "KILLED")
    return failed


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards n_trials: ended (completed, pruned, failed), less failures being retried."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(
        1
        for t in trials
        if t.state in FINISHED
        and not (t.state == TrialState.FAIL and t.number in retried)
        and t.user_attrs.get("outcome") != "interrupted"
    )


def _stop_at(n_trials: int):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished_trials(study) >= n_trials:
            study.stop()

    return callback


def work(ctx: StudyContext, worker: int, threads: int, progress_bar: bool) -> None:
    """Run trials of the study until it has `n_trials` finished trials (one worker)."""
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(ctx.tracking_uri)
    mlflow.set_experiment(experiment_id=ctx.experiment_id)
    spec = load_spec(ctx.spec_source, ctx.overrides)
    study = open_study(spec, ctx.study_name, ctx.storage, worker)
    remaining = ctx.n_trials - finished_trials(study)
    if remaining <= 0:
        return
    objective = objective_for(spec, ctx.study_name, ctx.parent_run_id)
    study.optimize(
        objective,
        n_trials=remaining,
        catch=(Exception,),  # a trial that raises is a failed trial; the study goes on
        callbacks=[_stop_at(ctx.n_trials)],
        show_progress_bar=progress_bar,
    )
    if objective.interrupted:
        raise KeyboardInterrupt


def _work_in_subprocess(ctx: StudyContext, worker: int, threads: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        work(ctx, worker, threads, progress_bar=False)
    except KeyboardInterrupt:
        pass


def summarize(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """Best trial and trials by state and outcome."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    outcomes = Counter(t.user_attrs.get("outcome", t.state.name.lower()) for t in trials)
    summary: dict[str, Any] = {"study": study.study_name, "spec": spec.name, "objective": f"{spec.direction} {spec.metric}",
                               "trials": len(trials), "states": dict(states), "outcomes": dict(outcomes)}  # fmt: skip
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}  # fmt: skip
    return summary


def log_summary(study: optuna.Study, spec: StudySpec, run_id: str, client: MlflowClient) -> dict[str, Any]:
    """Log the summary (JSON), a CSV of all trials and headline metrics to the parent run."""
    summary = summarize(study, spec)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(Path(tmp) / "trials.csv", index=False)
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        client.log_artifact(run_id, str(Path(tmp) / "trials.csv"), artifact_path="study")
        client.log_artifact(run_id, str(Path(tmp) / "summary.json"), artifact_path="study")
    metrics = {f"trials_{k}": float(v) for k, v in summary["outcomes"].items()}
    if "best" in summary:
        metrics["best_value"] = float(summary["best"]["value"])
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    return summary


def run_study(spec_name: str, *, n_trials: int | None = None, study_name: str | None = None,
              storage: str = DEFAULT_STORAGE, workers: int = 1, report: bool = True,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) a study to its total of n_trials and return its summary.

    `workers=0` runs one single-threaded worker per CPU core: small networks gain nothing from
    intra-op threads, and parallel trials keep every core busy. `overrides` replace fixed run-config
    fields of the spec (e.g. fewer steps for a smoke test).
    """
    spec = load_spec(spec_name, overrides)
    workers = workers or os.cpu_count() or 1
    n_trials = n_trials or spec.n_trials
    study_name = study_name or spec.name
    client = MlflowClient()
    study = open_study(spec, study_name, storage)
    parent, own, role = attach_parent(study, spec, storage, client, n_trials)
    experiment_id = client.get_run(parent).info.experiment_id
    ctx = StudyContext(spec.source, study_name, storage, parent, experiment_id, mlflow.get_tracking_uri(), n_trials,
                       dict(overrides or {}))  # fmt: skip
    dead = recover(study, spec, storage, client)
    if dead:
        print(f"trials {dead} were left RUNNING by a worker that died: marked failed"
              + (f", retried up to {spec.retries} times" if spec.retries else ""), file=sys.stderr)  # fmt: skip
    done = finished_trials(study)
    print(f"study {study_name!r} ({spec.name}): {done}/{n_trials} trials done; {workers} worker(s); "
          f"storage {mask(storage)}; this run {own} is the study's {role}", file=sys.stderr)  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    status = "FINISHED"
    procs = [mp.get_context("spawn").Process(target=_work_in_subprocess, args=(ctx, w, threads)) for w in range(1, workers)]
    try:
        if not is_rdb(storage) and workers > 1:
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        for p in procs:
            p.start()
        work(ctx, 0, threads, progress_bar=True)
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
    finally:
        for p in procs:
            p.join()
    study = open_study(spec, study_name, storage)
    summary = log_summary(study, spec, parent, client)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if report and status == "FINISHED":
        _report(study_name, parent)
    if own != parent:
        client.set_terminated(own, status)
    else:
        client.set_terminated(parent, status)
    print(json.dumps(summary, indent=2, default=str))
    uri = mlflow.get_tracking_uri()
    print(f"browse: mlflow ui --backend-store-uri {mask(uri)}  then open "
          f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent}", file=sys.stderr)  # fmt: skip
    if status == "KILLED":
        raise KeyboardInterrupt
    return summary


def _report(study_name: str, parent_run_id: str) -> None:
    """Regenerate the study's report into its parent run, when the analysis package provides one."""
    if importlib.util.find_spec("analysis.report") is None:
        return
    from analysis import report

    report.build(study_name)
