"""The Optuna objective of a study: one trial = one nested MLflow training run; twins of a point are skipped.

A trial draws its point, is pruned at once when another trial has that point (`skip_duplicate`), names
itself, tags who runs it (common/liveness.py) and trains through pipelines.train.run with the study's
trial tags (studies/tree.py); divergence and pruning are results (a pruned trial), a Ctrl-C ends the
trial cleanly and stops the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from common import liveness
from pipelines import train
from pipelines.config import RunConfig
from pipelines.train import RunResult
from studies import naming, tree, ui
from studies.spec import StudySpec


def _claim(trial: optuna.Trial, spec: StudySpec, fields: list[str]) -> tuple[RunConfig, str]:
    """(the trial's run config, its name): its point drawn, twins skipped, who runs it tagged."""
    values: dict[str, Any] = {}
    for param in spec.space:
        values.update(param.suggest(trial))
    skip_duplicate(trial, spec)
    cfg = spec.config(values)
    trial.set_user_attr("outcome", "running")  # a retry inherits its failed trial's attributes
    for key, value in liveness.identity().items():  # who runs it, to tell later whether it died
        trial.set_user_attr(key, int(value) if key == liveness.PID else value)
    return cfg, naming.claim_name(trial, naming.trial_name(spec, cfg, fields))


def _reporter(trial: optuna.Trial, metric: str) -> Callable[[int, dict[str, float]], bool]:
    """train.run's on_validation: report the objective's metric to Optuna; whether to prune."""

    def report(step: int, metrics: dict[str, float]) -> bool:
        if metric not in metrics or not math.isfinite(metrics[metric]):
            return False
        trial.report(metrics[metric], step)
        return trial.should_prune()

    return report


def _value(trial: optuna.Trial, result: RunResult, metric: str) -> float:
    """The trial's objective value; a diverged or pruned run (or a non-finite value) prunes the trial."""
    trial.set_user_attr("outcome", result.outcome)
    if result.outcome == "diverged":
        trial.set_user_attr("diverged_step", result.diverged_step)
        raise optuna.TrialPruned(f"diverged at step {result.diverged_step}")
    if result.outcome == "pruned":
        raise optuna.TrialPruned(f"pruned at step {result.steps}")
    value = result.metrics.get(metric, math.nan)
    if not math.isfinite(value):
        trial.set_user_attr("outcome", "diverged")
        raise optuna.TrialPruned(f"{metric} is {value}")
    return value


def objective_for(spec: StudySpec, study_name: str, parent_run_id: str) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: one trial = one nested MLflow training run (`.interrupted` lists Ctrl-C'd trials)."""
    interrupted: list[int] = []
    client, fields = MlflowClient(), naming.varying_fields(spec)

    def objective(trial: optuna.Trial) -> float:
        cfg, name = _claim(trial, spec, fields)

        def started(run_id: str) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            client.set_tag(run_id, "mlflow.runName", name)

        try:
            result = train.run(
                cfg,
                parent_run_id=parent_run_id,
                tags=tree.trial_tags(study_name, trial.number),
                on_validation=_reporter(trial, spec.metric),
                on_start=started,
                on_recorded=lambda run_id, table: ui.log_trial_figure(
                    client, run_id, table, f"trial {trial.number}: {name}"
                ),
                progress_bar=False,
            )
        except KeyboardInterrupt:
            # End this trial cleanly (pruned, not a traceback), stop the study; a resume re-runs it.
            trial.set_user_attr("outcome", "interrupted")
            interrupted.append(trial.number)
            trial.study.stop()
            raise optuna.TrialPruned("interrupted") from None
        return _value(trial, result, spec.metric)

    objective.interrupted = interrupted
    return objective


DUPLICATE = "duplicate"  # outcome of a trial that drew a point another trial has: never trained, not counted
# A failed point is taken too: it counts as finished (or waits as a retry), and re-running it could loop.
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def space_size(spec: StudySpec) -> float:
    """How many distinct points the search space holds (inf with a continuous parameter)."""
    sizes = [
        len(p.grid_values())
        if p.kind in ("categorical", "bundle")
        else (int(p.high) - int(p.low)) // (p.step or 1) + 1
        if p.kind == "int"
        else math.floor((p.high - p.low) / p.step + 1e-9) + 1
        if p.step
        else math.inf
        for p in spec.space
    ]
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
    retried = retried_trials(trials)  # a retry re-runs its failed or interrupted trial's point: that one is not a twin
    others = [
        t
        for t in trials
        if t.number != trial.number
        and t.number not in retried
        and t.user_attrs.get("outcome") not in (DUPLICATE, "interrupted")
    ]
    taken = {_point(t.params): t.number for t in others}
    mine = _point(trial.params)
    if mine not in taken:
        return
    trial.set_user_attr("outcome", DUPLICATE)
    trial.set_user_attr("duplicate_of", taken[mine])
    if len(taken) >= space_size(spec):
        trial.study.stop()
    raise optuna.TrialPruned(f"point of trial {taken[mine]}")


def retried_trials(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that already have a retry (Optuna's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}
