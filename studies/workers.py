"""Worker processes started before a study is set up, so that their start-up overlaps the parent's.

A spawned worker spends about 5 s importing torch, Lightning and MLflow before it can run a trial. Started
first thing, it imports while the parent validates the spec and opens the study, then waits for its job;
a parent that stops early (a bad spec) stops them, and they have written nothing. A worker outlives no
invocation: when its parent dies (even by SIGKILL), the pipe to it closes, and the worker ends its trial as
a Ctrl-C would (run KILLED, trial retried on resume), or is killed after ORPHAN_GRACE_SECONDS.
"""

from __future__ import annotations

import _thread
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from common.startup import imports_without_gc, prepare_exit

ORPHAN_GRACE_SECONDS = 60  # how long a worker whose invocation died may take to end its trial cleanly


class WarmWorkers:
    """`n` spawned processes, each importing the study runner and waiting for one job."""

    def __init__(self, n: int) -> None:
        spawn = mp.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs = []
        self._started = self._joined = False
        for _ in range(n):
            ours, theirs = spawn.Pipe()
            proc = spawn.Process(target=_serve, args=(theirs,))
            proc.start()
            theirs.close()
            self._pipes.append(ours)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._procs)

    def start(self, ctx: Any, threads: int) -> None:
        """Hand every worker the study: worker numbers 1 … n (0 is the parent's own)."""
        for number, pipe in enumerate(self._pipes, start=1):
            pipe.send((ctx, number, threads))
        self._started = True

    def join(self) -> None:
        """Wait for the workers to finish the study; stop those never given it (the parent stopped early)."""
        if self._joined:
            return
        self._joined = True
        for pipe, proc in zip(self._pipes, self._procs):
            if not self._started:
                pipe.close()
                proc.terminate()  # still importing or waiting: nothing written yet
            proc.join()
            pipe.close()  # after the join: a worker takes a closed pipe for its invocation's death


def _serve(pipe: Connection) -> None:
    # The run `mlflow run` made for the entry point is the parent's (attach_parent takes it): a worker
    # that inherited MLFLOW_RUN_ID would have its first trial's start_run take that run over.
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        with imports_without_gc():
            from studies.trials import work_in_subprocess  # the slow part, done while the parent sets up

        job = pipe.recv()
    except (EOFError, KeyboardInterrupt):
        return
    if job is not None:
        threading.Thread(target=_end_with_parent, args=(pipe,), name="parent-watch", daemon=True).start()
        work_in_subprocess(*job)
    prepare_exit()  # the parent waits for this process to end


def _end_with_parent(pipe: Connection) -> None:
    """Wait for the parent's end of the pipe to close (it sends nothing more), then stop this worker."""
    try:
        pipe.recv()
    except (EOFError, OSError):
        pass
    _thread.interrupt_main()  # as Ctrl-C: the trial ends, its run KILLED with its statistics
    time.sleep(ORPHAN_GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)  # stuck: the next invocation closes what is left (common/liveness.py)
