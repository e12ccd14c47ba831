"""The gradient probe against its peers, on three ordinary networks, in one process.

    python -m benchmarks.peers                     # the full table (~10 min on 2 cores)
    python -m benchmarks.peers --quick             # tiny networks, a few steps: a smoke run (seconds)
    python -m benchmarks.peers --workloads mlp --rounds 5

Workloads (benchmarks/peer_workloads.py): an MLP 20×256, a small Transformer encoder, a ResNet-style CNN
with batch norm. Rows: a plain PyTorch loop; Lightning without the probe (the reference); the probe at
log_every 1 and 10; BackPACK (Variance + SumGradSquared, every step); Cockpit ("economy", every step);
wandb.watch(log="all", log_freq=10) offline; TensorBoard histograms of every parameter and gradient every
10 steps; Lightning's grad_norm every step through MLFlowLogger. The peers come from
benchmarks/requirements-peers.txt (`make bench`); a row whose package is missing, or whose tool cannot
handle a workload, says so in the table instead of a time.

Method: every row trains the same network (same seed) on the same batches with plain SGD; `--warmup`
steps are not timed, then `--steps` are. The rows run interleaved (A B C … A B C …) for `--rounds` rounds
in this one process, and the table shows medians over rounds: the step time, and the ratio to Lightning
measured within each round ("paired"), so the machine's drift hits all rows alike. Times are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks import peer_rows as R
from benchmarks import peer_workloads as W

RESULTS = Path(__file__).resolve().parent / "results" / "peers.json"
TARGET = 1.05  # the probe at log_every=10 against Lightning without it
STEPS = {"mlp": 60, "transformer": 20, "resnet": 20}  # timed steps per run: multiples of 10 (one log_every)

ROWS = [
    R.Row("plain", "plain PyTorch loop", (), R.plain),
    R.Row("lightning", "Lightning, no probe", (), R.lightning),
    R.Row("backpack", "BackPACK Variance+SumGradSquared, every step", ("backpack",), R.backpack_row, "probe1"),
    R.Row(
        "cockpit",
        "Cockpit economy, every step",
        ("cockpit", "backpack"),
        R.cockpit_row,
        "probe1",
        max_steps=10,
        max_rounds=1,
    ),
    R.Row("wandb", "wandb.watch(log=all, log_freq=10), offline", ("wandb",), R.wandb_row, "probe10"),
    R.Row("tensorboard", "TensorBoard histograms every 10 steps", ("tensorboard",), R.tensorboard_row, "probe10"),
    R.Row("grad_norm", "grad_norm + MLFlowLogger, every step", ("mlflow",), R.grad_norm_row, "probe1"),
]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the tools' progress output, which would otherwise bury the table; restored afterwards."""
    loggers = [
        logging.getLogger(name)
        for name in ("mlflow", "alembic", "pytorch_lightning", "lightning.pytorch", "lightning_fabric", "wandb")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_workload(workload: W.Workload, rows: list[R.Row], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every row of one workload, interleaved over the rounds; per row its runs or why it cannot run."""
    plan = R.Plan(args.warmup, args.steps or STEPS[workload.name], tmp)
    runs: dict[str, list[R.Outcome]] = {row.key: [] for row in rows}
    cannot: dict[str, str] = {}
    for row in rows:
        if row.missing():
            cannot[row.key] = f"not installed: {', '.join(row.missing())} (benchmarks/requirements-peers.txt)"
    for r in range(args.rounds):
        for row in rows:
            if row.key in cannot or r >= (row.max_rounds or args.rounds):
                continue
            print(f"{workload.name} round {r + 1}/{args.rounds}: {row.label} ...", file=sys.stderr, flush=True)
            torch.set_num_threads(args.threads)
            gc.collect()
            try:
                steps = min(plan.steps, row.max_steps or plan.steps)
                runs[row.key].append(row.run(workload, R.Plan(plan.warmup, steps, plan.tmp)))
            except R.CannotRun as e:
                cannot[row.key] = str(e)
    return summarize(workload, rows, runs, cannot, plan, args.rounds)


def summarize(
    workload: W.Workload,
    rows: list[R.Row],
    runs: dict[str, list[R.Outcome]],
    cannot: dict[str, str],
    plan: R.Plan,
    rounds: int,
) -> dict[str, Any]:
    """Medians over rounds, paired ratios to Lightning, numbers recorded per step."""
    base = [o.step_s for o in runs.get("lightning", [])]
    table: dict[str, Any] = {}
    for row in rows:
        if row.key in cannot:
            table[row.key] = {"label": row.label, "cannot_run": cannot[row.key]}
            continue
        ms = [1e3 * o.step_s for o in runs[row.key]]
        paired = [o.step_s / b for o, b in zip(runs[row.key], base)] if base else []  # round by round
        # Other processes only ever add time: the fastest round of each row is the least disturbed.
        best = min(o.step_s for o in runs[row.key]) / min(base) if base else math.nan
        table[row.key] = {
            "label": row.label,
            "step_ms": statistics.median(ms),
            "step_ms_rounds": ms,
            "timed_steps": min(plan.steps, row.max_steps or plan.steps),
            "ratio": statistics.median(paired) if paired else math.nan,
            "ratio_rounds": paired,
            "best_ratio": best,
            **runs[row.key][0].per_step(),
        }
    return {
        "workload": workload.name,
        "describe": workload.describe,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "rounds": rounds,
        "rows": table,
    }


def comparisons(result: dict[str, Any], rows: list[R.Row]) -> list[str]:
    """The targets, in words: the probe at log_every=10 against Lightning, and each peer against its probe row."""
    table = result["rows"]
    lines = []
    p10 = table.get("probe10", {})
    if "ratio" in p10:
        verdict = "met" if p10["ratio"] <= TARGET else "MISSED"
        lines.append(f"probe log_every=10 ×Lightning {p10['ratio']:.2f} (target ≤ {TARGET}): {verdict}")
    for row in rows:
        peer, probe = table.get(row.key, {}), table.get(row.setting, {})
        if not row.setting or "step_ms" not in peer or "step_ms" not in probe:
            continue
        ours, theirs = layer_statistics(probe), layer_statistics(peer)
        lines.append(
            f"{probe['label']} vs {row.label}: {probe['step_ms']:.1f} vs {peer['step_ms']:.1f} ms/step "
            f"({'faster' if probe['step_ms'] < peer['step_ms'] else 'SLOWER'}), {ours:.1f} vs {theirs:.1f} "
            f"per-layer statistics/step ({'at least as many' if ours >= theirs else 'FEWER'})"
        )
    return lines


def layer_statistics(row: dict[str, Any]) -> float:
    """Per-layer statistics a row records per step: its scalars plus its histograms (one each, whatever its bins)."""
    return row["layer_scalars"] + row["layer_histograms"]


def print_table(result: dict[str, Any], rows: list[R.Row]) -> None:
    """One workload's table."""
    print(
        f"\n{result['workload']}: {result['describe']}; {result['warmup']} warm-up steps, "
        f"{result['steps']} timed steps per run"
    )
    head = (
        f"{'row':<60} {'ms/step':>8} {'×Lightning':>10} {'layer scalars/step':>18} "
        f"{'layer hists/step':>16} {'global/step':>11} {'best ×L':>7}"
    )
    print(head)
    print("-" * len(head))
    for row in result["rows"].values():
        if "cannot_run" in row:
            print(f"{row['label']:<60} cannot run: {row['cannot_run']}")
            continue
        label = row["label"]
        if row["timed_steps"] != result["steps"] or len(row["step_ms_rounds"]) != result["rounds"]:
            label += f" [{row['timed_steps']} steps, {len(row['step_ms_rounds'])} round]"
        print(
            f"{label:<60} {row['step_ms']:>8.1f} {row['ratio']:>10.2f} {row['layer_scalars']:>18.1f} "
            f"{row['layer_histograms']:>16.1f} {row['global_numbers']:>11.1f} {row['best_ratio']:>7.2f}"
        )
    for line in comparisons(result, rows):
        print("  " + line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workloads", nargs="+", choices=list(W.FACTORIES), default=list(W.FACTORIES))
    p.add_argument("--rows", nargs="+", default=None, help="row keys to run (default: all)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, medians shown (default: 5)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run (default: 5)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per run (default: {STEPS}); a multiple of 10 keeps log_every=10 exact",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every row (default: 1)")
    p.add_argument("--quick", action="store_true", help="tiny networks, 1 round, 2+10 steps: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.steps = 1, 2, args.steps or 10
    for name, value, least in (
        ("--rounds", args.rounds, 1),
        ("--steps", 1 if args.steps is None else args.steps, 1),
        ("--threads", args.threads, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value < least:
            refuse(f"{name} {value}: allowed: an integer of at least {least}")
    known = [row.key for row in all_rows()]
    for key in args.rows or ():
        if key not in known:
            refuse(f"--rows {key!r}: allowed: {', '.join(known)}")
    return args


def refuse(message: str) -> None:
    """Bad input: one line on stderr, exit code 2, before anything runs or is written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def all_rows() -> list[R.Row]:
    """The baselines, the probe rows and the peers, in table order."""
    from benchmarks import peer_probe

    return [*ROWS[:2], *peer_probe.ROWS, *ROWS[2:]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [row for row in all_rows() if args.rows is None or row.key in args.rows]
    started, load_before = time.perf_counter(), os.getloadavg()
    results = []
    with quiet(), tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for name in args.workloads:
            results.append(run_workload(W.make(name, args.quick), rows, args, Path(tmp)))
    elapsed, load_after = time.perf_counter() - started, os.getloadavg()
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s), {args.rounds} interleaved round(s); wall time {elapsed:.0f} s; "
        f"load average (1 min) before/after {load_before[0]:.1f}/{load_after[0]:.1f}"
    )
    for result in results:
        print_table(result, rows)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment(),
        "wall_time_s": elapsed,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "workloads": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.out}")
    return 0


def environment() -> dict[str, Any]:
    """Versions of every tool in the table (None where not installed)."""
    from importlib import metadata

    versions = {}
    for dist in (
        "torch",
        "pytorch-lightning",
        "mlflow",
        "backpack-for-pytorch",
        "cockpit-for-pytorch",
        "wandb",
        "tensorboard",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(), **versions}


if __name__ == "__main__":
    sys.exit(main())
