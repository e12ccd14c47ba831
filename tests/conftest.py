"""Shared fixtures: a throwaway MLflow tracking store and a tiny run config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project runs from its root, it is not installed
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402

from pipelines.config import RunConfig  # noqa: E402


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite tracking store under tmp_path, the working directory (so ./mlruns artifacts land there)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # monkeypatch then restores the environment as it was


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """A run that trains in about a second: a 3×16 MLP on digits for 6 steps."""
    return RunConfig(depth=3, width=16, max_steps=6, batch_size=32)
