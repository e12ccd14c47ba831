"""Optuna storages side by side: trials per minute with 1, 2 and 4 workers on PostgreSQL vs the journal file.

    python -m benchmarks.storage_throughput                     # 12 trials of the default spec per row (minutes)
    python -m benchmarks.storage_throughput --trials 6 --workers 1 2 --no-server

Every row is `python -m studies.run --spec default --workers N --no-report` on a fresh study, from the
repository root. Rows alternate journal / PostgreSQL at each worker count, so that a change in the
machine's load hits both alike. MLflow is one SQLite store in a temporary folder for these rows, so only
the Optuna storage differs. A last row runs the whole multi-machine stack with 2 workers: PostgreSQL for
Optuna and an `mlflow server` (PostgreSQL backend store, artifacts served by the server) as the tracking
URI. PostgreSQL and the server are throwaway, on 127.0.0.1 (tests/servers.py).

Per trial, from Optuna's timestamps and each run's last `time/elapsed` (Lightning's fit loop):
in-trial bookkeeping = trial duration − training time (data and model set-up, the MLflow run, its params,
metrics and parquet artifact); between trials = the gap from one trial's end to the same worker's next
start (Optuna's tell and ask, the sampler, the stop check, the heartbeat's stale-trial check); outside
training = (workers × wall time − Σ training) / trials, which adds each worker's start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "storage_throughput.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from gradprobe.keys import ELAPSED  # noqa: E402
from studies.storage import open_storage  # noqa: E402
from tests.servers import mlflow_server, postgres_missing, postgres_server  # noqa: E402


def run_study(name: str, storage: str, tracking: str, workers: int, trials: int, folder: Path) -> float:
    """One study to its total from a fresh start, in `folder` (where artifacts land); its wall time in seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(ROOT), "MLFLOW_EXPERIMENT_NAME": "bench"}
    cmd = [
        sys.executable,
        "-m",
        "studies.run",
        "--spec",
        "default",
        "--study-name",
        name,
        "--n-trials",
        str(trials),
        "--workers",
        str(workers),
        "--storage",
        storage,
        "--no-report",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"study {name!r} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def measure(name: str, storage: str, tracking: str, workers: int, trials: int, folder: Path) -> dict[str, float]:
    """Run one row and split its time per trial into training, in-trial bookkeeping and between trials."""
    wall = run_study(name, storage, tracking, workers, trials, folder)
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    done = [t for t in study.trials if t.datetime_complete is not None]
    runs = MlflowClient(tracking).search_runs(
        [MlflowClient(tracking).get_experiment_by_name("bench").experiment_id],
        filter_string=f"tags.study = '{name}' and tags.role = 'trial'",
    )
    training = {r.info.run_id: r.data.metrics.get(ELAPSED, 0.0) for r in runs}
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    trained = [training.get(t.user_attrs.get("mlflow_run_id"), 0.0) for t in done]
    by_worker = defaultdict(list)
    for t in sorted(done, key=lambda t: t.datetime_start):
        by_worker[t.user_attrs.get("pid")].append(t)
    gaps = [
        (b.datetime_start - a.datetime_complete).total_seconds()
        for ts in by_worker.values()
        for a, b in zip(ts, ts[1:])
    ]
    n = len(done)
    return {
        "workers": workers,
        "trials": n,
        "wall_s": wall,
        "trials_per_minute": 60 * n / wall,
        "training_s_per_trial": sum(trained) / n,
        "in_trial_bookkeeping_s": sum(d - tr for d, tr in zip(per_trial, trained)) / n,
        "between_trials_s": sum(gaps) / len(gaps) if gaps else float("nan"),
        "outside_training_s_per_trial": (workers * wall - sum(trained)) / n,
    }


def table(rows: dict[str, dict[str, float]]) -> str:
    """The rows with their ratios to the same storage at 1 worker and to the journal at the same workers."""
    head = (
        f"{'storage':<22}{'workers':>8}{'trials':>7}{'wall s':>8}{'trials/min':>11}{'× 1 worker':>11}"
        f"{'× journal':>10}{'train s':>9}{'in-trial s':>11}{'between s':>10}{'outside s':>10}"
    )
    lines = [head, "-" * len(head)]
    for key, r in rows.items():
        storage = key.rsplit("_w", 1)[0]
        one = rows.get(f"{storage}_w1")
        journal = rows.get(f"journal_w{r['workers']}")
        lines.append(
            f"{storage:<22}{r['workers']:>8}{r['trials']:>7}{r['wall_s']:>8.1f}{r['trials_per_minute']:>11.1f}"
            f"{(r['trials_per_minute'] / one['trials_per_minute'] if one else float('nan')):>11.2f}"
            f"{(r['trials_per_minute'] / journal['trials_per_minute'] if journal else float('nan')):>10.2f}"
            f"{r['training_s_per_trial']:>9.2f}{r['in_trial_bookkeeping_s']:>11.2f}{r['between_trials_s']:>10.2f}"
            f"{r['outside_training_s_per_trial']:>10.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure every row, print the table, save JSON beside the other results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12, help="trials per row")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts")
    parser.add_argument("--no-server", action="store_true", help="skip the row through an `mlflow server`")
    args = parser.parse_args()
    reason = postgres_missing()
    if reason:
        raise SystemExit(f"error: {reason}")
    rows: dict[str, dict[str, float]] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as pg:
        folder = Path(tmp)
        tracking = f"sqlite:///{folder}/mlflow.db"
        MlflowClient(tracking).search_experiments()  # MLflow's schema once, outside the timings
        for workers in args.workers:
            for storage in ("journal", "postgresql"):
                name = f"{storage}_w{workers}"
                url = str(folder / f"{name}.journal") if storage == "journal" else pg.create_database(name)
                rows[name] = measure(name, url, tracking, workers, args.trials, folder)
                print(f"{name}: {rows[name]['trials_per_minute']:.1f} trials/min", file=sys.stderr)
        if not args.no_server:
            (folder / "artifacts").mkdir()
            with mlflow_server(pg.create_database("mlflow"), folder / "artifacts") as server:
                name = "postgresql-server_w2"  # a study name: letters, digits, _ . -
                rows[name] = measure(name, pg.create_database("server_w2"), server, 2, args.trials, folder)
        load.append(os.getloadavg()[0])
    print(table(rows))
    print(f"load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "rows": rows,
                "load_average": load,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "optuna": optuna.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
