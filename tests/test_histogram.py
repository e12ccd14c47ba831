"""Histograms of log10|g| against numpy.histogram on the same data, zeros, subnormals, inf and NaN included."""

from __future__ import annotations

import numpy as np
import torch

from gradprobe import definitions as D
from gradprobe import histogram as H
from gradprobe import keys as K


def _numpy_counts(g: np.ndarray) -> list[float]:
    """One layer's row computed independently: numpy.histogram on |g| with the edges' float32 powers of ten."""
    a = np.abs(g.astype(np.float32).ravel())
    finite = a[np.isfinite(a)]
    nonzero = finite[finite != 0]
    powers = (10.0 ** np.asarray(H.EDGES, dtype=np.float64)).astype(np.float32)
    # [0, first) is `under`, the interior bins, [last, max float32] is `over` (numpy closes only its last bin).
    bins = np.concatenate([[0.0], powers, [np.finfo(np.float32).max]]).astype(np.float32)
    counts, _ = np.histogram(nonzero, bins=bins)
    return [*counts.tolist(), int((finite == 0).sum()), int((~np.isfinite(a)).sum())]


def _awkward(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-40, 14, shape)).astype(np.float32)
    flat = g.reshape(-1)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e-40, 1e10, 9.999e9, 3.0e-31, 1.0]
    flat[: len(specials)] = np.asarray(specials, dtype=np.float32)
    return g


def test_counts_equal_numpy_histogram_per_layer() -> None:
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (64,), (3, 4, 5), (7, 5), (1,)]  # same-shaped layers too: counted in the same pass
    grads = [_awkward(rng, s) if s != (1,) else np.zeros(s, np.float32) for s in shapes]
    got = H.histograms([torch.from_numpy(g) for g in grads])
    assert got.shape == (len(grads), len(H.STATS)) and got.dtype == torch.float64
    for row, g in zip(got.tolist(), grads):
        assert row == _numpy_counts(g)
        assert sum(row) == g.size


def test_values_at_and_one_ulp_beside_every_edge() -> None:
    """Each edge's float32 power of ten, the next float32 below and above it, the extremes, NaNs with any payload,
    either sign: one layer per value."""
    powers = (10.0 ** np.asarray(H.EDGES, dtype=np.float64)).astype(np.float32)
    below = np.nextafter(powers, np.float32(0))
    above = np.nextafter(powers, np.float32(np.inf))
    tiny, huge = np.finfo(np.float32).smallest_subnormal, np.finfo(np.float32).max
    nans = np.asarray([0x7F800001, 0x7FC00000, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)  # payloads, all bits
    extremes = np.asarray([tiny, huge, np.inf], dtype=np.float32)
    values = np.concatenate([powers, below, above, extremes, nans])  # float32 throughout: the NaNs keep their bits
    assert values.dtype == np.float32 and values[-1:].view(np.uint32)[0] == 0x7FFFFFFF
    values = np.concatenate([values, -values])
    got = H.histograms([torch.from_numpy(values[i : i + 1]) for i in range(values.size)])
    for row, v in zip(got.tolist(), values):
        assert row == _numpy_counts(v.reshape(1)), v


def test_the_gradients_keep_their_signs() -> None:
    """|g| is taken on a copy: a single layer's gradient (or one already float32) is never changed in place."""
    for grads in ([torch.tensor([-2.0, -0.0, -float("inf"), 3e-5])], [torch.full((3, 2), -1e-3), torch.tensor([-7.0])]):
        given = [g.clone() for g in grads]
        H.histograms(grads)
        assert all(torch.equal(g.view(torch.int32), k.view(torch.int32)) for g, k in zip(grads, given))


def test_bins_read_as_log10_of_the_magnitude() -> None:
    """Away from the edges, a value lands in the bin whose lower edge is floor(2·log10|g|)/2 (a closed form)."""
    values = np.asarray([3e-7, -4.2e-3, 0.7, 5.5e2, -2e-25, 8e8], dtype=np.float32)
    row = H.histograms([torch.from_numpy(values)])[0].tolist()
    for v in values:
        edge = np.floor(2 * np.log10(abs(float(v)))) / 2
        assert row[H.STATS.index(f"b{edge:.1f}")] == 1
    assert sum(row) == len(values)


def test_stat_names_and_keys_come_from_the_definition() -> None:
    assert H.STATS == D.HIST.stats and H.STATS[0] == K.HIST_UNDER
    assert H.STATS[-3:] == (K.HIST_OVER, K.HIST_ZEROS, K.HIST_NONFINITE)
    assert H.STATS[1] == "b-30.0" and H.STATS[-4] == "b9.5" and K.hist_edge("b-30.0") == -30.0
    assert [K.hist_edge(s) for s in H.STATS[1:-3]] == list(H.EDGES[:-1])
    keys = K.part_keys(K.HIST, H.STATS, ("encoder.layers.0.linear1", "out"))
    assert keys[0] == "hist/under/encoder.layers.0.linear1" and keys[-1] == "hist/nonfinite/out"
    assert all(K.parse(k)[0] == K.HIST and not K.browsable(k) for k in keys)
    assert K.parse("hist/b-2.5/encoder.layers.0.linear1") == (K.HIST, "encoder.layers.0.linear1", "b-2.5")
    assert K.browsable(K.key("grad", "L000", "nonfinite"))


def test_no_gradients_no_rows() -> None:
    assert H.histograms([]).shape == (0, len(H.STATS))


def test_speed_benchmark_runs_both_binnings_on_the_same_counts(capsys) -> None:
    from benchmarks import histogram_speed

    assert histogram_speed.main(["--layers", "3", "--width", "16", "--repeats", "1"]) == 0  # asserts they agree
    assert "typical" in capsys.readouterr().out
