"""The recorder: full-resolution statistics to a parquet artifact, a downsampled subset to MLflow.

The parquet table (step, layer, family, stat, value) holds every recorded statistic and the
validation metrics (family `val`), so analysis reads one file per run.

MLflow receives metrics through `MlflowClient.log_batch` in chunks of 1,000 from a background thread,
so training never waits on the tracking store; the thread gathers what arrives within SEND_INTERVAL
into one round of calls. Run-wide keys (train/loss, global norms, validation)
are sent as they come, for live curves; the per-layer keys (hundreds per step on a deep net) are sent
when the run ends: sending them during training cost the training thread up to 2× its step time
(SQLAlchemy's Python work shares the GIL and the cores; benchmarks/README.md).
Downsampling (only when needed): of the R recorded
steps, every ⌈R / metric_points⌉-th goes to MLflow, and always step 0 and the last recorded step.
Per-time-step BPTT norms go to the parquet table only (`keys.browsable`); the headline keys (loss, accuracy,
global norm) also go to MLflow as copies under `keys.HEADLINE`, the UI's first chart section (not to parquet).
The same thread calls `heartbeat` (if given) every `heartbeat_seconds`: the lab refreshes its run's liveness
tag there, the sign of life other hosts judge it by.
"""

from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from gradprobe import keys as K
from gradprobe.sinks import long_table

STATS_ARTIFACT = "stats/gradient_stats.parquet"
BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1,000 metrics per call
# Live metrics leave at most this often (seconds): each log_batch is milliseconds of Python in the
# tracking client, which at every step would take a core from training (benchmarks/README.md).
SEND_INTERVAL = 1.0


def with_headlines(metrics: list[Metric]) -> list[Metric]:
    """The metrics and, for the headline keys, their copies in the UI's first chart section (keys.HEADLINE)."""
    copies = [Metric(h, m.value, m.timestamp, m.step) for m in metrics if (h := K.headline_key(m.key)) is not None]
    return metrics + copies


class Recorder:
    """Collects (step, key, value) records for one run and ships them to MLflow and parquet."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        expected_records: int,
        metric_points: int,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_seconds: float = 30.0,
    ) -> None:
        self.client, self.run_id = client, run_id
        # The thread also calls `heartbeat` (the lab's liveness tag, common/liveness.py) this often.
        self.heartbeat = heartbeat
        self.heartbeat_seconds = heartbeat_seconds if heartbeat is not None else math.inf
        self.stride = 1 if metric_points == 0 else max(1, math.ceil(expected_records / metric_points))
        self._steps: list[int] = []
        self._keys: list[list[str]] = []
        self._values: list[list[float]] = []
        self._extra: list[tuple[int, list[str], list[float]]] = []  # validation metrics, not downsampled
        self._last_sent = -1  # index of the last record sent to MLflow
        self._deferred: list[tuple[int, int]] = []  # (record index, timestamp) whose per-layer keys wait for close
        self._queue: queue.Queue[list[Metric] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._ship, name="mlflow-recorder", daemon=True)
        self._thread.start()
        self._closed = False

    def record(self, step: int, keys: list[str], values: list[float]) -> None:
        """Keep one logging step's statistics; send it to MLflow if the downsampling picks it."""
        self._steps.append(step)
        self._keys.append(keys)
        self._values.append(values)
        index = len(self._steps) - 1
        if index % self.stride == 0:
            self._send(index)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Run-level scalars (validation metrics): kept in the table too, sent to MLflow as they are."""
        self._extra.append((step, list(metrics), [float(v) for v in metrics.values()]))
        now = int(time.time() * 1000)
        self._queue.put(with_headlines([Metric(k, float(v), now, step) for k, v in metrics.items()]))

    def _send(self, index: int) -> None:
        """Run-wide keys go to MLflow now (live curves); per-layer keys when the run ends (see module doc)."""
        now = int(time.time() * 1000)
        step = self._steps[index]
        live = [Metric(k, v, now, step) for k, v in zip(self._keys[index], self._values[index]) if not K.per_layer(k)]
        self._queue.put(with_headlines(live))
        self._deferred.append((index, now))
        self._last_sent = index

    def _per_layer_metrics(self) -> list[Metric]:
        return [
            Metric(k, v, now, self._steps[index])
            for index, now in self._deferred
            for k, v in zip(self._keys[index], self._values[index])
            if K.per_layer(k) and K.browsable(k)
        ]

    def _ship(self) -> None:
        """Send what is queued, at most once per SEND_INTERVAL: one `log_batch` round for many logging steps."""
        pending: list[Metric] = []
        last_sent = -math.inf
        last_beat = time.monotonic()
        while True:
            next_beat = last_beat + self.heartbeat_seconds - time.monotonic()
            if next_beat <= 0:
                self._beat()
                last_beat = time.monotonic()
                continue
            if pending:
                remaining = last_sent + SEND_INTERVAL - time.monotonic()
                if remaining <= 0:
                    self._log(pending)
                    pending, last_sent = [], time.monotonic()
                    continue
            else:
                remaining = math.inf
            try:
                wait = min(remaining, next_beat)
                item = self._queue.get(timeout=None if wait == math.inf else wait)
            except queue.Empty:
                continue
            if item is None:
                self._log(pending)
                return
            pending.extend(item)

    def _beat(self) -> None:
        """Call the heartbeat: the sign of life that tells other hosts this run still trains."""
        try:
            self.heartbeat()
        except Exception:  # a missed beat is no error: the next one may pass, and training goes on
            pass

    def _log(self, metrics: list[Metric]) -> None:
        if self._error is not None:
            return
        try:
            for start in range(0, len(metrics), BATCH_LIMIT):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH_LIMIT], synchronous=True)
        except BaseException as exc:  # kept, and raised by close() once the parquet table is safe
            self._error = exc

    def table(self) -> pd.DataFrame:
        """Everything recorded so far as the long table: step, layer, family, stat, value."""
        steps = self._steps + [e[0] for e in self._extra]
        all_keys = self._keys + [e[1] for e in self._extra]
        return long_table(steps, all_keys, self._values + [e[2] for e in self._extra])

    def close(self) -> None:
        """Send the last step, finish shipping, and log the parquet table; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._steps and self._last_sent != len(self._steps) - 1:
            self._send(len(self._steps) - 1)
        self._queue.put(self._per_layer_metrics())
        self._queue.put(None)
        # The table is written while the thread sends: SQLite's commits and pyarrow's writer release the GIL.
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(STATS_ARTIFACT).name
                self.table().to_parquet(path, index=False)
                self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(STATS_ARTIFACT).parent))
        finally:
            self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"sending metrics to MLflow failed: {self._error}") from self._error
