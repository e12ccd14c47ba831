"""Dead runs are told from live ones and closed (common/liveness.py): real MLflow stores, real processes, SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hold import hold_env, wait_for_started
from mlflow.tracking import MlflowClient

from common import liveness
from gradprobe.recorder import Recorder

ROOT = Path(__file__).resolve().parents[1]


def _ended_pid() -> int:
    """The pid of a process that has ended (and been collected)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_identity_names_this_process_and_its_start_time() -> None:
    tags = liveness.identity()
    # Field 22 of proc(5), read independently: counted from field 3, after the command name in parentheses.
    after_name = Path(f"/proc/{os.getpid()}/stat").read_text().split(") ")[-1].split(" ")
    assert tags["host"] == socket.gethostname() and tags["pid"] == str(os.getpid())
    assert tags["pid_start"] == after_name[22 - 3]
    assert not liveness.is_dead(tags)


def test_a_gone_pid_or_a_reused_one_is_dead_on_this_host() -> None:
    here = socket.gethostname()
    assert liveness.is_dead({"host": here, "pid": str(_ended_pid())})
    own = liveness.identity()
    reused = {**own, "pid_start": str(int(own["pid_start"]) + 1)}  # same pid, a process started at another time
    assert liveness.is_dead(reused)
    assert not liveness.is_dead({"host": here})  # no pid: nothing tells, so not dead


def test_on_another_host_only_a_stale_heartbeat_is_dead(tracking: str) -> None:
    client, now = MlflowClient(), int(time.time())
    elsewhere = {"host": "another-machine", "pid": "1"}
    runs = {
        "stale": {**elsewhere, "heartbeat": str(now - liveness.STALE_SECONDS - 5)},
        "fresh": {**elsewhere, "heartbeat": str(now - 5)},
        "never beat": dict(elsewhere),
        "here, alive": liveness.identity(),
        "here, gone": {"host": socket.gethostname(), "pid": str(_ended_pid())},
        "not the lab's": {},
    }
    ids = {name: client.create_run("0", tags={"study": "s", **tags}).info.run_id for name, tags in runs.items()}
    closed = liveness.close_dead_runs(client, ["0"])
    assert sorted(closed) == sorted([ids["stale"], ids["here, gone"]])
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        dead = name in ("stale", "here, gone")
        assert run.info.status == ("KILLED" if dead else "RUNNING"), name
        assert (run.data.tags.get("outcome") == "killed") == dead, name
    assert liveness.close_dead_runs(client, ["0"]) == []  # closed once


def test_the_recorder_refreshes_the_heartbeat_while_the_run_lives(tracking: str) -> None:
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    before = int(time.time())
    recorder = Recorder(
        client,
        run_id,
        expected_records=1,
        metric_points=0,
        heartbeat=liveness.heartbeat(client, run_id),
        heartbeat_seconds=0.05,
    )
    try:
        deadline = time.monotonic() + 60
        while "heartbeat" not in client.get_run(run_id).data.tags:
            assert time.monotonic() < deadline, "no heartbeat within 60 s"
            time.sleep(0.05)
    finally:
        recorder.close()
    assert before <= int(client.get_run(run_id).data.tags["heartbeat"]) <= time.time()


def _train(uri: str, *flags: str, **env: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri, **env}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "pipelines.train", "--depth", "2", "--width", "8", "--max-steps", "4", *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_training_run_killed_with_sigkill_is_closed_by_the_next_entry_point(tmp_path: Path, store_uri: str) -> None:
    doomed = _train(store_uri, **hold_env(tmp_path / "hold"))
    try:
        ((pid, run_id),) = wait_for_started(tmp_path / "hold", 1, alive=lambda: doomed.poll() is None).items()
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    finally:
        doomed.kill()
        doomed.wait()
    client = MlflowClient(store_uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # what SIGKILL leaves
    assert run.data.tags["pid"] == str(pid) and run.data.tags["host"] == socket.gethostname()
    assert run.data.tags["pid_start"].isdigit() and run.data.tags["heartbeat"].isdigit()

    out, _ = _train(store_uri).communicate(timeout=300)
    assert "closed 1 run(s) left RUNNING" in out, out
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "killed"
    statuses = [r.info.status for r in client.search_runs(["0"])]
    assert sorted(statuses) == ["FINISHED", "KILLED"]
