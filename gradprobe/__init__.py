"""gradprobe: per-layer gradient statistics for any PyTorch network, recorded while it trains.

The probe of Gradient Pathology Lab as a library of its own: the statistics (one-pass C kernels on the CPU,
an eager PyTorch path everywhere else), the metric-key contract, the recorders and the diagnosis.
`Probe` is the framework-free engine (a plain training loop calls it around backward and the optimizer
step); `GradientProbe` is the Lightning callback (Lightning is imported only when it is asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprobe.layers import Layer, discover_layers
from gradprobe.probe import Probe, is_logging_step

if TYPE_CHECKING:
    from gradprobe.lightning import GradientProbe

__version__ = "0.9.0"
__all__ = ["GradientProbe", "Layer", "Probe", "discover_layers", "is_logging_step"]


def __getattr__(name: str):
    """`gradprobe.GradientProbe` imports Lightning on first use only."""
    if name == "GradientProbe":
        from gradprobe.lightning import GradientProbe

        return GradientProbe
    raise AttributeError(f"module 'gradprobe' has no attribute {name!r}")
