"""Studies beyond one machine: worker processes sharing a real PostgreSQL and a real `mlflow server`.

One throwaway PostgreSQL (password auth on 127.0.0.1) holds the Optuna studies and the tracking
server's backend store; the server stores artifacts in a temporary folder and serves them, so workers
reach artifacts only through it, as on machines without a shared file system. Worker processes are
started as a user would start them on two machines: `python -m studies.run … --workers 1`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from studies.objective import DUPLICATE
from studies.tree import PARENT_ATTR
from tests.hold import hold_env, wait_for_started
from tests.servers import PG_PASSWORD, Postgres, mlflow_server, postgres_missing, postgres_server

if postgres_missing():
    pytest.skip(postgres_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = """
name: tiny
fixed: {depth: 2, width: 8, max_steps: 30, val_every: 15, log_every: 5, batch_size: 32}
space:
  activation: [relu, tanh]
  init: [xavier_normal, kaiming_normal, orthogonal]
sampler: {type: random, seed: 0}
objective: {metric: val/acc}
n_trials: 4
retries: 1
"""


@dataclass
class Worker:
    """A `python -m studies.run` process; its stdout and stderr go to a file (a pipe nobody reads fills up)."""

    proc: subprocess.Popen
    log: Path

    def finish(self, timeout: float = 300) -> str:
        """Wait for the process to succeed; what it printed."""
        self.proc.wait(timeout=timeout)
        out = self.log.read_text()
        assert self.proc.returncode == 0, out
        return out

    def stop(self) -> None:
        """Kill the process if a failed assertion left it running (before its servers go away)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_worker(folder: Path, storage: str, tracking: str, experiment: str, *flags: str, **env: str) -> Worker:
    """One worker process on the study in folder/spec.yaml, as someone would start it on another machine."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG", "STUDY_", "GPL_TEST_"))}
    env = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        **env,
    }
    cmd = [sys.executable, "-m", "studies.run", "--spec", "spec.yaml", "--storage", storage, "--workers", "1", *flags]
    log = folder / f"worker-{len(list(folder.glob('worker-*.log')))}.log"
    with log.open("w") as out:
        return Worker(subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT), log)


def load(storage: str | optuna.storages.RDBStorage, name: str = "tiny") -> optuna.Study:
    """The study as the database holds it (this process runs no heartbeat)."""
    return optuna.load_study(study_name=name, storage=storage)


def tree(client: MlflowClient, experiment: str, study: str) -> tuple[list, list, list]:
    """(parents, workers, trial runs) of a study in an experiment."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.study = '{study}'")
    by_role = {role: [r for r in runs if r.data.tags.get("role") == role] for role in ("parent", "worker", "trial")}
    assert len(runs) == sum(map(len, by_role.values())), [r.data.tags for r in runs]
    return by_role["parent"], by_role["worker"], by_role["trial"]


def check_accounted(study: optuna.Study, client: MlflowClient, experiment: str, n_trials: int) -> tuple:
    """Every trial ended, one MLflow run per trial, all nested under the study's one parent, none RUNNING."""
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    parents, workers, runs = tree(client, experiment, study.study_name)
    assert len(parents) == 1 and study.user_attrs[PARENT_ATTR] == parents[0].info.run_id
    parent = parents[0].info.run_id
    assert all(w.data.tags["mlflow.parentRunId"] == parent for w in workers)
    by_trial = {int(r.data.tags["trial"]): r for r in runs}
    assert len(by_trial) == len(runs), "a trial has two MLflow runs"
    trained = [t for t in study.trials if t.user_attrs.get("outcome") != DUPLICATE]  # a duplicate draw never trains
    assert sorted(by_trial) == [t.number for t in trained]
    for t in trained:
        assert by_trial[t.number].info.run_id == t.user_attrs["mlflow_run_id"]
        assert by_trial[t.number].data.tags["mlflow.parentRunId"] == parent
    assert not [r for r in [*parents, *workers, *runs] if r.info.status == "RUNNING"]
    # Counting what a retry replaces: a worker may start one trial past the total before it sees the other's.
    counted = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert n_trials <= len(counted) <= n_trials + 1
    return parents[0], by_trial


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server for this module."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def tracking_server(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1: backend store in PostgreSQL, artifacts served from a temporary folder."""
    artifacts = tmp_path_factory.mktemp("mlflow-server") / "artifacts"
    artifacts.mkdir()
    with mlflow_server(pg.create_database("mlflow"), artifacts) as url:
        yield url


@dataclass
class TwoWorkers:
    """The study two workers finished together, and where it lives."""

    storage: str
    tracking: str
    experiment: str
    folder: Path
    outputs: list[str]
    pids: list[int]


