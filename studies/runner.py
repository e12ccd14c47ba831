"""The one generic study runner: any spec becomes an Optuna study whose trials are nested MLflow runs.

The study's parent MLflow run is found through the study itself (user attribute
`mlflow_parent_run_id`): the first invocation's run becomes the parent; a later one (a resume, another
worker, another machine) nests its own run under it with `role=worker`, and all trials nest under the
parent, so a study is one tree in the MLflow UI. `n_trials` is the study's total: running the same
command again resumes it and runs only what is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import torch
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tqdm import tqdm

from pipelines import liveness, train
from studies import naming, ui
from studies.spec import StudySpec, load_spec
from studies.storage import DEFAULT_STORAGE, is_rdb, mask, open_storage, retry
from studies.workers import WarmWorkers

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_WAIT_SECONDS = 60  # how long an invocation waits for the study's creator to name the parent run
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


def open_study(
    spec: StudySpec, study_name: str, storage: str, worker: int = 0, *, create_only: bool = False
) -> optuna.Study:
    """Create or load the study with the spec's sampler (seeded per worker) and pruner.

    With `create_only`, an existing study raises DuplicatedStudyError: creation is atomic in every
    storage, so of several invocations started at once exactly one learns that it made the study.
    """
    try:
        return optuna.create_study(
            study_name=study_name,
            storage=open_storage(storage, spec.retries),
            sampler=spec.make_sampler(worker),
            pruner=spec.make_pruner(),
            direction=spec.direction,
            load_if_exists=not create_only,
        )
    except ValueError as exc:  # e.g. an existing study with another direction
        raise SystemExit(f"error: study {study_name!r} in {mask(storage)}: {exc}") from None


def continue_sampling(study: optuna.Study, spec: StudySpec, worker: int) -> None:
    """Give a random/TPE study a sampler seeded past the trials it holds, so a resume does not restart the sequence.

    Seeded with the spec's seed alone, every invocation would propose the points of the first one again;
    the seed of worker w of an invocation that finds k trials is derived from (seed, w, k) instead (the
    spec's seed + w when k = 0, as before). A grid keeps its one order (make_sampler).
    """
    if spec.sampler["type"] == "grid":
        return
    existing = len(study.get_trials(deepcopy=False))
    base = spec.sampler.get("seed", 0)
    if existing == 0:
        seed = base + worker
    else:
        seed = int(np.random.SeedSequence([base, worker, existing]).generate_state(1)[0])
    study.sampler = dataclasses.replace(spec, sampler={**spec.sampler, "seed": seed}).make_sampler(0)


def _wait_for_parent(study: optuna.Study) -> str | None:
    """The parent run id once the study's creator has recorded it, or None after PARENT_WAIT_SECONDS."""
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while (parent := study.user_attrs.get(PARENT_ATTR)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return parent


def attach_parent(
    study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient, n_trials: int, created: bool = True
) -> tuple[str, str, str]:
    """(parent run id, this invocation's run id, its role): the study's one MLflow tree.

    Only the invocation that created the study (`created`) makes the parent; the others wait for it to
    be recorded, so workers started at once on several machines still share one tree.
    """
    own = os.environ.pop("MLFLOW_RUN_ID", None)  # the run `mlflow run` made for this entry point
    launcher = client.get_run(own) if own else None
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None and not created:
        parent = _wait_for_parent(study)
        if parent is None:
            print(f"warning: study {study.study_name!r} has no parent run after {PARENT_WAIT_SECONDS} s "
                  "(its creator stopped early?): this run becomes the parent", file=sys.stderr)  # fmt: skip
    if parent is not None:
        try:
            experiment_id = client.get_run(parent).info.experiment_id
        except mlflow.exceptions.MlflowException:
            print(f"warning: the study's parent run {parent} is not in this tracking store; starting a new tree",
                  file=sys.stderr)  # fmt: skip
            parent = None
    if parent is None:
        experiment_id = ui.study_experiment(client, study.study_name, launcher)
        own = ui.own_run(client, launcher, experiment_id, study.study_name)
        # Recorded first: other invocations are waiting for it.
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        study.set_user_attr(PARENT_ATTR, own)
        client.set_tag(own, "mlflow.runName", study.study_name)
        client.set_tag(own, "study", study.study_name)
        client.set_tag(own, "role", "parent")
        client.log_batch(own, tags=[RunTag(k, v) for k, v in liveness.identity().items()])
        _log_spec(client, own, spec, storage, n_trials)
        return own, own, "parent"
    own = ui.own_run(client, launcher, experiment_id, f"{study.study_name}-worker")
    for key, value in {"mlflow.parentRunId": parent, "study": study.study_name, "role": "worker",
                       **liveness.identity()}.items():  # fmt: skip
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
    client, fields = MlflowClient(), naming.varying_fields(spec)

    def objective(trial: optuna.Trial) -> float:
        values: dict[str, Any] = {}
        for param in spec.space:
            values.update(param.suggest(trial))
        skip_duplicate(trial, spec)
        cfg = spec.config(values)
        trial.set_user_attr("outcome", "running")  # a retry inherits its failed trial's attributes
        for key, value in liveness.identity().items():  # who runs it, to tell later whether it died
            trial.set_user_attr(key, int(value) if key == liveness.PID else value)
        name = naming.claim_name(trial, naming.trial_name(spec, cfg, fields))

        def started(run_id: str) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            client.set_tag(run_id, "mlflow.runName", name)

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
                on_start=started,
                on_recorded=lambda run_id, table: ui.log_trial_figure(client, run_id, table, f"trial {trial.number}: {name}"),
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


DUPLICATE = "duplicate"  # outcome of a trial that drew a point another trial has: never trained, not counted
# A failed point is taken too: it counts as finished (or waits as a retry), and re-running it could loop.
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def space_size(spec: StudySpec) -> float:
    """How many distinct points the search space holds (inf with a continuous parameter)."""
    sizes = [len(p.grid_values()) if p.kind in ("categorical", "bundle")
             else (int(p.high) - int(p.low)) // (p.step or 1) + 1 if p.kind == "int"
             else math.floor((p.high - p.low) / p.step + 1e-9) + 1 if p.step
             else math.inf for p in spec.space]  # fmt: skip
    return math.prod(sizes)


def skip_duplicate(trial: optuna.Trial, spec: StudySpec) -> None:
    """Prune a trial whose point another trial has done, failed, is running or will retry, before it trains.

    Optuna's GridSampler hands concurrent workers the same point at times (documented): near the end,
    when every unvisited point is running elsewhere, a free worker draws one of those; random and TPE
    samplers draw any point again by chance. Such a trial is pruned at once with outcome=duplicate (no
    MLflow run, not counted towards n_trials); when no point is left to draw, this worker stops and leaves
    the rest to the workers running them. A retry (Optuna's, with its failed trial's point) is no twin.
    """
    trials = trial.study.get_trials(deepcopy=False, states=TAKEN)
    retried = _retried(trials)  # a retry re-runs its failed or interrupted trial's point: that one is not a twin
    others = [t for t in trials if t.number != trial.number and t.number not in retried
              and t.user_attrs.get("outcome") not in (DUPLICATE, "interrupted")]  # fmt: skip
    taken = {_point(t.params): t.number for t in others}
    mine = _point(trial.params)
    if mine not in taken:
        return
    trial.set_user_attr("outcome", DUPLICATE)
    trial.set_user_attr("duplicate_of", taken[mine])
    if len(taken) >= space_size(spec):
        trial.study.stop()
    raise optuna.TrialPruned(f"point of trial {taken[mine]}")


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that already have a retry (Optuna's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def recover(study: optuna.Study, spec: StudySpec, storage: str, client: MlflowClient) -> list[int]:
    """Fail trials whose worker died, retry them if the spec allows, and close orphaned MLflow runs.

    RDB storages detect dead workers by heartbeat: Optuna fails (and retries) a trial whose heartbeat is
    older than the grace period when a worker starts a trial, and here. For the journal file, the rule
    is pipelines/liveness.py's: a RUNNING trial started on this host by a process that no longer exists
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
        if t.user_attrs.get("outcome") == "interrupted" and t.state.is_finished() and t.number not in _retried(trials):
            retry()(study, t)
    close_orphans(study, client)
    return failed


def close_orphans(study: optuna.Study, client: MlflowClient) -> list[str]:
    """End as KILLED the RUNNING MLflow runs left by dead workers; their ids.

    A trial's run: a live worker ends it before Optuna ends the trial, so a run still RUNNING after its
    trial ended is an orphan. Runs are listed before trials and checked again, so that a worker on another
    machine starting or ending a trial meanwhile is never mistaken for a dead one. Any other run of the
    study (an invocation's own run, a trial run whose trial Optuna has not failed yet): when its process
    is dead (pipelines/liveness.py).
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


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards n_trials: ended (completed, pruned, failed), less failures being retried."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(
        1
        for t in trials
        if t.state in FINISHED
        and not (t.state == TrialState.FAIL and t.number in retried)
        and t.user_attrs.get("outcome") not in ("interrupted", DUPLICATE)
    )


def _stop_at(n_trials: int):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished_trials(study) >= n_trials:
            study.stop()

    return callback


class StudyProgress:
    """A bar over the study's finished trials, every worker's: Optuna's own bar counts this process's only."""

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.total = total
        self.bar = tqdm(total=total, initial=min(finished_trials(study), total), unit="trial", desc="study",
                        dynamic_ncols=True)  # fmt: skip

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: after each of this worker's trials, the study's count and best value."""
        self.bar.n = min(finished_trials(study), self.total)
        try:
            best = study.best_trial
        except ValueError:  # no completed trial yet
            best = None
        if best is not None:
            self.bar.set_postfix_str(f"best {best.value:.4g} (trial {best.number})", refresh=False)
        self.bar.refresh()

    def close(self) -> None:  # noqa: D102
        self.bar.close()


def work(ctx: StudyContext, worker: int, threads: int, progress_bar: bool) -> None:
    """Run trials of the study until it has `n_trials` finished trials (one worker)."""
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(ctx.tracking_uri)  # trial runs go to their parent's experiment (pipelines.train.run)
    spec = load_spec(ctx.spec_source, ctx.overrides)
    study = open_study(spec, ctx.study_name, ctx.storage, worker)
    continue_sampling(study, spec, worker)
    remaining = ctx.n_trials - finished_trials(study)
    if remaining <= 0:
        return
    objective = objective_for(spec, ctx.study_name, ctx.parent_run_id)
    progress = StudyProgress(study, ctx.n_trials) if progress_bar else None
    try:
        study.optimize(
            objective,
            # The study ends at its total (_stop_at) or when its points are done (the grid sampler and
            # skip_duplicate stop it): a budget of trials could be spent on duplicates and leave the total short.
            n_trials=None,
            catch=(Exception,),  # a trial that raises is a failed trial; the study goes on
            callbacks=[_stop_at(ctx.n_trials)] + ([progress] if progress else []),
        )
    finally:
        if progress is not None:
            progress.close()
    if objective.interrupted:
        raise KeyboardInterrupt


def work_in_subprocess(ctx: StudyContext, worker: int, threads: int) -> None:
    """One extra worker process's whole life (studies.workers): trials until the study is done or Ctrl-C."""
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
              overrides: dict[str, Any] | None = None, warm: WarmWorkers | None = None) -> dict[str, Any]:  # fmt: skip
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


def _run_study(spec_name: str, n_trials: int | None, study_name: str | None, storage: str, workers: int,
               report: bool, overrides: dict[str, Any] | None, warm: WarmWorkers) -> dict[str, Any]:  # fmt: skip
    spec = load_spec(spec_name, overrides)
    n_trials = n_trials or spec.n_trials
    study_name = study_name or spec.name
    client = MlflowClient()
    try:
        study, created = open_study(spec, study_name, storage, create_only=True), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = open_study(spec, study_name, storage), False
    parent, own, role = attach_parent(study, spec, storage, client, n_trials, created)
    experiment_id = client.get_run(parent).info.experiment_id
    ctx = StudyContext(spec.source, study_name, storage, parent, experiment_id, mlflow.get_tracking_uri(), n_trials,
                       dict(overrides or {}))  # fmt: skip
    dead = recover(study, spec, storage, client)
    if dead:
        print(f"trials {dead} were left RUNNING by a worker that died: marked failed"
              + (f", retried up to {spec.retries} times" if spec.retries else ""), file=sys.stderr)  # fmt: skip
    done = finished_trials(study)
    log.info("study %r (%s) %s: %d/%d trials done; %d worker(s); storage %s; experiment %s; this run %s is the "
             "study's %s", study_name, spec.name, "created" if created else "resumed", done, n_trials, workers,
             mask(storage), experiment_id, own, role)  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    status = "FINISHED"
    try:
        if not is_rdb(storage) and workers > 1:
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        warm.start(ctx, threads)
        work(ctx, 0, threads, progress_bar=True)
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
    finally:
        warm.join()
    try:
        study = open_study(spec, study_name, storage)
        close_orphans(study, client)  # trials failed by the heartbeat while this invocation ran
        summary = log_summary(study, spec, parent, client)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        index = _report(study_name, parent) if report and status == "FINISHED" else None
        best = ui.describe_parent(client, study, spec, parent, summary)
    except Exception as exc:  # the trials are stored; what failed after them must not leave a run RUNNING
        fail_after_trials(client, own, parent if own == parent or finished_trials(study) >= n_trials else None, exc)
        raise AfterTrialsError(f"the trials are stored, but the end of the study failed: {_reason(exc)}") from exc
    client.set_terminated(own, status)
    if own != parent and status == "FINISHED" and finished_trials(study) >= n_trials:
        # The study is complete: its parent ends too, even when the invocation that made it died (and was
        # closed as KILLED by liveness.close_dead_runs meanwhile).
        if client.get_run(parent).info.status in ("RUNNING", "KILLED"):
            client.set_tag(parent, "outcome", "completed")
            client.set_terminated(parent, "FINISHED")
    print(json.dumps(summary, indent=2, default=str))
    uri, page = mlflow.get_tracking_uri(), f"#/experiments/{experiment_id}/runs/{parent}"
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        base = mask(uri).rstrip("/")
        print(f"browse: {base}/{page}", file=sys.stderr)
    else:
        base = "http://127.0.0.1:5000"
        print(f"browse: mlflow ui --backend-store-uri {mask(uri)}  then open {base}/{page}", file=sys.stderr)
    if index is not None:
        print(f"report: {index.resolve()} (and the parent run's artifact report/index.html)", file=sys.stderr)
    if "best_run_id" in best:
        print(f"best: trial {best['best_trial']} {best['best_run_name']}, {spec.metric} = {best['best_value']}: "
              f"{base}/{ui.run_link(experiment_id, best['best_run_id'])}", file=sys.stderr)  # fmt: skip
    if status == "KILLED":
        raise KeyboardInterrupt
    return summary


class AfterTrialsError(RuntimeError):
    """Something failed after the trials (summary, report): the invocation's run ended FAILED with the reason."""


FAILURE_TAG = "failure"  # why a study's run ended FAILED after its trials


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]  # one line; MLflow tags hold 8,000 characters


def fail_after_trials(client: MlflowClient, own: str, parent: str | None, exc: BaseException) -> None:
    """End this invocation's run (and the parent, when given and still open) FAILED with the reason as a tag."""
    for run_id in dict.fromkeys(r for r in (own, parent) if r is not None):
        if client.get_run(run_id).info.status in ("RUNNING", "KILLED"):
            client.set_tag(run_id, FAILURE_TAG, _reason(exc))
            client.set_terminated(run_id, "FAILED")


def _report(study_name: str, parent_run_id: str) -> Path | None:
    """Regenerate the study's report into its parent run, when the analysis package provides one; its index.html."""
    if importlib.util.find_spec("analysis.report") is None:
        return None
    from analysis import report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per parquet download is noise

    return report.build(study_name)
