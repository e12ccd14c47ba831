"""The `gradcheck` entry point passes on the pipeline as it is, and fails when a gradient is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import Tensor, nn

from models.registry import list_models
from oracles import gradcheck
from oracles import reference as ref
from pipelines.config import RunConfig


@pytest.mark.slow
def test_every_check_passes_and_covers_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert gradcheck.main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    checks, summary = lines[:-1], lines[-1]
    assert checks and all(line.endswith("PASS") for line in checks)
    assert summary == f"{len(checks)} checks, 0 failed"
    names = [line.split()[0] for line in checks]
    for family in list_models():
        assert f"model/{family}-none/input" in names and f"model/{family}-none/params" in names, family
    assert {name.split("/")[0] for name in names} == {"model", "probe", "reference"}


class WrongTanh(torch.autograd.Function):
    """tanh whose backward is 1 − y instead of 1 − y², a plausible slip, or the right one."""

    @staticmethod
    def forward(ctx, x: Tensor, wrong: bool) -> Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        ctx.wrong = wrong
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * ((1 - y) if ctx.wrong else (1 - y * y)), None


class HandTanhNet(nn.Module):
    """Linear → custom tanh → Linear."""

    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.wrong = wrong
        self.hidden, self.readout = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(WrongTanh.apply(self.hidden(x), self.wrong))


@pytest.mark.parametrize("wrong", [False, True])
def test_a_wrong_backward_is_reported_as_fail(
    wrong: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    case = gradcheck.ModelCase("handtanh", HandTanhNet(wrong).double(), torch.randn(5, 3, dtype=torch.float64))
    monkeypatch.setattr(gradcheck, "model_cases", lambda: [case])
    assert gradcheck.main(["--only", "models"]) == (1 if wrong else 0)
    lines = capsys.readouterr().out.strip().splitlines()
    verdict = "FAIL" if wrong else "PASS"
    assert [(line.split()[0], line.split()[-1]) for line in lines[:-1]] == [
        ("model/handtanh/input", verdict),
        ("model/handtanh/params", verdict),
    ]
    assert lines[-1].startswith(f"2 checks, {2 if wrong else 0} failed")


def test_a_corrupted_reference_fails_its_finite_difference_checks_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(ref.ACTIVATIONS, "tanh", (np.tanh, lambda z, a: 1 - a))  # φ′ of tanh, wrong
    assert gradcheck.main(["--only", "reference"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()[:-1]
    verdicts = {line.split()[0]: line.split()[-1] for line in lines}
    assert len(verdicts) == len(lines) > 4
    for name, verdict in verdicts.items():
        assert verdict == ("FAIL" if "/tanh-" in name else "PASS"), name


@pytest.fixture(scope="module")
def tanh_step() -> tuple:
    """One real probe step (Lightning's Trainer, about a second), shared by the module: (cfg, records, net, batch)."""
    cfg = RunConfig(**{**gradcheck.PROBE_BASE, "activation": "tanh", "max_steps": 1, "log_every": 1})
    return (cfg, *gradcheck.probe_step(cfg))


@pytest.mark.parametrize("key", ["grad/l2/L000", "grad/mean/L001", "backprop/l2/L000", "act/std/L001", "train/loss"])
def test_the_probe_comparison_catches_one_wrong_statistic(key: str, tanh_step: tuple) -> None:
    cfg, records, net, batch = tanh_step
    assert gradcheck.compare_probe("tanh", cfg, records, net, batch).passed
    wrong = {**records, key: records[key] * (1 + 1e-3)}
    assert not gradcheck.compare_probe("tanh", cfg, wrong, net, batch).passed
    missing = {k: v for k, v in records.items() if k != key}
    assert not gradcheck.compare_probe("tanh", cfg, missing, net, batch).passed


@pytest.mark.parametrize("corrupt", [False, True])
def test_under_mlflow_run_the_table_and_counts_go_to_the_run(
    corrupt: bool, tracking: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(tracking)
    run_id = client.create_run("0").info.run_id  # what `mlflow run` does before starting the entry point
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    if corrupt:
        monkeypatch.setitem(ref.ACTIVATIONS, "relu", (lambda z: np.maximum(z, 0), lambda z, a: np.ones_like(z)))
    assert gradcheck.main(["--only", "reference"]) == (1 if corrupt else 0)
    printed = capsys.readouterr().out.strip().splitlines()[:-1]
    run = client.get_run(run_id)
    failed = sum(line.endswith("FAIL") for line in printed)
    assert (failed > 0) == corrupt
    assert run.info.status == ("FAILED" if corrupt else "FINISHED")
    assert run.data.metrics == {"gradcheck/checks": len(printed), "gradcheck/failed": failed}
    table = Path(client.download_artifacts(run_id, "gradcheck/checks.csv")).read_text().splitlines()
    assert table[0] == "name,max_abs,max_rel,tol,passed"
    assert [row.split(",")[0] for row in table[1:]] == [line.split()[0] for line in printed]
    assert [row.split(",")[-1] for row in table[1:]] == [str(line.endswith("PASS")) for line in printed]
