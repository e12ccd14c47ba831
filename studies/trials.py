"""One worker's trials: the study opened with its sampler and pruner, and trials until the study has its total.

The parent invocation runs worker 0 itself (studies/runner.py); the extra worker processes (studies/workers.py)
run `work_in_subprocess`. Everything a worker needs travels in a picklable StudyContext.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import optuna
import torch

from studies.objective import objective_for
from studies.progress import StudyProgress, finished_trials, stop_at
from studies.spec import StudySpec, load_spec
from studies.storage import mask, open_storage


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
            callbacks=[stop_at(ctx.n_trials)] + ([progress] if progress else []),
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
