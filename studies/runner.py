"""The one generic study runner: any spec becomes an Optuna study whose trials are nested MLflow runs.

The study's parent MLflow run is found through the study itself (user attribute
`mlflow_parent_run_id`): the first invocation's run becomes the parent; a later one (a resume, another
worker, another machine) nests its own run under it with `role=worker`, and all trials nest under the
parent, so a study is one tree in the MLflow UI (studies/tree.py). `n_trials` is the study's total:
running the same command again resumes it and runs only what is missing.

Here: one invocation from start to end. Its parts: the tree (studies/tree.py), dead-worker recovery
(studies/recovery.py), one worker's trials (studies/trials.py, with the objective of studies/objective.py
and the count of studies/progress.py), the summary on the parent (studies/results.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from common.links import DEFAULT_UI
from studies import ui
from studies.progress import finished_trials
from studies.recovery import close_orphans, recover
from studies.results import log_summary
from studies.spec import StudySpec, load_spec
from studies.storage import DEFAULT_STORAGE, is_rdb, mask
from studies.tree import attach_parent, fail_after_trials, reason
from studies.trials import StudyContext, open_study, work
from studies.workers import WarmWorkers

log = logging.getLogger(__name__)


class AfterTrialsError(RuntimeError):
    """Something failed after the trials (summary, report): the invocation's run ended FAILED with the reason."""


def run_study(
    spec_name: str,
    *,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    workers: int = 1,
    report: bool = True,
    overrides: dict[str, Any] | None = None,
    warm: WarmWorkers | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study to its total of n_trials and return its summary.

    `workers=0` runs one single-threaded worker per CPU core: small networks gain nothing from
    intra-op threads, and parallel trials keep every core busy. `overrides` replace fixed run-config
    fields of the spec (e.g. fewer steps for a smoke test). `warm`: the extra worker processes, if the
    caller started them already (studies.run does, before validating the spec); else they start here.
    """
    workers = workers or os.cpu_count() or 1
    if warm is None:
        warm = WarmWorkers(workers - 1)  # first: their imports overlap the set-up below
    elif len(warm) != workers - 1:
        raise ValueError(f"{len(warm)} warm workers for workers={workers}")
    try:
        return _run_study(spec_name, n_trials, study_name, storage, workers, report, overrides, warm)
    finally:
        warm.join()


def _open(spec: StudySpec, study_name: str, storage: str) -> tuple[optuna.Study, bool]:
    """(the study, whether this invocation created it): creation is atomic, so exactly one invocation made it."""
    try:
        return open_study(spec, study_name, storage, create_only=True), True
    except optuna.exceptions.DuplicatedStudyError:
        return open_study(spec, study_name, storage), False


def _run_trials(ctx: StudyContext, workers: int, warm: WarmWorkers) -> str:
    """Run the trials on this process and the warm workers; the invocation's status (FINISHED or KILLED)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        if not is_rdb(ctx.storage) and workers > 1:
            Path(ctx.storage).parent.mkdir(parents=True, exist_ok=True)
        warm.start(ctx, threads)
        work(ctx, 0, threads, progress_bar=True)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
        return "KILLED"
    finally:
        warm.join()
    return "FINISHED"


def _end_runs(client: MlflowClient, study: optuna.Study, own: str, parent: str, status: str, n_trials: int) -> None:
    """End this invocation's run; end the parent too when the study is complete."""
    client.set_terminated(own, status)
    if own != parent and status == "FINISHED" and finished_trials(study) >= n_trials:
        # The study is complete: its parent ends too, even when the invocation that made it died (and was
        # closed as KILLED by liveness.close_dead_runs meanwhile).
        if client.get_run(parent).info.status in ("RUNNING", "KILLED"):
            client.set_tag(parent, "outcome", "completed")
            client.set_terminated(parent, "FINISHED")


def _print_links(spec: StudySpec, experiment_id: str, parent: str, index: Path | None, best: dict[str, Any]) -> None:
    """Where to look: the parent run in the MLflow UI, the report, the best trial's run."""
    uri, page = mlflow.get_tracking_uri(), f"#/experiments/{experiment_id}/runs/{parent}"
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        base = mask(uri).rstrip("/")
        print(f"browse: {base}/{page}", file=sys.stderr)
    else:
        base = DEFAULT_UI
        print(f"browse: mlflow ui --backend-store-uri {mask(uri)}  then open {base}/{page}", file=sys.stderr)
    if index is not None:
        print(f"report: {index.resolve()} (and the parent run's artifact report/index.html)", file=sys.stderr)
    if "best_run_id" in best:
        print(
            f"best: trial {best['best_trial']} {best['best_run_name']}, {spec.metric} = {best['best_value']}: "
            f"{base}/{ui.run_link(experiment_id, best['best_run_id'])}",
            file=sys.stderr,
        )


def _run_study(
    spec_name: str,
    n_trials: int | None,
    study_name: str | None,
    storage: str,
    workers: int,
    report: bool,
    overrides: dict[str, Any] | None,
    warm: WarmWorkers,
) -> dict[str, Any]:
    spec = load_spec(spec_name, overrides)
    n_trials = n_trials or spec.n_trials
    study_name = study_name or spec.name
    client = MlflowClient()
    study, created = _open(spec, study_name, storage)
    parent, own, role = attach_parent(study, spec, storage, client, n_trials, created)
    experiment_id = client.get_run(parent).info.experiment_id
    ctx = StudyContext(
        spec.source,
        study_name,
        storage,
        parent,
        experiment_id,
        mlflow.get_tracking_uri(),
        n_trials,
        dict(overrides or {}),
    )
    dead = recover(study, spec, storage, client)
    if dead:
        print(
            f"trials {dead} were left RUNNING by a worker that died: marked failed"
            + (f", retried up to {spec.retries} times" if spec.retries else ""),
            file=sys.stderr,
        )
    log.info(
        "study %r (%s) %s: %d/%d trials done; %d worker(s); storage %s; experiment %s; this run %s is the study's %s",
        study_name,
        spec.name,
        "created" if created else "resumed",
        finished_trials(study),
        n_trials,
        workers,
        mask(storage),
        experiment_id,
        own,
        role,
    )
    started = time.perf_counter()
    status = _run_trials(ctx, workers, warm)
    try:
        study = open_study(spec, study_name, storage)
        close_orphans(study, client)  # trials failed by the heartbeat while this invocation ran
        summary = log_summary(study, spec, parent, client)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        index = _report(study_name, parent) if report and status == "FINISHED" else None
        best = ui.describe_parent(client, study, spec, parent, summary)
    except Exception as exc:  # the trials are stored; what failed after them must not leave a run RUNNING
        fail_after_trials(client, own, parent if own == parent or finished_trials(study) >= n_trials else None, exc)
        raise AfterTrialsError(f"the trials are stored, but the end of the study failed: {reason(exc)}") from exc
    _end_runs(client, study, own, parent, status, n_trials)
    print(json.dumps(summary, indent=2, default=str))
    _print_links(spec, experiment_id, parent, index, best)
    if status == "KILLED":
        raise KeyboardInterrupt
    return summary


def _report(study_name: str, parent_run_id: str) -> Path | None:
    """Regenerate the study's report into its parent run, when the analysis package provides one; its index.html."""
    if importlib.util.find_spec("analysis.report") is None:
        return None
    from analysis import report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per parquet download is noise

    return report.build(study_name)
