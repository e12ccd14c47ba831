"""Every statistic of gradprobe/stats.py against a direct computation (torch.linalg, autograd)."""

from __future__ import annotations

import math

import pytest
import torch

from gradprobe import stats
from gradprobe.activations import ACTIVATIONS, make_activation

SATURATION_SHARE = 0.05  # the README's definition: φ' below 5 % of its largest value


def _tensors(dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(64, 32, generator=g, dtype=dtype) * 0.01,
        torch.randn(16, 3, 5, 5, generator=g, dtype=dtype) + 0.5,  # non-zero mean
        -torch.rand(7, generator=g, dtype=dtype) * 100,
        torch.tensor([[3.0]], dtype=dtype),  # one element: std 0
        torch.zeros(4, 4, dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_stats_match_torch(dtype) -> None:
    tensors = _tensors(dtype)
    got = stats.tensor_stats(tensors)
    assert set(got) == {"l2", "rms", "absmax", "mean", "std"}
    expected = {
        "l2": [torch.linalg.norm(t.flatten()) for t in tensors],
        "rms": [t.pow(2).mean().sqrt() for t in tensors],
        "absmax": [t.abs().max() for t in tensors],
        "mean": [t.mean() for t in tensors],
        "std": [t.std(correction=0) for t in tensors],
    }
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, values in expected.items():
        assert got[name].shape == (len(tensors),)
        torch.testing.assert_close(got[name], torch.stack(values), rtol=tol, atol=tol, msg=name)


def test_tensor_stats_on_a_gradient_like_tensor_with_offset() -> None:
    """std stays accurate when |mean| is a few times the spread (rms² − mean² cancels partly)."""
    t = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 1e-3 + 4e-3
    got = stats.tensor_stats([t])
    assert got["std"].item() == pytest.approx(t.double().std(correction=0).item(), rel=1e-3)


def test_nonfinite_counts() -> None:
    a = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0])
    b = torch.ones(3, 3)
    c = torch.full((2,), float("nan"))
    assert stats.nonfinite_counts([a, b, c]).tolist() == [3.0, 0.0, 2.0]


def test_global_norm_is_the_norm_of_everything_concatenated() -> None:
    tensors = _tensors(torch.float64)
    expected = torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))
    torch.testing.assert_close(stats.global_norm(tensors), expected, rtol=1e-12, atol=0)
    assert stats.global_norm([]).item() == 0.0


def _autograd_derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """φ'(z) of the activation module, elementwise, by autograd (not by the module's formula)."""
    z = z.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(make_activation(name)(z).sum(), z)
    return grad


