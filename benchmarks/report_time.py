"""Report regeneration time for a 200-run study, split into loading and plotting (target: under 30 s in all).

    python -m benchmarks.report_time                 # 200 runs, the default spec's sizes
    python -m benchmarks.report_time --runs 50 --keep

The study is made without training: a parent run and nested trial runs tagged like the runner's, each with a
synthetic but realistic statistics table written through the real Recorder (benchmarks/synthetic.py), in a
temporary SQLite store. Then, in this process: load (analysis.load.study: one search, 200 parquet reads),
the summary table, every figure (draw and save, timed one by one), the HTML page, and logging the folder to
the parent run. Times are printed and saved to benchmarks/results/report_time.json, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from analysis import figures, load, report, summary
from benchmarks.synthetic import Shape, make_study

RESULTS = Path(__file__).resolve().parent / "results" / "report_time.json"
TARGET_SECONDS = 30.0
STUDY = "bench"


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def measure(n_runs: int, folder: Path) -> dict:
    """Make the study in `folder`, then time loading, each figure, the page and the artifact upload."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("report-bench", artifact_location=str(folder / "artifacts"))
    _, made = timed(make_study, STUDY, n_runs, client=client, experiment_id=experiment, shape=Shape())
    data, loading = timed(load.study, STUDY)
    out = folder / "reports" / STUDY
    out.mkdir(parents=True)
    objective, objective_s = timed(report.objective_of, data)
    runs, annotate_s = timed(summary.annotate, data.runs, data.stats)
    data = dataclasses.replace(data, runs=runs)
    table, table_s = timed(report.summary_table, data.runs, data.stats, objective[0])
    table_s += annotate_s
    per_figure, written = {}, {}
    for name in figures.FIGURES:
        written[name], per_figure[name] = timed(report.draw_one, name, data, out, objective)
    _, page_s = timed(report.write_html, STUDY, table, written, objective, out / "index.html")
    _, logging_s = timed(report.log_report, out, data.parent_run_id)
    plotting = objective_s + table_s + sum(per_figure.values()) + page_s
    return {
        "runs": n_runs,
        "stats_rows": len(data.stats),
        "make_study_s": made,
        "load_s": loading,
        "summary_table_s": table_s,
        "figures_s": per_figure,
        "page_s": page_s,
        "plotting_s": plotting,
        "log_artifacts_s": logging_s,
        "total_s": loading + plotting,
        "target_s": TARGET_SECONDS,
        "figures_drawn": sorted(n for n, p in written.items() if p is not None),
    }


def print_table(result: dict) -> None:
    """The timings as a small table."""
    rows = [
        ("make the study (setup, not timed against the target)", result["make_study_s"]),
        (f"load: {result['runs']} runs, {result['stats_rows']:,} stats rows", result["load_s"]),
        ("summary table (gains, verdicts, outcomes)", result["summary_table_s"]),
    ]
    rows += [(f"  figure {name}", s) for name, s in result["figures_s"].items()]
    rows += [
        ("HTML page", result["page_s"]),
        ("plotting (table + figures + page)", result["plotting_s"]),
        ("TOTAL load + plotting", result["total_s"]),
        ("log the folder to the parent run (extra)", result["log_artifacts_s"]),
    ]
    width = max(len(r[0]) for r in rows)
    for label_, seconds in rows:
        print(f"{label_:<{width}}  {seconds:7.2f} s")
    verdict = "within" if result["total_s"] < TARGET_SECONDS else "OVER"
    print(f"{verdict} the {TARGET_SECONDS:.0f} s target ({result['total_s'] / TARGET_SECONDS:.0%} of it)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure, print, save JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report_time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=200, help="trial runs in the study")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and report (path printed)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        result = measure(args.runs, folder)
    finally:
        mlflow.set_tracking_uri(None)
    result["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"saved {RESULTS}")
    if args.keep:
        print(f"kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
