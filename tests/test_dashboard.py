"""`make dashboard`: optuna-dashboard opens the default journal storage and serves its studies on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from servers import HOST, free_port

from studies.storage import DEFAULT_STORAGE, open_storage

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"


def test_make_dashboard_serves_the_default_storage() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^dashboard:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe and recipe.group(1).split()[-1] == DEFAULT_STORAGE and "--host 127.0.0.1" in recipe.group(1)


@pytest.mark.slow
@pytest.mark.skipif(not DASHBOARD.exists(), reason="optuna-dashboard is not installed (requirements.txt)")
def test_dashboard_lists_a_journal_study_and_its_trials(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="seen", storage=open_storage(str(tmp_path / DEFAULT_STORAGE)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    port = free_port()
    cmd = [str(DASHBOARD), "--host", HOST, "--port", str(port), "--quiet", DEFAULT_STORAGE]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{HOST}:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
            time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in studies] == ["seen"]
        with urllib.request.urlopen(
            f"http://{HOST}:{port}/api/studies/{studies[0]['study_id']}", timeout=5
        ) as response:
            trials = json.load(response)["trials"]
        assert sorted(t["values"][0] for t in trials) == sorted(t.value for t in study.trials)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