def _max_derivative(name: str) -> float:
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    return _autograd_derivative(name, grid).max().item()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_stats_follow_the_saturation_definition(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    # Pre-activations spread over the saturating and the linear regimes, with some exact zeros.
    z = torch.cat([torch.randn(4000, generator=g, dtype=torch.float64) * 4, torch.zeros(10, dtype=torch.float64)])
    z = z.reshape(-1, 10)
    a = make_activation(name)(z)
    threshold = SATURATION_SHARE * _max_derivative(name)
    expected_sat = (_autograd_derivative(name, z) < threshold).double().mean().item()
    got = stats.activation_stats(name, a, z)
    assert got.shape == (3,)
    assert got[0].item() == pytest.approx(a.mean().item(), abs=1e-12)
    assert got[1].item() == pytest.approx(a.std(correction=0).item(), rel=1e-12)
    assert got[2].item() == pytest.approx(expected_sat, abs=1e-6)  # a float32 share
    if name in ("sigmoid", "tanh", "relu"):  # these can tell saturation from the output alone
        assert stats.activation_stats(name, a)[2].item() == pytest.approx(expected_sat, abs=1e-6)
    if name != "linear":
        assert 0 < expected_sat < 1  # the case discriminates


@pytest.mark.parametrize("name", sorted(n for n, act in ACTIVATIONS.items() if act.binary))
def test_a_binary_derivative_is_exactly_zero_or_one(name: str) -> None:
    """saturation() uses such a derivative as its own indicator: it must be 0 or 1, as autograd's is."""
    z = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(8)), torch.zeros(10), -torch.zeros(10)])
    a = make_activation(name)(z)
    d = ACTIVATIONS[name].derivative(z, a)
    assert ACTIVATIONS[name].max_derivative == 1.0
    assert set(d.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(d, _autograd_derivative(name, z), rtol=0, atol=0)


def test_saturation_by_hand() -> None:
    """A few values checked against the README's wording: tanh near ±1, sigmoid near 0/1, ReLU exactly 0."""
    z = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    # tanh'(z) = 1 − tanh²: 0.00018, 0.42, 1, 0.42, 0.00018 → 2 of 5 below 0.05
    assert stats.activation_stats("tanh", torch.tanh(z), z)[2].item() == pytest.approx(0.4)
    # σ'(z) = σ(1 − σ): 0.0066, 0.197, 0.25, 0.197, 0.0066 → below 0.0125: 2 of 5
    assert stats.activation_stats("sigmoid", torch.sigmoid(z), z)[2].item() == pytest.approx(0.4)
    # ReLU: off for z ≤ 0 → 3 of 5
    assert stats.activation_stats("relu", torch.relu(z), z)[2].item() == pytest.approx(0.6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_layer_activation_stats_batch_layers_by_shape_and_reuse_a_workspace(name: str) -> None:
    """Layers of two shapes, in mixed order, twice through one workspace: each row = that layer alone."""
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(*shape, generator=g, dtype=torch.float64) * 3 for shape in [(8, 5), (8, 3), (8, 5), (8, 5)]]
    outputs = [make_activation(name)(z) for z in zs]
    kept = [a.clone() for a in outputs]
    workspace: dict = {}
    for _ in range(2):
        got = stats.layer_activation_stats(name, outputs, zs, workspace)
        expected = torch.stack([stats.activation_stats(name, a, z) for a, z in zip(kept, zs)])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert all(a.equal(k) for a, k in zip(outputs, kept))  # the statistics overwrite their copy, not the layer's
    (stacked,) = workspace.values()  # one stack for these shapes, reused
    assert len(stacked.groups) == 2  # with one buffer per shape


def test_std_of_activations_is_exact_when_the_mean_dominates() -> None:
    """A saturated sigmoid layer: all outputs near 1, a tiny spread (the one-pass variance would lose it)."""
    z = 4.0 + 0.1 * torch.randn(128, 256, generator=torch.Generator().manual_seed(6))  # a ≈ 0.98 ± 0.002
    a = torch.sigmoid(z)
    got = stats.layer_activation_stats("sigmoid", [a, torch.sigmoid(z[:, :256] * 0)])[:, 1]
    assert got[0].item() == pytest.approx(a.double().std(correction=0).item(), rel=1e-3)
    assert got[1].item() == 0.0  # constant 0.5


def test_saturation_leaves_its_input_alone_unless_allowed() -> None:
    from gradprobe.activations import saturation

    a = torch.relu(torch.randn(100, generator=torch.Generator().manual_seed(7)))
    before = a.clone()
    share = saturation("relu", a)
    assert a.equal(before)
    assert share.item() == pytest.approx((before == 0).float().mean().item())
    assert saturation("relu", a, overwrite=True).item() == share.item()
    assert not a.equal(before)  # used as scratch space


def test_gate_stats() -> None:
    z = torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    gates = torch.sigmoid(z)
    d = _autograd_derivative("sigmoid", z)
    got = stats.gate_stats(gates)
    assert got[0].item() == pytest.approx(gates.mean().item(), abs=1e-12)
    assert got[1].item() == pytest.approx((d < SATURATION_SHARE * 0.25).double().mean().item(), abs=1e-6)


def test_update_ratios() -> None:
    """Weights of two shapes in mixed order, through one reused stack: each ratio = that weight's alone."""
    g = torch.Generator().manual_seed(4)
    before = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(4, 3), (5,), (4, 3), (2, 2, 2)]]
    stacked = stats.Stacked(before)
    for scale in (0.1, 0.01):
        after = [b + scale * torch.randn(b.shape, generator=g, dtype=b.dtype) for b in before]
        expected = [
            torch.linalg.norm((a - b).flatten()) / torch.linalg.norm(b.flatten()) for a, b in zip(after, before)
        ]
        torch.testing.assert_close(
            stats.update_ratios(stacked.copy_(before), after), torch.stack(expected), rtol=1e-12, atol=0
        )
    assert stats.update_ratios(stacked.copy_(before), before).abs().max().item() == 0.0
    assert len(stacked.groups) == 3 and all(r.data_ptr() != b.data_ptr() for r, b in zip(stacked.rows, before))


