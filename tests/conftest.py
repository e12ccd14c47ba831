"""Shared fixtures: a throwaway MLflow tracking store and a tiny run config."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project runs from its root, it is not installed
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.config import RunConfig  # noqa: E402


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema made, once: MLflow's migrations take seconds per new file."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def copy_store(empty_store: Path, folder: Path) -> str:
    """A fresh copy of the empty store in `folder`, its Default experiment storing artifacts in folder/mlruns."""
    db = folder / "mlflow.db"
    shutil.copyfile(empty_store, db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),))
    con.close()
    return f"sqlite:///{db}"


@pytest.fixture
def store_uri(tmp_path: Path, empty_store: Path) -> str:
    """The URI of an empty store under tmp_path, for subprocesses (the global tracking URI is left alone)."""
    return copy_store(empty_store, tmp_path)


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A SQLite tracking store under tmp_path, the working directory (so ./mlruns artifacts land there)."""
    uri = copy_store(empty_store, tmp_path)
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
