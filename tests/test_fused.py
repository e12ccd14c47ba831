"""The fused kernels (gradprobe/fused.c) against float64 computations, and stats.py's two paths against each other."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, require_fused

from gradprobe import fused, stats
from gradprobe.activations import ACTIVATIONS, make_activation

# Sizes around the vector width and the threading threshold (fused.c's PARALLEL_FROM = 32768 in all).
SHAPES = [(1,), (7,), (33,), (256, 64), (1000, 3), (256, 256), (100_003,)]


@pytest.fixture(autouse=True)
def _fused_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fused.ENV, raising=False)
    require_fused()


def _tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = [1e-3, 1.0, 30.0, 1e-8, 1.0, 5.0, 0.1]
    offsets = [0.0, 0.5, -3.0, 0.0, 10.0, 0.0, 1e-2]
    return [torch.randn(s, generator=g) * k + b for s, k, b in zip(SHAPES, scales, offsets)]


def _reference_rows(t: torch.Tensor) -> list[float]:
    x = t.double()
    return [
        x.norm().item(),
        x.square().mean().sqrt().item(),
        x.abs().max().item(),
        x.mean().item(),
        x.std(correction=0).item(),
    ]


def test_grad_rows_are_the_float64_statistics_of_the_float32_values() -> None:
    tensors = _tensors()
    rows, shaky = fused.grad_rows(tensors, stats.ONE_PASS_LIMIT)
    expected = torch.tensor([_reference_rows(t) for t in tensors], dtype=torch.float32)
    one_pass = [i for i in range(len(tensors)) if i not in shaky]
    torch.testing.assert_close(rows[:, :4], expected[:, :4], rtol=1e-6, atol=0)
    torch.testing.assert_close(rows[one_pass, 4], expected[one_pass, 4], rtol=1e-5, atol=0)
    # Flagged exactly where the mean dominates the spread (offset 10 on a unit spread; one element: std 0).
    assert set(shaky) == {0, 4}
    torch.testing.assert_close(stats.grad_rows(tensors), expected, rtol=1e-5, atol=0)  # the flagged rows in two passes


def test_norms_and_update_ratios() -> None:
    a = _tensors(1)
    b = [torch.randn_like(t) + t for t in a]  # same shapes, the weights "before"
    expected = torch.stack([t.double().square().sum().sqrt() for t in a]).float()
    torch.testing.assert_close(fused.norms(a), expected, rtol=1e-7, atol=0)
    nan = torch.ones(40_000)
    nan[123] = float("nan")
    inf = torch.ones(8)
    inf[3] = float("inf")
    got = fused.norms([nan, torch.full((8,), 1e19), torch.full((8,), 1e18), inf])
    assert torch.isnan(got[0]) and torch.isinf(got[3])
    assert got[1:3].tolist() == pytest.approx([8**0.5 * 1e19, 8**0.5 * 1e18], rel=1e-7)  # squares summed in double
    ratios = fused.update_ratios(a, b)
    expected = torch.stack(
        [(x - y).double().norm() / y.double().norm() for x, y in zip(a, b)]
    ).float()  # x − y in float32
    torch.testing.assert_close(ratios, expected, rtol=1e-6, atol=0)
    kept = [t.clone() for t in b]
    assert torch.equal(fused.update_ratios(a, b, refresh=True), ratios)  # the same numbers, then b holds a
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(kept[-1], b[-1])


@pytest.mark.parametrize("name", sorted(fused.KINDS))
def test_activation_rows_count_the_saturated_units_of_the_definition(name: str) -> None:
    """Mean, std and the share of φ' < 5 % of its maximum, φ' by autograd in float64 from the same z."""
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(s, generator=g) * 3 for s in [(64, 40), (128, 256), (5,)]]
    zs[0][:, :3] = 0.0  # exact zeros (ReLU's boundary)
    outputs = [make_activation(name)(z) for z in zs]
    threshold = 0.05 * ACTIVATIONS[name].max_derivative
    rows, shaky = fused.act_rows(outputs, fused.KINDS[name], threshold, stats.ONE_PASS_LIMIT)
    for i, (row, z, a) in enumerate(zip(rows, zs, outputs)):
        zz = z.double().requires_grad_(True)
        (d,) = torch.autograd.grad(make_activation(name)(zz).sum(), zz)
        assert row[0].item() == pytest.approx(a.double().mean().item(), rel=1e-6, abs=1e-9)
        if i not in shaky:
            assert row[1].item() == pytest.approx(a.double().std(correction=0).item(), rel=1e-5)
        # φ' read off the float32 output can differ from float64 autograd within float32 rounding of the threshold
        near = ((d - threshold).abs() < 1e-5).sum().item()
        assert abs(row[2].item() * a.numel() - (d < threshold).sum().item()) <= near + 1e-3
    if name != "linear":
        assert 0 < rows[:2, 2].min() and rows[:2, 2].max() < 1  # it discriminates
    expected_std = torch.tensor([a.double().std(correction=0).item() for a in outputs], dtype=torch.float32)
    torch.testing.assert_close(stats.layer_activation_stats(name, outputs)[:, 1], expected_std, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_the_thread_count(threads: int) -> None:
    """Each buffer is reduced by one thread in one order: bitwise the same for any number of threads (determinism)."""
    tensors = _tensors(4) * 3
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = fused.grad_rows(tensors, stats.ONE_PASS_LIMIT)[0]
        torch.set_num_threads(threads)
        assert torch.equal(fused.grad_rows(tensors, stats.ONE_PASS_LIMIT)[0], reference)
        assert torch.equal(fused.grad_rows(tensors, stats.ONE_PASS_LIMIT)[0], reference)
    finally:
        torch.set_num_threads(old)


def test_the_stats_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """stats.py's numbers with the kernels and with GPL_FUSED=0, on float32 tensors the kernels take."""
    tensors = _tensors(5)
    relu = [torch.relu(t) for t in tensors]
    after = [t + 1e-3 * torch.randn_like(t) for t in tensors]
    runs = []
    for setting in ("1", "0"):
        monkeypatch.setenv(fused.ENV, setting)
        assert fused.usable(tensors) == (setting == "1")
        runs.append(
            [
                stats.tensor_stats(tensors),
                stats.norms(tensors),
                stats.layer_activation_stats("relu", relu),
                stats.layer_activation_stats("tanh", [torch.tanh(t) for t in tensors]),
                stats.update_ratios(stats.Stacked(tensors).copy_(tensors), after),
            ]
        )
    (grad_f, norms_f, relu_f, tanh_f, upd_f), (grad_e, norms_e, relu_e, tanh_e, upd_e) = runs
    for name in grad_e:
        torch.testing.assert_close(grad_f[name], grad_e[name], rtol=2e-5, atol=1e-30, msg=name)
    torch.testing.assert_close(norms_f, norms_e, rtol=2e-5, atol=0)
    torch.testing.assert_close(relu_f, relu_e, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(tanh_f, tanh_e, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(upd_f, upd_e, rtol=2e-5, atol=0)


def test_what_the_kernels_cannot_take_goes_eager() -> None:
    t = torch.randn(64, 64)
    assert fused.usable([t])
    assert not fused.usable([t.t()])  # not contiguous
    assert not fused.usable([t.double()])
    assert not fused.usable([])
    expected = torch.linalg.vector_norm(t.t()[:, :10])
    assert stats.norms([t.t()[:, :10]]).item() == pytest.approx(expected.item(), rel=1e-6)
    # GELU's φ' needs z: eager, by its definition (φ' below 5 % of its maximum, by autograd here)
    z = t.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z)
    row = stats.layer_activation_stats("gelu", [torch.nn.functional.gelu(t)], [t])[0]
    assert row[2].item() == pytest.approx(
        (d < 0.05 * ACTIVATIONS["gelu"].max_derivative).float().mean().item(), abs=1e-6
    )
    assert 0 < row[2].item() < 1


def test_nonfinite_values_reach_the_record_as_eager_reports_them() -> None:
    """A NaN in a gradient: min/max/absmax NaN as the eager reductions give (the kernels' comparisons skip NaN)."""
    g = torch.randn(300, 200)
    g[7, 9] = float("nan")
    got = stats.tensor_stats([g, torch.ones(10)])
    assert torch.isnan(got["absmax"][0]) and torch.isnan(got["l2"][0]) and got["l2"][1].item() == pytest.approx(10**0.5)
    a = torch.relu(torch.randn(300, 200))
    a[0, 0] = float("inf")
    assert torch.isnan(stats.layer_activation_stats("relu", [a])[0, 1])  # std of an infinite layer: NaN, as eager


def test_a_sum_of_squares_beyond_float32_is_its_true_norm_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A norm whose float32 sum of squares overflows is recorded as it is (the guard compares it with LARGEST_NORM)."""
    g = torch.full((4, 4), 1e19)  # finite entries, ‖g‖² = 1.6e39 > 3.4e38
    small = torch.full((4, 4), 1e18)  # ‖g‖² = 1.6e37: finite
    for setting in ("1", "0"):
        monkeypatch.setenv(fused.ENV, setting)
        got = stats.norms([g, small])
        assert got.tolist() == pytest.approx([4e19, 4e18], rel=1e-6) and got[0].item() > stats.LARGEST_NORM
        assert stats.tensor_stats([g])["l2"][0].item() == pytest.approx(4e19, rel=1e-6)


def test_without_a_compiler_the_eager_path_runs_and_says_so(tmp_path) -> None:
    """CC that fails and a fresh cache: one RuntimeWarning, fused off, the statistics still computed (eager)."""
    script = (
        "import warnings, torch\n"
        "from gradprobe import fused, stats\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(fused.enabled(), stats.norms([torch.ones(9)]).item())\n"
        "print([str(w.message)[:60] for w in caught])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CC": "/bin/false", "GPL_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "False 3.0"
    assert "fused statistics unavailable, using eager" in second
    assert not list((tmp_path / "cache").glob("*.so"))


def test_build_is_cached_per_source_and_flags(tmp_path) -> None:
    first = fused.build("serial", tmp_path)
    assert first.exists() and fused.build("serial", tmp_path) == first
    assert fused.build("openmp", tmp_path) != first
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no temporary build directory left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.enabled()


def test_a_read_only_cache_falls_back_to_a_fresh_private_temporary_folder(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No predictable shared name under /tmp (someone else could make it first): a new 0700 folder, and a warning."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("GPL_CACHE_DIR", str(blocked / "cache"))  # cannot be made
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.warns(RuntimeWarning, match="not used"):
        built = fused.build("serial")
    with pytest.warns(RuntimeWarning, match="not used"):
        again = fused.build("serial")
    assert built.exists() and built.parent.parent == tmp_path / "tmp"
    assert again.parent != built.parent  # a fresh folder each time, not a name another user could guess
    assert built.parent.stat().st_mode & 0o777 == 0o700 and built.parent.stat().st_uid == os.getuid()


def test_workers_building_at_once_share_one_library(tmp_path) -> None:
    """Study workers start together on a fresh machine: each builds, each gets a whole library, one remains."""
    script = (
        "import sys; from pathlib import Path; from gradprobe import fused; "
        "print(fused.build('serial', Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1
    library = Path(paths.pop())
    assert sorted(p.name for p in tmp_path.iterdir()) == [library.name, library.name + ".sha256"]
    inode = library.stat().st_ino
    assert fused.build("serial", tmp_path) == library and library.stat().st_ino == inode  # whole: not rebuilt
    ctypes.CDLL(str(library))  # loads: not a half-written file
