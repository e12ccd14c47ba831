"""gradprobe: per-layer gradient statistics for any PyTorch network, recorded while it trains.

The probe of Gradient Pathology Lab as a library of its own: the statistics (one-pass C kernels on the CPU,
an eager PyTorch path everywhere else), the metric-key contract, the recorders and the diagnosis.
"""

__version__ = "0.9.0"
