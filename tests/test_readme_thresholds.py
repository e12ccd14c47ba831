"""Every threshold the README states is the one the code uses, to the precision the README prints it.

A number printed without "≈" or "~" must be the code's value exactly; one printed with it, the code's value
rounded to the digits shown. The code's saturation thresholds are found by bisection on its own rule
(`gradprobe.activations.saturation`), not from a formula.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch

from analysis import theory
from gradprobe import stats
from gradprobe.activations import ACTIVATIONS, LEAKY_SLOPE, SATURATION_SHARE, saturation

ROOT = Path(__file__).resolve().parents[1]
# The README and the documentation it links (docs/): the user's whole statement of the thresholds.
README = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def _stated(pattern: str) -> tuple[str, ...]:
    """The groups of the README's one match of `pattern` (a stated threshold that vanished fails here)."""
    found = re.findall(pattern, README)
    assert len(found) >= 1, f"the README no longer states {pattern!r}"
    assert len(set(found)) == 1, f"the README states {pattern!r} differently in places: {found}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def _agrees(printed: str, value: float, approximate: bool) -> bool:
    """`printed` is `value` exactly, or (approximate) `value` rounded to as many significant digits as printed."""
    if not approximate:
        return math.isclose(float(printed), value, rel_tol=1e-12)
    digits = len(re.sub(r"^0\.0*|\.|e.*$", "", printed.lstrip("0.")) or "0")
    return float(f"{value:.{digits - 1}e}") == float(printed)


def _saturated(name: str, a: float) -> bool:
    return saturation(name, torch.tensor([a], dtype=torch.float64)).item() == 1.0


def _edge(name: str, low: float, high: float) -> float:
    """Where the code's saturation rule flips between low and high (one side saturated, the other not)."""
    side = _saturated(name, low)
    assert _saturated(name, high) != side
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if _saturated(name, mid) == side else (low, mid)
    return (low + high) / 2


def test_the_saturation_share_is_the_code_s() -> None:
    for pattern in (
        r"φ′\(z\) is below (\d+) % of its maximum",
        r"σ′ < (\d+) % of max",
        r"φ′ below (\d+) % of its maximum",
    ):
        (share,) = _stated(pattern)
        assert _agrees(share, 100 * SATURATION_SHARE, approximate=False), pattern


def test_sigmoid_thresholds() -> None:
    below, above = _stated(r"sigmoid below ≈(0\.\d+) or above ≈(0\.\d+)")
    edge = _edge("sigmoid", 1e-6, 0.4)
    assert _agrees(below, edge, approximate=True) and _agrees(above, 1 - edge, approximate=True)
    assert _edge("sigmoid", 0.6, 1 - 1e-6) == pytest.approx(1 - edge, abs=1e-9)  # symmetric
    (product,) = _stated(r"a\(1 − a\) < (0\.\d+)")
    assert _agrees(product, SATURATION_SHARE * ACTIVATIONS["sigmoid"].max_derivative, approximate=False)


def test_tanh_threshold() -> None:
    radicand, value = _stated(r"tanh \\\|a\\\| > √(0\.\d+) ≈ (0\.\d+)")
    edge = _edge("tanh", 0.5, 1 - 1e-9)
    assert math.isclose(float(radicand), edge**2, rel_tol=1e-9)  # exact but for the bisection's last bits
    assert _agrees(value, edge, approximate=True)


def test_leaky_relu_saturates_on_its_negative_side() -> None:
    assert "leaky ReLU on its negative side" in README
    assert _saturated("leaky_relu", -1.0) and not _saturated("leaky_relu", 1.0) and LEAKY_SLOPE < SATURATION_SHARE


def test_the_divergence_limit_on_a_norm() -> None:
    (limit,) = _stated(r"L2 norm is beyond ~(\d\.\d+e\d+)")
    assert _agrees(limit, stats.LARGEST_NORM, approximate=True)


def test_the_healthy_band_of_the_verdict() -> None:
    (band,) = _stated(r"healthy within ±(\d+) % of 1")
    assert _agrees(band, 100 * inspect.signature(theory.verdict).parameters["tolerance"].default, approximate=False)
