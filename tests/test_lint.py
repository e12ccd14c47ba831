"""`make lint` in the test suite, so CI (running `make test`) checks what `make lint` checks: ruff rules and format."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_commands() -> list[list[str]]:
    """The ruff commands of the Makefile's `lint` target, as argument lists."""
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target, "the Makefile has no lint target"
    return [line.split("$(RUN)")[1].split() for line in target.group(1).splitlines()]


def test_the_lint_target_runs_ruff_check_and_format_check() -> None:
    assert _lint_commands() == [["ruff", "check", "."], ["ruff", "format", "--check", "."]]


@pytest.mark.parametrize("command", _lint_commands(), ids=lambda c: " ".join(c))
def test_lint_passes(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
