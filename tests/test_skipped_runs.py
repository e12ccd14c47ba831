"""One bad run spoils no report: a corrupt or missing statistics table, an unfinished run (real MLflow store)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import load, report
from benchmarks.synthetic import Shape, make_study
from gradprobe.recorder import STATS_ARTIFACT


def _stats_file(client: MlflowClient, run_id: str) -> Path:
    return Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path)) / STATS_ARTIFACT


@pytest.fixture
def damaged(tracking: str) -> dict[str, str]:
    """Study `damaged`: four good runs made by the real recorder, then one made corrupt, one stripped of its
    table, and a fifth left RUNNING by a process that has ended. Name → run id."""
    client = MlflowClient()
    parent = make_study(
        "damaged", 4, client=client, shape=Shape(max_steps=10, log_every=5, depths=(2,), metric_points=0)
    )
    trials = load.runs("damaged").set_index("trial")["run_id"]
    _stats_file(client, trials[0]).write_bytes(b"PAR1 this is not a parquet file")
    _stats_file(client, trials[1]).unlink()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    tags = {
        "study": "damaged",
        "role": "trial",
        "trial": "4",
        "mlflow.parentRunId": parent,
        "host": socket.gethostname(),
        "pid": str(ended.pid),
    }
    dead = client.create_run("0", tags=tags).info.run_id
    return {"corrupt": trials[0], "missing": trials[1], "good": trials[2], "also good": trials[3], "dead": dead}


def test_the_loader_skips_and_names_bad_runs(damaged: dict[str, str]) -> None:
    data = load.study("damaged")
    assert sorted(data.runs["run_id"]) == sorted([damaged["good"], damaged["also good"]])
    assert set(data.stats["run_id"]) == {damaged["good"], damaged["also good"]}
    assert set(data.skipped) == {damaged["corrupt"], damaged["missing"], damaged["dead"]}
    assert "unreadable" in data.skipped[damaged["corrupt"]] and "no " in data.skipped[damaged["missing"]]
    assert data.skipped[damaged["dead"]].startswith("status RUNNING")


def test_the_report_draws_the_rest_and_names_the_skipped(
    damaged: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = report.build("damaged", tmp_path / "reports")
    err = capsys.readouterr().err
    page = index.read_text()
    assert "Skipped runs" in page
    for name in ("corrupt", "missing", "dead"):
        assert damaged[name] in page and f"run {damaged[name]} skipped" in err, name
    summary = pd.read_csv(index.parent / "summary.csv")
    assert sorted(summary["run_id"]) == sorted([damaged["good"], damaged["also good"]])
    assert list(index.parent.glob("*.png"))  # the good runs are drawn
    dead = MlflowClient().get_run(damaged["dead"])  # the report's entry point closed it first
    assert dead.info.status == "KILLED" and dead.data.tags["outcome"] == "killed"
