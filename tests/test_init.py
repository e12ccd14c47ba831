"""Every init scheme gives the variance its formula states (models/init.py docstring), per weight and per gate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.init import INITS, initialize

GAINS = [1.0, 2.0]
REL_TOL = 0.05
LSTM_IN, LSTM_H = 64, 256


class Zoo(nn.Module):
    """One large weight of each kind the schemes must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(256, 512)  # weight (512, 256): fan_in 256, fan_out 512
        self.conv = nn.Conv2d(32, 64, 5)  # weight (64, 32, 5, 5): fan_in 800, fan_out 1600
        self.lstm = nn.LSTM(LSTM_IN, LSTM_H)  # weight_hh (4·256, 256), weight_ih (4·256, 64)


def _fans(w: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(w.shape[2:])
    return w.shape[1] * receptive, w.shape[0] * receptive


def expected_variance(scheme: str, fan_in: int, fan_out: int, gain: float) -> float:
    """The docstring's formulas."""
    if scheme.startswith("xavier"):
        return gain**2 * 2 / (fan_in + fan_out)
    if scheme.startswith("kaiming"):
        return gain**2 * 2 / fan_in
    if scheme in ("normal", "identity"):  # identity falls back to `normal` on non-square matrices
        return gain**2 / fan_in
    raise ValueError(scheme)


def _weights(zoo: Zoo) -> dict[str, torch.Tensor]:
    """Every weight the variance formula applies to, LSTM matrices split into their four gate blocks."""
    out = {"linear": zoo.linear.weight, "conv": zoo.conv.weight}
    for name in ("weight_hh_l0", "weight_ih_l0"):
        for gate, block in zip("ifgo", getattr(zoo.lstm, name).split(LSTM_H, dim=0)):
            out[f"lstm.{name}[{gate}]"] = block
    return out


VARIANCE_SCHEMES = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal"]


@pytest.mark.parametrize("gain", GAINS)
@pytest.mark.parametrize("scheme", VARIANCE_SCHEMES)
def test_variance_matches_the_formula(scheme: str, gain: float) -> None:
    torch.manual_seed(0)
    zoo = Zoo()
    initialize(zoo, scheme, gain)
    for name, w in _weights(zoo).items():
        fan_in, fan_out = _fans(w)
        var = expected_variance(scheme, fan_in, fan_out, gain)
        got = w.detach().double().var(correction=0).item()
        assert got == pytest.approx(var, rel=REL_TOL), f"{scheme} gain {gain}: {name}"
        assert abs(w.detach().double().mean().item()) < 0.05 * math.sqrt(var)
        if scheme.endswith("uniform"):  # U(−b, b) with b = √(3·Var)
            bound = math.sqrt(3 * var)
            assert w.abs().max().item() <= bound * (1 + 1e-5)
            assert w.abs().max().item() >= 0.99 * bound


def test_schemes_under_test_cover_the_registry() -> None:
    assert set(INITS) == set(VARIANCE_SCHEMES) | {"orthogonal", "identity", "torch_default"}


@pytest.mark.parametrize("gain", GAINS)
def test_orthogonal_gives_scaled_orthonormal_rows_or_columns(gain: float) -> None:
    torch.manual_seed(0)
    zoo = Zoo()
    initialize(zoo, "orthogonal", gain)
    for name, w in _weights(zoo).items():
        m = w.detach().double().flatten(1)
        gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        eye = torch.eye(gram.shape[0], dtype=torch.float64)
        torch.testing.assert_close(gram, gain**2 * eye, atol=1e-4 * gain**2, rtol=0, msg=name)


@pytest.mark.parametrize("gain", GAINS)
def test_identity_on_square_matrices_normal_on_the_others(gain: float) -> None:
    torch.manual_seed(0)
    zoo = Zoo()
    zoo.square = nn.Linear(128, 128)
    initialize(zoo, "identity", gain)
    assert torch.equal(zoo.square.weight, gain * torch.eye(128))
    for block in zoo.lstm.weight_hh_l0.split(LSTM_H, dim=0):  # each gate's H×H block
        assert torch.equal(block, gain * torch.eye(LSTM_H))
    w = zoo.linear.weight.detach().double()
    assert w.var(correction=0).item() == pytest.approx(gain**2 / 256, rel=REL_TOL)


@pytest.mark.parametrize("gain", GAINS)
def test_torch_default_scales_pytorch_init_and_keeps_biases(gain: float) -> None:
    torch.manual_seed(0)
    zoo = Zoo()
    before = {n: p.detach().clone() for n, p in zoo.named_parameters()}
    initialize(zoo, "torch_default", gain)
    for name, p in zoo.named_parameters():
        if "bias" in name:
            assert torch.equal(p, before[name]), name
            assert p.abs().sum() > 0
        else:
            torch.testing.assert_close(p.detach(), gain * before[name], rtol=1e-6, atol=0, msg=name)
    # PyTorch's own Linear init is U(−1/√fan_in, 1/√fan_in): Var = 1/(3·fan_in).
    assert zoo.linear.weight.detach().double().var().item() == pytest.approx(gain**2 / (3 * 256), rel=REL_TOL)


@pytest.mark.parametrize("scheme", sorted(set(INITS) - {"torch_default"}))
def test_biases_are_zeroed(scheme: str) -> None:
    zoo = Zoo()
    initialize(zoo, scheme, 1.0)
    biases = {n: p for n, p in zoo.named_parameters() if "bias" in n}
    assert set(biases) == {"linear.bias", "conv.bias", "lstm.bias_ih_l0", "lstm.bias_hh_l0"}
    for name, b in biases.items():
        assert torch.count_nonzero(b) == 0, name


def test_norm_layers_are_untouched() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.BatchNorm1d(8))
    initialize(net, "normal", 2.0)
    assert torch.equal(net[1].weight, torch.ones(8)) and torch.equal(net[1].bias, torch.zeros(8))
    assert torch.equal(net[2].weight, torch.ones(8))
