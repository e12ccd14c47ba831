"""A study's one MLflow tree: a parent run, one worker run per later invocation, one trial run per trial.

Shared by the study runner (studies/runner.py, the parent found through the Optuna study) and the
experiments on top of the lab (experiments/invariance, the parent found through its tags), so that every
tree carries the same tags: `study`, `role` (parent, worker, trial), who runs it (common/liveness.py)
and, when the end of an invocation fails, `failure` with the reason. Dead runs of a tree are closed as
KILLED by the rule of common/liveness.py.
"""

from __future__ import annotations

import os
import sys
import time

import mlflow
import optuna
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from common import liveness
from studies import ui
from studies.spec import StudySpec
from studies.storage import mask

PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_WAIT_SECONDS = 60  # how long an invocation waits for the study's creator to name the parent run
PARENT, WORKER, TRIAL = "parent", "worker", "trial"
FAILURE_TAG = "failure"  # why a study's run ended FAILED after its trials


def tag_parent(client: MlflowClient, run_id: str, study: str) -> None:
    """Make `run_id` the root of study's tree: named after the study, role=parent, and who runs it."""
    tags = {"mlflow.runName": study, "study": study, "role": PARENT, **liveness.identity()}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def tag_worker(client: MlflowClient, run_id: str, parent: str, study: str) -> None:
    """Nest `run_id` (a later invocation's own run) under the study's parent with role=worker."""
    tags = {
        "mlflow.parentRunId": parent,
        "mlflow.runName": f"{study}-worker",
        "study": study,
        "role": WORKER,
        **liveness.identity(),
    }
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def trial_tags(study: str, number: int) -> dict[str, str]:
    """The tags of trial `number`'s run (its parent is given to train.run separately)."""
    return {"study": study, "trial": str(number), "role": TRIAL}


def close_dead_runs(client: MlflowClient, experiment_id: str, study: str) -> list[str]:
    """End as KILLED the RUNNING runs of study's tree whose process is dead; their ids."""
    return liveness.close_dead_runs(client, [experiment_id], f"tags.study = '{study}'")


def reason(exc: BaseException) -> str:
    """The exception as one line for the `failure` tag (MLflow tags hold 8,000 characters)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]


def fail_after_trials(client: MlflowClient, own: str, parent: str | None, exc: BaseException) -> None:
    """End this invocation's run (and the parent, when given and still open) FAILED with the reason as a tag."""
    for run_id in dict.fromkeys(r for r in (own, parent) if r is not None):
        if client.get_run(run_id).info.status in ("RUNNING", "KILLED"):
            client.set_tag(run_id, FAILURE_TAG, reason(exc))
            client.set_terminated(run_id, "FAILED")


# ------------------------------------------------------------------------- the tree of an Optuna study


def _wait_for_parent(study: optuna.Study) -> str | None:
    """The parent run id once the study's creator has recorded it, or None after PARENT_WAIT_SECONDS."""
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while (parent := study.user_attrs.get(PARENT_ATTR)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return parent


def _recorded_parent(study: optuna.Study, client: MlflowClient, created: bool) -> tuple[str | None, str | None]:
    """(the study's parent run id, its experiment id) when a usable one is recorded, else (None, None)."""
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None and not created:
        parent = _wait_for_parent(study)
        if parent is None:
            print(
                f"warning: study {study.study_name!r} has no parent run after {PARENT_WAIT_SECONDS} s "
                "(its creator stopped early?): this run becomes the parent",
                file=sys.stderr,
            )
    if parent is None:
        return None, None
    try:
        return parent, client.get_run(parent).info.experiment_id
    except mlflow.exceptions.MlflowException:
        print(
            f"warning: the study's parent run {parent} is not in this tracking store; starting a new tree",
            file=sys.stderr,
        )
        return None, None


def attach_parent(
    study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient, n_trials: int, created: bool = True
) -> tuple[str, str, str]:
    """(parent run id, this invocation's run id, its role): the study's one MLflow tree.

    Only the invocation that created the study (`created`) makes the parent; the others wait for it to
    be recorded, so workers started at once on several machines still share one tree.
    """
    own = os.environ.pop("MLFLOW_RUN_ID", None)  # the run `mlflow run` made for this entry point
    launcher = client.get_run(own) if own else None
    parent, experiment_id = _recorded_parent(study, client, created)
    if parent is None:
        experiment_id = ui.study_experiment(client, study.study_name, launcher)
        own = ui.own_run(client, launcher, experiment_id, study.study_name)
        # Recorded first: other invocations are waiting for it.
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        study.set_user_attr(PARENT_ATTR, own)
        tag_parent(client, own, study.study_name)
        _log_spec(client, own, spec, storage, n_trials)
        return own, own, PARENT
    own = ui.own_run(client, launcher, experiment_id, f"{study.study_name}-worker")
    tag_worker(client, own, parent, study.study_name)
    return parent, own, WORKER


def _log_spec(client: MlflowClient, run_id: str, spec: StudySpec, storage: str, n_trials: int) -> None:
    # Prefixed: `mlflow run` already logged the entry point's own parameters (spec, n_trials, …) here.
    params = {
        "study_spec": spec.name,
        "study_sampler": spec.sampler["type"],
        "study_pruner": spec.pruner["type"],
        "study_objective": f"{spec.direction} {spec.metric}",
        "study_n_trials": n_trials,
        "study_storage": mask(storage),
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_artifact(run_id, spec.source, artifact_path="study")
