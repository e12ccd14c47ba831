"""Links into the MLflow UI, shared by the training run's result line, the study runner and the report."""

from __future__ import annotations

import urllib.parse

import mlflow

# Where `mlflow ui` serves by default; a tracking server (MLFLOW_TRACKING_URI http…) is its own UI.
DEFAULT_UI = "http://127.0.0.1:5000"


def ui_base() -> str:
    """The MLflow UI's address for links: the tracking server's (without credentials), else `mlflow ui`'s default."""
    parts = urllib.parse.urlsplit(mlflow.get_tracking_uri())
    if parts.scheme not in ("http", "https"):
        return DEFAULT_UI
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def run_link(experiment_id: str, run_id: str) -> str:
    """The UI's route to a run (relative to the UI's address: the same in every UI serving the store)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"
