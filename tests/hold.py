"""Helpers for tests that kill or interrupt real processes mid-run, in a fixed order.

See tests/hold_site/sitecustomize.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_PATH = str(Path(__file__).resolve().parent / "hold_site")


def hold_env(folder: Path, workers: int = 0) -> dict[str, str]:
    """Environment entries that make every training run of a subprocess wait at its first step (see sitecustomize)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join([HOLD_PATH, root]), "GPL_TEST_HOLD_DIR": str(folder)}
    if workers:
        env["GPL_TEST_HOLD_WORKERS"] = str(workers)
    return env


def started(folder: Path) -> dict[int, str]:
    """pid → run id of every run that reached its first step and is held."""
    found = {}
    for marker in folder.glob("started-*"):
        _, pid, run_id = marker.name.split("-", 2)
        found[int(pid)] = run_id
    return found


def wait_for_started(folder: Path, n: int, alive=lambda: True, timeout: float = 600) -> dict[int, str]:
    """Until runs of `n` distinct processes are held (pid → run id); `alive()` False or the timeout fails the test."""
    deadline = time.monotonic() + timeout
    while len(found := started(folder)) < n:
        assert alive(), "the process ended before its runs started"
        assert time.monotonic() < deadline, f"{len(found)} of {n} runs started in {timeout} s"
        time.sleep(0.1)
    return found


def wait_until_gone(pid: int, timeout: float = 120) -> bool:
    """Whether process `pid` has ended (a zombie counts as ended) within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False
