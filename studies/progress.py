"""How far a study is: the trials that count toward its total, the stop at the total, a bar over all workers' trials."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from studies.objective import DUPLICATE, retried_trials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards n_trials: ended (completed, pruned, failed), less failures being retried."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(
        1
        for t in trials
        if t.state in FINISHED
        and not (t.state == TrialState.FAIL and t.number in retried)
        and t.user_attrs.get("outcome") not in ("interrupted", DUPLICATE)
    )


def stop_at(n_trials: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna callback: stop the study once it has `n_trials` finished trials (every worker's)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished_trials(study) >= n_trials:
            study.stop()

    return callback


class StudyProgress:
    """A bar over the study's finished trials, every worker's: Optuna's own bar counts this process's only."""

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.total = total
        self.bar = tqdm(
            total=total, initial=min(finished_trials(study), total), unit="trial", desc="study", dynamic_ncols=True
        )

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

    def close(self) -> None:
        self.bar.close()