@pytest.fixture(scope="module")
def two_workers(pg: Postgres, tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> TwoWorkers:
    """Two workers started at once on one study, as on two machines.

    The first has the password in its storage URL (and builds the report); the second passes it the way
    the README recommends under `mlflow run`: a URL without password and PGPASSWORD, which libpq reads.
    """
    folder = tmp_path_factory.mktemp("two-workers")
    (folder / "spec.yaml").write_text(TINY)
    storage = pg.create_database("two_workers")
    assert PG_PASSWORD in storage
    bare = storage.replace(f":{PG_PASSWORD}@", "@")
    hold = hold_env(folder / "hold", workers=2)  # each first run waits until both workers are in a trial
    workers = [
        start_worker(folder, storage, tracking_server, "two-workers", **hold),
        start_worker(folder, bare, tracking_server, "two-workers", "--no-report", PGPASSWORD=PG_PASSWORD, **hold),
    ]
    try:
        outputs = [w.finish() for w in workers]
    finally:
        for w in workers:
            w.stop()
    return TwoWorkers(storage, tracking_server, "two-workers", folder, outputs, [w.proc.pid for w in workers])


def test_two_workers_finish_one_study(two_workers: TwoWorkers) -> None:
    study = load(two_workers.storage, "tiny")
    client = MlflowClient(two_workers.tracking)
    check_accounted(study, client, two_workers.experiment, 4)
    trained = [t for t in study.trials if t.user_attrs.get("outcome") != DUPLICATE]
    assert {t.user_attrs["pid"] for t in trained} == set(two_workers.pids)  # both did trials
    _, workers, _ = tree(client, two_workers.experiment, "tiny")
    assert len(workers) == 1  # the second invocation's own run, nested under the parent


def test_artifacts_and_report_through_the_tracking_server(two_workers: TwoWorkers, tmp_path: Path) -> None:
    client = MlflowClient(two_workers.tracking)
    parent, _, runs = tree(client, two_workers.experiment, "tiny")
    for run in [*parent, *runs]:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied by the server
    stats = pd.read_parquet(
        client.download_artifacts(runs[0].info.run_id, "stats/gradient_stats.parquet", str(tmp_path))
    )
    assert {"step", "layer", "family", "stat", "value"} <= set(stats.columns) and stats["step"].max() >= 25
    parent_id = parent[0].info.run_id
    report = Path(client.download_artifacts(parent_id, "report", str(tmp_path)))
    assert (report / "index.html").stat().st_size > 0 and list(report.glob("*.png"))
    trials = pd.read_csv(client.download_artifacts(parent_id, "study/trials.csv", str(tmp_path)))
    assert len(trials[trials["user_attrs_outcome"] != DUPLICATE]) == len(runs)  # a duplicate draw never trains


def test_no_password_in_params_tags_output_or_artifacts(two_workers: TwoWorkers, tmp_path: Path) -> None:
    assert "postgres:***@" in two_workers.outputs[0]  # the URL was printed, masked
    for out in two_workers.outputs:
        assert PG_PASSWORD not in out
    client = MlflowClient(two_workers.tracking)
    parent, workers, runs = tree(client, two_workers.experiment, "tiny")
    for run in [*parent, *workers, *runs]:
        for key, value in [*run.data.params.items(), *run.data.tags.items()]:
            assert PG_PASSWORD not in key + value, (run.info.run_id, key)
    texts = Path(client.download_artifacts(parent[0].info.run_id, "", str(tmp_path)))
    files = [p for p in texts.rglob("*") if p.suffix in (".csv", ".json", ".yaml", ".html", ".txt")]
    assert {"trials.csv", "summary.json", "spec.yaml", "index.html"} <= {p.name for p in files}
    for path in files:
        assert PG_PASSWORD not in path.read_text(errors="replace"), path
    study = load(two_workers.storage, "tiny")
    assert PG_PASSWORD not in repr([study.user_attrs, [(t.user_attrs, t.system_attrs) for t in study.trials]])


def test_sigkill_mid_trial_then_restart_on_postgres(pg: Postgres, tracking_server: str, tmp_path: Path) -> None:
    """A worker killed mid-trial and started again: the heartbeat fails the trial, the retry completes it."""
    (tmp_path / "spec.yaml").write_text(TINY.replace("n_trials: 4", "n_trials: 3"))
    storage = pg.create_database("crash")
    beat = {"STUDY_HEARTBEAT_SECONDS": "1", "STUDY_GRACE_SECONDS": "4"}  # production: 10 s and 30 s
    # Its first run waits at its first step until killed: the trial cannot finish before the SIGKILL lands.
    doomed = start_worker(
        tmp_path, storage, tracking_server, "crash", "--no-report", **beat, **hold_env(tmp_path / "hold")
    )
    try:
        ((_, run_id),) = wait_for_started(tmp_path / "hold", 1, alive=lambda: doomed.proc.poll() is None).items()
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
    finally:
        doomed.stop()
    (killed,) = load(storage).get_trials(states=(TrialState.RUNNING,))
    assert killed.user_attrs["mlflow_run_id"] == run_id
    client = MlflowClient(tracking_server)
    assert client.get_run(run_id).info.status == "RUNNING"  # what a crash leaves
    time.sleep(5)  # past the grace period (4 s) after the last beat: the killed worker cannot beat again
    out = start_worker(tmp_path, storage, tracking_server, "crash", "--no-report", **beat).finish()  # the same command
    assert f"trials [{killed.number}] were left RUNNING by a worker that died" in out

    study = load(storage, "tiny")
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [killed.number]
    _, by_trial = check_accounted(study, client, "crash", 3)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3  # one worker: exactly the total
    orphan = by_trial[killed.number]
    assert orphan.info.status == "KILLED" and orphan.data.tags["outcome"] == "killed"


def test_dead_runs_are_closed_through_the_tracking_server(tracking_server: str) -> None:
    """Liveness rule on a PostgreSQL-backed server: another host's stale-heartbeat run is closed, a fresh one kept."""
    from common import liveness

    client = MlflowClient(tracking_server)
    experiment = client.create_experiment("liveness")
    now = int(time.time())
    stale, fresh = (
        client.create_run(experiment, tags={"host": "lost-machine", "pid": "42", "heartbeat": str(beat)}).info.run_id
        for beat in (now - liveness.STALE_SECONDS - 5, now)
    )
    assert liveness.close_dead_runs(client, [experiment]) == [stale]
    assert client.get_run(stale).info.status == "KILLED" and client.get_run(stale).data.tags["outcome"] == "killed"
    assert client.get_run(fresh).info.status == "RUNNING"
