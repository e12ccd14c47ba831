"""What a logging step's log10|g| histograms cost: the binning before (bucketize) and now (binade tables).

    python -m benchmarks.histogram_speed [--layers 20] [--width 256] [--repeats 30] [--threads 1]

Both run in this process on the same gradients, interleaved (before, now, before, now, …): `layers` tensors
of width × width, "typical" N(0, 1e-3²) like an MLP's gradients, and "wide": N(0, 1) times 10**U(-35, 12),
so that every bin, zeros, ±inf and NaN occur. Prints the median milliseconds per call of each and their
ratio, after checking that both give the same counts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from gradprobe import histogram as H


def bucketize_histograms(grads: list[Tensor]) -> Tensor:
    """The binning before: a binary search of |g| among the edges' powers of ten, masks, one bincount."""
    device = grads[0].device
    flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in grads]).abs_()
    column = torch.bucketize(flat, H.edge_powers().to(device), right=True)
    column = torch.where(flat == 0, H.ZEROS, column)
    column = torch.where(torch.isfinite(flat), column, H.NONFINITE)
    sizes = torch.tensor([g.numel() for g in grads], device=device)
    row_start = torch.repeat_interleave(torch.arange(len(grads), device=device) * H.N_BINS, sizes)
    counts = torch.bincount(column + row_start, minlength=len(grads) * H.N_BINS)
    return counts.reshape(len(grads), H.N_BINS).to(torch.float64)


def gradients(layers: int, width: int, wide: bool) -> list[Tensor]:
    """Typical gradients, or gradients spread over every bin with zeros and non-finite values (`wide`)."""
    generator = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(layers):
        exponent = torch.empty(width, width).uniform_(-35, 12, generator=generator) if wide else -3.0
        grads.append(torch.randn(width, width, generator=generator) * 10.0**exponent)
    if wide:
        grads[0].view(-1)[:4] = torch.tensor([0.0, float("nan"), float("inf"), -float("inf")])
    return grads


def _seconds(function, grads: list[Tensor]) -> float:
    started = time.perf_counter()
    function(grads)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Measure both binnings side by side and print their medians and ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.layers} layers of {args.width}x{args.width}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'gradients':10} {'before (bucketize) ms':>22} {'now (binade tables) ms':>23} {'speed-up':>9}")
    for name, wide in (("typical", False), ("wide", True)):
        grads = gradients(args.layers, args.width, wide)
        assert torch.equal(bucketize_histograms(grads), H.histograms(grads)), "the two binnings disagree"
        before, now = [], []
        for _ in range(args.repeats):
            before.append(_seconds(bucketize_histograms, grads))
            now.append(_seconds(H.histograms, grads))
        b, n = statistics.median(before) * 1e3, statistics.median(now) * 1e3
        print(f"{name:10} {b:22.2f} {n:23.2f} {b / n:8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
