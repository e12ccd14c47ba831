"""MLproject's train and main entry points mirror RunConfig: same parameters, same defaults, every flag passed."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.config import RunConfig, field_names
from pipelines.train import config_from_args

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["train", "main"]


def _entry(name: str) -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][name]


def test_project_uses_the_conda_env_file() -> None:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml" and (ROOT / "conda.yaml").exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_parameters_are_the_run_config_fields_with_their_defaults(entry: str) -> None:
    params = _entry(entry)["parameters"]
    assert list(params) == field_names()
    for f in dataclasses.fields(RunConfig):
        spec = params[f.name]
        if f.type == "float":
            assert spec["type"] == "float", f.name
            assert float(spec["default"]) == f.default, f.name
        else:
            assert str(spec["default"]) == str(f.default), f.name


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_command_passes_every_parameter_as_its_flag(entry: str) -> None:
    tokens = shlex.split(_entry(entry)["command"])
    assert tokens[:3] == ["python", "-m", "pipelines.train"]
    pairs = tokens[3:]
    assert len(pairs) % 2 == 0
    flags = dict(zip(pairs[::2], pairs[1::2]))
    assert len(flags) == len(pairs) // 2  # no flag twice
    assert flags == {"--" + name.replace("_", "-"): "{" + name + "}" for name in field_names()}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_command_with_the_defaults_filled_in_makes_the_default_config(entry: str) -> None:
    spec = _entry(entry)
    command = spec["command"].format(**{name: p["default"] for name, p in spec["parameters"].items()})
    assert config_from_args(shlex.split(command)[3:]) == RunConfig()
    changed = spec["command"].format(
        **{**{n: p["default"] for n, p in spec["parameters"].items()}, "depth": 3, "lr": 0.5}
    )
    cfg = config_from_args(shlex.split(changed)[3:])
    assert (cfg.depth, cfg.lr) == (3, 0.5)