def test_bptt_summary() -> None:
    norms = torch.tensor([0.5, 0.25, 2.0, 4.0])
    assert stats.bptt_summary(norms).tolist() == [0.5, 4.0, 0.125]
    assert math.isinf(stats.bptt_summary(torch.tensor([1.0, 0.0]))[2].item())


def test_std_is_exact_when_the_mean_dominates_the_spread() -> None:
    """A one-pass rms² − mean² loses the spread in float32; the recorded std must not."""
    g = torch.full((256, 256), 10.0) + 0.01 * torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    got = stats.tensor_stats([g])["std"].item()
    assert got == pytest.approx(g.double().std(correction=0).item(), rel=1e-3)


# -- every norm at every scale (float32 entries from 1e-30 to 1e30), on both statistics paths -------------

SCALES = (1e-30, 1e-24, 1e-19, 1e-12, 1.0, 1e19, 1e25, 1e30)


def _scaled(scale: float, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A float32 tensor of entries of about `scale`, both signs, with a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5) * torch.randn(shape, generator=g).sign() * scale
    ).float()


def _exact(t: torch.Tensor) -> dict[str, float]:
    """l2, rms and population std in float64 from the float32 entries (squares of 1e±30 are exact there)."""
    v = t.double().flatten()
    return {
        "l2": v.square().sum().sqrt().item(),
        "rms": v.square().mean().sqrt().item(),
        "std": (v - v.mean()).square().mean().sqrt().item(),
    }


@pytest.mark.usefixtures("statistics_path")
@pytest.mark.parametrize("scale", SCALES)
def test_every_norm_is_right_from_1e_minus_30_to_1e30(scale: float) -> None:
    """Relative error ≤ 1e-5 for every norm of float32 entries at this scale; a true zero stays 0."""
    tensors = [_scaled(scale, (64, 48), 0), _scaled(scale, (300,), 1), torch.zeros(5, 5)]
    expected = [_exact(t) for t in tensors]
    got = stats.tensor_stats(tensors)
    for i, exact in enumerate(expected):
        for name, value in exact.items():
            assert got[name][i].item() == pytest.approx(value, rel=1e-5, abs=0), (name, i)
    l2 = [e["l2"] for e in expected]
    assert stats.norms(tensors).tolist() == pytest.approx(l2, rel=1e-5, abs=0)
    assert stats.norm(tensors[0]).item() == pytest.approx(l2[0], rel=1e-5, abs=0)
    whole = math.sqrt(sum(x * x for x in l2))  # Python floats: no underflow down to 1e-300
    if whole < stats.LARGEST_NORM:  # beyond, float32 cannot hold the whole norm
        assert stats.global_norm(tensors).item() == pytest.approx(whole, rel=1e-5, abs=0)
    states = torch.stack([_scaled(scale, (8, 6), s) for s in range(5)])  # (T, B, H) state gradients
    per_t = [_exact(h)["l2"] for h in states]
    assert stats.state_norms(states).tolist() == pytest.approx(per_t, rel=1e-5, abs=0)
    rows = stats.layer_activation_stats("linear", [tensors[0], tensors[1] * 0.5 + 1.5 * scale, tensors[2]])
    for i, a in enumerate([tensors[0], tensors[1] * 0.5 + 1.5 * scale, tensors[2]]):
        assert rows[i, 1].item() == pytest.approx(_exact(a)["std"], rel=1e-5, abs=0), i


@pytest.mark.usefixtures("statistics_path")
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20])
def test_update_ratios_of_updates_far_below_and_above_float32_squares(scale: float) -> None:
    """‖ΔW‖/‖W‖ with ΔW (or W) at the extreme scales: the ratio of the float64 norms."""
    before = [_scaled(scale, (32, 16), 2), _scaled(1.0, (16,), 3)]
    after = [before[0] + _scaled(scale * 1e-3, (32, 16), 4), before[1] + _scaled(scale, (16,), 5)]
    expected = [(a.double() - b.double()).norm().item() / b.double().norm().item() for a, b in zip(after, before)]
    got = stats.update_ratios(stats.Stacked(before).copy_(before), after)
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=0)
