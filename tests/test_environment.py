"""requirements.txt and conda.yaml describe the same pinned environment, and it is the one installed."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\[\]-]*)\s*==\s*([^\s;#]+)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str], source: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{source}: {line!r} is not an exact pin (name==version)"
        name = _canonical(match.group(1))
        assert name not in pins, f"{source}: {name} listed twice"
        pins[name] = match.group(2)
    return pins


def requirements() -> dict[str, str]:
    return _pins((ROOT / "requirements.txt").read_text().splitlines(), "requirements.txt")


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "conda.yaml needs one pip: section"
    return _pins(pip[0], "conda.yaml")


def test_requirements_and_conda_env_pin_the_same_packages() -> None:
    assert requirements() == conda_pins()


def test_torch_is_pinned_to_the_cpu_release() -> None:
    assert requirements()["torch"] == "2.13.0"


def test_conda_env_has_python_311_and_pip() -> None:
    deps = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    plain = [d for d in deps if isinstance(d, str)]
    assert "python=3.11" in plain and "pip" in plain


def test_the_core_stack_is_pinned() -> None:
    assert {"torch", "pytorch-lightning", "mlflow", "optuna", "pandas", "pyarrow", "numpy", "pytest"} <= set(
        requirements()
    )
    assert "lightning" not in requirements()  # one Lightning package only (STYLE.md)


@pytest.mark.parametrize("name, version", sorted(requirements().items()))
def test_installed_versions_match_the_pins(name: str, version: str) -> None:
    try:
        installed = metadata.version(re.sub(r"\[.*\]", "", name))
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is pinned but not installed")
    assert installed.split("+", 1)[0] == version  # a local label such as +cpu is the same release
