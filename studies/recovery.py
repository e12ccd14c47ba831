"""Dead-worker recovery: trials whose worker died are failed (and retried), orphaned MLflow runs closed.

Run at the start of every invocation and after its trials, so that a killed invocation leaves nothing
RUNNING in either store for longer than the next invocation takes to start.
"""

from __future__ import annotations

import warnings

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from common import liveness
from studies.objective import retried_trials
from studies.spec import StudySpec
from studies.storage import is_rdb, open_storage, retry
from studies.tree import EXPERIMENT_ATTR


def recover(study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient) -> list[int]:
    """Fail trials whose worker died, retry them if the spec allows, and close orphaned MLflow runs.

    RDB storages detect dead workers by heartbeat: Optuna fails (and retries) a trial whose heartbeat is
    older than the grace period when a worker starts a trial, and here. For the journal file, the rule
    is common/liveness.py's: a RUNNING trial started on this host by a process that no longer exists
    (or a reused pid) is dead (a worker on another host cannot be checked from here; use an RDB storage
    for many machines). A trial
    interrupted by Ctrl-C is retried once, whatever `retries` says. Retries are Optuna's own
    (RetryHeartbeatStaleTrialCallback: same params, a new trial). Returns the numbers of the trials failed here.
    """
    failed = []
    if is_rdb(storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before]
    else:
        store = open_storage(storage)
        study_id = store.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if liveness.is_dead(t.user_attrs):  # trials carry no heartbeat: only this host's are judged
                trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
                try:
                    store.set_trial_state_values(trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:  # another invocation recovered it first
                    continue
                failed.append(t.number)
                if spec.retries:
                    retry(spec.retries)(study, study.get_trials()[t.number])
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if (
            t.user_attrs.get("outcome") == "interrupted"
            and t.state.is_finished()
            and t.number not in retried_trials(trials)
        ):
            retry()(study, t)
    close_orphans(study, client)
    return failed


def close_orphans(study: optuna.Study, client: MlflowClient) -> list[str]:
    """End as KILLED the RUNNING MLflow runs left by dead workers; their ids.

    A trial's run: a live worker ends it before Optuna ends the trial, so a run still RUNNING after its
    trial ended is an orphan. Runs are listed before trials and checked again, so that a worker on another
    machine starting or ending a trial meanwhile is never mistaken for a dead one. Any other run of the
    study (an invocation's own run, a trial run whose trial Optuna has not failed yet): when its process
    is dead (common/liveness.py).
    """
    experiment, where = study.user_attrs.get(EXPERIMENT_ATTR, "0"), f"tags.study = '{study.study_name}'"
    candidates = client.search_runs([experiment], f"{where} and tags.role = 'trial' and attributes.status = 'RUNNING'")
    ended = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    closed = []
    for run in candidates:
        if int(run.data.tags.get("trial", -1)) in ended and client.get_run(run.info.run_id).info.status == "RUNNING":
            liveness.end_killed(client, run.info.run_id)
            closed.append(run.info.run_id)
    return closed + liveness.close_dead_runs(client, [experiment], where)
