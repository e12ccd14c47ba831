"""A study's results on its parent run: the summary (JSON), a CSV of every trial and headline metrics."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from studies.spec import StudySpec


def summarize(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """Best trial and trials by state and outcome."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    outcomes = Counter(t.user_attrs.get("outcome", t.state.name.lower()) for t in trials)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "spec": spec.name,
        "objective": f"{spec.direction} {spec.metric}",
        "trials": len(trials),
        "states": dict(states),
        "outcomes": dict(outcomes),
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        }
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
