"""Where the probe's records go: a Lightning Trainer's loggers, a parquet file, several at once.

A sink is any callable `sink(step: int, keys: list[str], values: list[float]) -> None`, with an optional
`close()` called once when training ends. The lab's MLflow recorder (`gradprobe.recorder.Recorder.record`)
is one; this module adds `LoggerSink` (MLFlowLogger, TensorBoardLogger, CSVLogger, any Lightning logger),
`ParquetSink` (the long table alone) and `Tee` (several sinks). Keys are built by `gradprobe.keys`; the keys
that `keys.browsable` rejects (per-time-step BPTT norms, histogram bins) never go to a logger, only to parquet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradprobe import keys as K

if TYPE_CHECKING:
    import pandas as pd

Sink = Callable[[int, list[str], list[float]], None]


def _pandas() -> tuple[Any, Any]:
    """pandas and numpy, or an ImportError naming the optional dependency to install."""
    try:
        import numpy as np
        import pandas as pd
    except ImportError as exc:
        raise ImportError("the parquet table needs pandas and pyarrow: pip install 'gradprobe[parquet]'") from exc
    return pd, np


def long_table(steps: Sequence[int], keys: Sequence[Sequence[str]], values: Sequence[Sequence[float]]) -> pd.DataFrame:
    """Records (one step, its keys, its values each) as the long table: step, layer, family, stat, value."""
    pd, np = _pandas()
    counts = [len(k) for k in keys]
    flat_keys = [k for ks in keys for k in ks]
    parsed = {k: K.parse(k) for k in set(flat_keys)}
    family, layer, stat = zip(*(parsed[k] for k in flat_keys)) if flat_keys else ((), (), ())
    return pd.DataFrame(
        {
            "step": np.repeat(np.asarray(steps, dtype=np.int64), counts),
            "layer": pd.Categorical(layer),
            "family": pd.Categorical(family),
            "stat": pd.Categorical(stat),
            "value": np.fromiter((v for vals in values for v in vals), dtype=np.float64, count=sum(counts)),
        }
    )


class LoggerSink:
    """Records through Lightning loggers (`trainer.loggers`): `logger.log_metrics(metrics, step)`."""

    def __init__(self, loggers: Iterable[Any]) -> None:
        self.loggers = list(loggers)

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:
        """Send one logging step's browsable keys to every logger (MLflow's client splits large batches itself)."""
        metrics = {k: float(v) for k, v in zip(keys, values) if K.browsable(k)}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def close(self) -> None:
        """Flush the loggers that buffer (CSVLogger writes its file on save)."""
        for logger in self.loggers:
            logger.save()


class ParquetSink:
    """Keeps every record and writes the long table (step, layer, family, stat, value) to `path` at close."""

    def __init__(self, path: str | Path) -> None:
        _pandas()  # fail at construction, before training, if the optional dependencies are missing
        self.path = Path(path)
        self._steps: list[int] = []
        self._keys: list[list[str]] = []
        self._values: list[list[float]] = []
        self._closed = False

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:
        """Keep one logging step's records (every key, browsable or not)."""
        self._steps.append(step)
        self._keys.append(keys)
        self._values.append(values)

    def table(self) -> pd.DataFrame:
        """Everything recorded so far as the long table."""
        return long_table(self._steps, self._keys, self._values)

    def close(self) -> None:
        """Write the table to `path` (its folder is made); idempotent."""
        if self._closed:
            return
        self._closed = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table().to_parquet(self.path, index=False)


class Tee:
    """Sends every record to each of several sinks; `close` closes those that have a `close`."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:
        """Pass one logging step's records to every sink."""
        for sink in self.sinks:
            sink(step, keys, values)

    def close(self) -> None:
        """Close every sink that can be closed."""
        for sink in self.sinks:
            close_sink(sink)


def close_sink(sink: Sink) -> None:
    """Call the sink's `close()` if it has one (a plain function has none)."""
    close = getattr(sink, "close", None)
    if callable(close):
        close()
