"""What the probe cost a run: probe/seconds and probe/cost_share, sent once when training ends (callback, plain
loop, the lab's runs)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from gradprobe import GradientProbe, Probe
from gradprobe import keys as K
from gradprobe.sinks import ParquetSink
from pipelines import train
from pipelines.config import RunConfig

STEPS = 60


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(log_every: int) -> tuple[list[tuple[int, list[str], list[float]]], GradientProbe]:
    calls: list[tuple[int, list[str], list[float]]] = []
    probe = GradientProbe(
        log_every, sink=lambda step, keys, values: calls.append((step, keys, values)), record_cost=True
    )
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(STEPS * 8, 8, generator=g), torch.randint(0, 2, (STEPS * 8,), generator=g)
    )
    trainer = pl.Trainer(
        max_steps=STEPS,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    return calls, probe


def test_callback_sends_its_cost_once_at_the_end() -> None:
    every_step, probe = _fit(log_every=1)
    *records, (step, keys, values) = every_step
    assert keys == [K.PROBE_SECONDS, K.PROBE_COST_SHARE] and step == STEPS - 1
    assert [r[0] for r in records] == list(range(STEPS)) and probe.history == records  # the cost is not a step's record
    assert not any(K.PROBE_SECONDS in r[1] for r in records)
    seconds, share = values
    cost = probe.cost()
    assert seconds == cost["probe_seconds"] and share == pytest.approx(seconds / cost["train_seconds"])
    assert 0 < share < 1
    sparse, _ = _fit(log_every=50)
    assert [r[0] for r in sparse[:-1]] == [0, 50, STEPS - 1]
    # 60 logging steps against 3 on the same model and data: the counted seconds follow the work asked for.
    assert seconds > sparse[-1][2][0]


def test_plain_loop_close_sends_the_cost_and_writes_the_parquet_sink(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, log_every=2, sink=ParquetSink(tmp_path / "s.parquet"), record_cost=True)
    for step in range(5):
        probe.begin(step)
        loss = model(torch.randn(16, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        probe.gradients(loss)
        optimizer.step()
        probe.end()
    probe.close()
    probe.close()  # idempotent: one cost record
    table = pd.read_parquet(tmp_path / "s.parquet")
    cost = table[table["family"] == "probe"]
    assert sorted(cost["stat"]) == ["cost_share", "seconds"] and set(cost["step"]) == {4}
    assert cost.set_index("stat")["value"]["seconds"] == probe.cost()["probe_seconds"]
    assert sorted(table.loc[table["family"] == "grad", "step"].unique()) == [0, 2, 4]


def test_no_cost_record_by_default_in_a_plain_loop() -> None:
    """A sink of the user's gets one call per logging step, unless the cost is asked for."""
    model = nn.Linear(3, 1)
    calls = []
    probe = Probe(model, log_every=1, sink=lambda *record: calls.append(record))
    probe.begin(0)
    loss = model(torch.randn(4, 3)).sum()
    loss.backward()
    probe.gradients(loss)
    probe.end()
    probe.close()
    assert [c[0] for c in calls] == [0] and K.PROBE_SECONDS not in calls[0][1]


def test_callback_sends_the_cost_to_the_trainers_loggers_by_default(tmp_path) -> None:
    calls = []
    for sink in (None, lambda *record: calls.append(record)):
        logger = CSVLogger(str(tmp_path), name="run")
        trainer = pl.Trainer(
            max_steps=3,
            callbacks=[GradientProbe(1, sink=sink)],
            logger=logger,
            accelerator="cpu",
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        g = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(24, 8, generator=g), torch.randint(0, 2, (24,), generator=g))
        trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    first = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    assert 0 < first[K.PROBE_COST_SHARE].dropna().item() < 1 and "grad/l2/net.0" in first
    assert [c[0] for c in calls] == [0, 1, 2] and all(K.PROBE_SECONDS not in c[1] for c in calls)


def test_lab_run_records_the_probe_cost(tracking, tiny_cfg: RunConfig) -> None:
    tables = []
    result = train.run(tiny_cfg, on_recorded=lambda _, table: tables.append(table))
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert 0 < metrics[K.PROBE_COST_SHARE] < 1 and metrics[K.PROBE_SECONDS] > 0
    rows = tables[0][tables[0]["family"] == "probe"]
    assert set(rows["stat"]) == {"seconds", "cost_share"} and set(rows["step"]) == {tiny_cfg.max_steps - 1}
    assert mlflow.active_run() is None
