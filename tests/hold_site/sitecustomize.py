"""Test-only: hold every training run at its first recorded step, so kill and worker tests do not race.

Put this folder on PYTHONPATH of a subprocess (tests/hold.py does) and set GPL_TEST_HOLD_DIR. At its first
recorded step, each run writes `started-<pid>-<run id>` there, then waits: until a file `release` appears,
or, with GPL_TEST_HOLD_WORKERS=N, until runs of N distinct processes have started. A test waits for the
markers, then kills, interrupts or releases: the order no longer depends on which process is faster.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

TARGET = "gradprobe.recorder"


def _held(folder: Path) -> bool:
    workers = int(os.environ.get("GPL_TEST_HOLD_WORKERS") or 0)
    if workers:
        return len({p.name.split("-")[1] for p in folder.glob("started-*")}) < workers
    return not (folder / "release").exists()


def _patch(module) -> None:
    folder = Path(os.environ["GPL_TEST_HOLD_DIR"])
    real = module.Recorder.record

    def record(self, step, keys, values):
        real(self, step, keys, values)
        marker = folder / f"started-{os.getpid()}-{self.run_id}"
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
        while _held(folder):
            time.sleep(0.05)

    module.Recorder.record = record


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("GPL_TEST_HOLD_DIR"):
    sys.meta_path.insert(0, _Finder())
