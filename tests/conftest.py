"""Shared fixtures: throwaway MLflow tracking stores, a tiny run config, and two small studies (synthetic, real)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project runs from its root, it is not installed
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from gradprobe import fused  # noqa: E402
from pipelines.config import RunConfig  # noqa: E402


def require_fused() -> None:
    """Skip where no C compiler exists; fail where one does and the fused kernels still did not build."""
    if fused.enabled():
        return
    if not fused.compiler():
        pytest.skip("no C compiler: the fused statistics cannot be built here (the eager path is tested)")
    pytest.fail("a C compiler exists but gradprobe/fused.c did not build or load (see the RuntimeWarning)")


@pytest.fixture(params=["fused", "eager"])
def statistics_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once through the fused kernels and once through eager PyTorch (GPL_FUSED=0)."""
    if request.param == "eager":
        monkeypatch.setenv(fused.ENV, "0")
    else:
        monkeypatch.delenv(fused.ENV, raising=False)
        require_fused()
    return request.param


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
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),)
        )
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


@contextlib.contextmanager
def pointed_at(uri: str) -> Iterator[str]:
    """MLflow's tracking URI (global and environment) set to `uri` for a block: for fixtures wider than one test."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


SYNTHETIC_STUDY = "synthetic"
REAL_STUDY = "real"
# A real study small enough for the test suite: every figure's case once (clipping with its unclipped twin,
# batch norm, residual, a diverging ReLU net, a recurrent net), 8-16 units, a dozen steps.
REAL_SPEC = """
name: real
fixed: {dataset: digits, width: 16, batch_size: 32, max_steps: 12, log_every: 2, metric_points: 0}
space:
  net:
    bundles:
      relu_clipped: {model: mlp, activation: relu, init: kaiming_normal, depth: 4, clip: norm, clip_threshold: 0.5}
      relu_unclipped: {model: mlp, activation: relu, init: kaiming_normal, depth: 4}
      tanh_bn: {model: mlp, activation: tanh, init: xavier_normal, depth: 4, norm: batch, optimizer: adam, lr: 0.003}
      sigmoid_res: {model: resmlp, activation: sigmoid, init: xavier_normal, depth: 3, res_scale: 0.5}
      relu_diverging: {model: mlp, activation: relu, init: kaiming_normal, depth: 4, lr: 1000000.0}
      gru: {model: gru, dataset: adding, loss: mse, depth: 1, width: 8, seq_len: 6, init: orthogonal}
sampler: {type: grid}
pruner: none
objective: {metric: val/loss, direction: minimize}
n_trials: 6
"""


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> str:
    """URI of a store holding the 6-run synthetic study `synthetic` (real Recorder and MLflow runs, no training).

    Six runs cover every figure: run 1 is an exploding ReLU net that diverges, run 3 a recurrent net.
    """
    from benchmarks.synthetic import Shape, make_study

    uri = copy_store(empty_store, tmp_path_factory.mktemp("synthetic"))
    shape = Shape(max_steps=30, log_every=5, depths=(2, 6), metric_points=1)
    make_study(SYNTHETIC_STUDY, 6, client=MlflowClient(uri), shape=shape)
    return uri


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> str:
    """URI of a store holding study `real`: six tiny trials trained by the study runner (no report)."""
    from studies.runner import run_study

    folder = tmp_path_factory.mktemp("real")
    uri = copy_store(empty_store, folder)
    (folder / "real.yaml").write_text(REAL_SPEC)
    with pointed_at(uri):
        run_study(str(folder / "real.yaml"), storage=str(folder / "optuna.journal"), report=False)
    return uri
