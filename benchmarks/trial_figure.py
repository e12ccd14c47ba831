"""What a trial's gradient-profile PNG costs: drawing and logging it, against the trial's own time.

    python -m benchmarks.trial_figure [--repeats 3]

Trains the default study's largest trial (MLP, depth 32, width 64, 1,000 steps, log_every 10) as real MLflow
runs in a throwaway SQLite store, with the study's hook (studies.ui.log_trial_figure) timed inside each run.
Prints the figure's seconds (the first call includes importing matplotlib and seaborn, once per worker
process), the run's seconds, and their ratio: the share the figure adds to a trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Measure and print the figure's cost per trial."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="trial runs to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)  # ./mlruns artifacts land in the throwaway folder
        import mlflow
        from mlflow.tracking import MlflowClient

        from pipelines import train
        from pipelines.config import RunConfig
        from studies import ui

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        client = MlflowClient()
        cfg = RunConfig.from_dict(
            {
                "dataset": "digits",
                "model": "mlp",
                "depth": 32,
                "width": 64,
                "batch_size": 64,
                "max_steps": 1000,
                "log_every": 10,
                "metric_points": 10,
            }
        )
        figure_seconds, run_seconds = [], []

        def timed_figure(run_id: str, table) -> None:
            started = time.perf_counter()
            ui.log_trial_figure(client, run_id, table, "benchmark")
            figure_seconds.append(time.perf_counter() - started)

        for _ in range(args.repeats):
            started = time.perf_counter()
            train.run(cfg, on_recorded=timed_figure, progress_bar=False)
            run_seconds.append(time.perf_counter() - started)
            assert any(
                a.path.endswith(".png")
                for a in client.list_artifacts(client.search_runs(["0"])[0].info.run_id, "figures")
            )
        size = next(Path(tmp).rglob("gradient_profile.png")).stat().st_size
    later = figure_seconds[1:] or figure_seconds
    share = statistics.median(f / r for f, r in zip(later, run_seconds[1:] or run_seconds))
    print(f"first figure (with imports)  {figure_seconds[0]:8.3f} s")
    print(f"later figures, median        {statistics.median(later):8.3f} s")
    print(f"trial run, median            {statistics.median(run_seconds):8.3f} s")
    print(f"figure / trial, median       {share:8.3f}    (PNG {size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
