"""Sinks against real loggers and files: Lightning's MLFlowLogger (SQLite), TensorBoardLogger, CSVLogger, parquet."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradprobe import keys as K
from gradprobe.sinks import LoggerSink, ParquetSink, Tee, close_sink

LAYERS = ["encoder.layers.0.linear1", "L000", "out"]  # a qualified module name and the zoo's ids
BROWSABLE = [K.TRAIN_LOSS, *(K.key("grad", layer, "l2") for layer in LAYERS)]
PARQUET_ONLY = [
    K.key("bptt", "L000", K.time_stat(0)),
    K.key(K.HIST, "out", "b-3.0"),
    K.key(K.HIST, "out", K.HIST_ZEROS),
]
STEPS = [0, 5, 9]


def _value(step: int, index: int) -> float:
    return step * 100.0 + index + 0.25


def _feed(sink) -> list[str]:
    keys = BROWSABLE + PARQUET_ONLY
    for step in STEPS:
        sink(step, keys, [_value(step, i) for i in range(len(keys))])
    close_sink(sink)
    return keys


def _expected(keys: list[str], browsable_only: bool) -> dict[tuple[str, int], float]:
    return {
        (k, step): _value(step, i) for step in STEPS for i, k in enumerate(keys) if K.browsable(k) or not browsable_only
    }


def test_logger_sink_to_mlflow_keeps_parquet_only_keys_out(tracking, tmp_path) -> None:
    logger = MLFlowLogger(experiment_name="sinks", tracking_uri=tracking)
    keys = _feed(LoggerSink([logger]))
    client = MlflowClient(tracking)
    got = {(k, m.step): m.value for k in keys for m in client.get_metric_history(logger.run_id, k)}
    assert got == _expected(keys, browsable_only=True)
    assert set(client.get_run(logger.run_id).data.metrics) == set(BROWSABLE)


def test_logger_sink_sends_more_keys_than_one_mlflow_batch(tracking) -> None:
    """A deep net's step holds thousands of keys; MLflow's REST API takes at most 1,000 metrics per call."""
    logger = MLFlowLogger(experiment_name="wide", tracking_uri=tracking)
    keys = [K.key("grad", f"blocks.{i}.fc", "l2") for i in range(2500)]
    LoggerSink([logger])(3, keys, [float(i) for i in range(len(keys))])
    metrics = MlflowClient(tracking).get_run(logger.run_id).data.metrics
    assert metrics == {k: float(i) for i, k in enumerate(keys)}


def test_logger_sink_to_tensorboard_and_csv(tmp_path) -> None:
    tensorboard = TensorBoardLogger(str(tmp_path / "tb"), name="run")
    csv = CSVLogger(str(tmp_path / "csv"), name="run")
    keys = _feed(LoggerSink([tensorboard, csv]))
    tensorboard.experiment.flush()
    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    got = {(k, e.step): e.value for k in events.Tags()["scalars"] for e in events.Scalars(k)}
    assert got == pytest.approx(_expected(keys, browsable_only=True))  # TensorBoard stores float32
    table = pd.read_csv(tmp_path / "csv" / "run" / "version_0" / "metrics.csv")
    got = {
        (k, int(row.step)): row[k]
        for _, row in table.iterrows()
        for k in table.columns
        if k != "step" and pd.notna(row[k])
    }
    assert got == _expected(keys, browsable_only=True)


def test_parquet_sink_holds_every_key_as_the_long_table(tmp_path) -> None:
    path = tmp_path / "deep" / "stats.parquet"
    keys = _feed(ParquetSink(path))
    table = pd.read_parquet(path)
    assert list(table.columns) == ["step", "layer", "family", "stat", "value"]
    got = {(K.key(r.family, r.layer or None, r.stat), int(r.step)): r.value for r in table.itertuples()}
    assert got == _expected(keys, browsable_only=False)


def test_tee_feeds_and_closes_every_sink(tmp_path) -> None:
    seen: list[tuple[int, list[str]]] = []
    keys = _feed(Tee(lambda step, k, v: seen.append((step, k)), ParquetSink(tmp_path / "t.parquet")))
    assert [s for s, _ in seen] == STEPS and all(k == keys for _, k in seen)
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == len(STEPS) * len(keys)


def test_parquet_sink_without_pandas_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError, match=r"pandas and pyarrow: pip install 'gradprobe\[parquet\]'"):
        ParquetSink(tmp_path / "x.parquet")
