"""Is the process behind a RUNNING run (or trial) still alive? The lab's one answer, for MLflow runs and Optuna trials.

Every run the lab starts carries who runs it: `host`, `pid`, `pid_start` (the process's start time, so that a
reused pid is not mistaken for the original process) and, while it trains, `heartbeat` (Unix seconds,
refreshed at most every HEARTBEAT_SECONDS by the recorder's background thread). A run is dead when

- on this host: its pid is gone, or belongs to a process that started at another time;
- on another host: its heartbeat is older than STALE_SECONDS (a run that never beat is left alone:
  from here nothing tells a lost machine from a long set-up).

Every entry point closes the dead runs of its experiment as KILLED with `outcome=killed` (close_dead_runs).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

HOST, PID, PID_START, HEARTBEAT = "host", "pid", "pid_start", "heartbeat"
HEARTBEAT_SECONDS = 30  # a training run refreshes its heartbeat at most this often
STALE_SECONDS = 600  # a run on another host whose heartbeat is older than this is dead (20 missed beats)
KILLED_OUTCOME = "killed"


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat from field 3 (state) on; empty where there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: the fields after its last ')' are fixed.
    return stat.rsplit(")", 1)[-1].split()


def process_start(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def identity(pid: int | None = None) -> dict[str, str]:
    """This process's liveness tags: host, pid and (where the system tells it) pid_start."""
    pid = os.getpid() if pid is None else pid
    tags = {HOST: socket.gethostname(), PID: str(pid)}
    start = process_start(pid)
    if start is not None:
        tags[PID_START] = start
    return tags


def beat() -> dict[str, str]:
    """The heartbeat tag for now."""
    return {HEARTBEAT: str(int(time.time()))}


def heartbeat(client: MlflowClient, run_id: str) -> Callable[[], None]:
    """What the recorder's thread calls every HEARTBEAT_SECONDS: refresh the run's heartbeat tag."""
    return lambda: client.set_tag(run_id, HEARTBEAT, beat()[HEARTBEAT])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    fields = _stat_fields(pid)
    return not fields or fields[0] != "Z"  # a zombie has ended; only its exit status waits to be collected


def is_dead(tags: Mapping[str, object], now: float | None = None) -> bool:
    """Whether the process these tags (or a trial's user attributes) name is certainly gone; False when unknown."""
    pid = str(tags.get(PID, ""))
    if not pid.isdigit():
        return False
    if tags.get(HOST) == socket.gethostname():
        if not _pid_alive(int(pid)):
            return True
        recorded = tags.get(PID_START)
        return recorded is not None and process_start(int(pid)) not in (None, str(recorded))
    beat_at = str(tags.get(HEARTBEAT, ""))
    if not beat_at.isdigit():
        return False
    return (time.time() if now is None else now) - int(beat_at) > STALE_SECONDS


def end_killed(client: MlflowClient, run_id: str) -> None:
    """End a run whose process died: status KILLED, tag outcome=killed."""
    client.set_tag(run_id, "outcome", KILLED_OUTCOME)
    client.set_terminated(run_id, "KILLED")


def close_dead_runs(client: MlflowClient, experiment_ids: Iterable[str], where: str = "") -> list[str]:
    """End as KILLED (tag outcome=killed) every RUNNING run of the experiments whose process is dead; their ids.

    `where` narrows the search (an MLflow filter, e.g. "tags.study = 'x'").
    """
    ids = sorted(set(experiment_ids))
    if not ids:
        return []
    query = " and ".join(filter(None, ["attributes.status = 'RUNNING'", f"tags.{PID} != ''", where]))
    closed = []
    for run in _search_all(client, ids, query):
        if not is_dead(run.data.tags):
            continue
        if client.get_run(run.info.run_id).info.status != "RUNNING":  # another invocation closed it meanwhile
            continue
        end_killed(client, run.info.run_id)
        closed.append(run.info.run_id)
    if closed:
        print(
            f"closed {len(closed)} run(s) left RUNNING by a process that died: {', '.join(closed)} (status KILLED)",
            file=sys.stderr,
        )
    return closed


def _search_all(client: MlflowClient, experiment_ids: list[str], query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
