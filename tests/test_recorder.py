"""The recorder against a real temporary MLflow store: the parquet artifact, downsampling, parquet-only keys."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gradprobe.recorder import STATS_ARTIFACT, Recorder

# (family, layer, stat); layer "" for run-wide keys.
KEYS = [
    ("train", "", "loss"),
    ("grad", "", "global_l2"),
    ("grad", "L000", "l2"),
    ("grad", "out", "absmax"),
    ("act", "L001", "saturation"),
    ("bptt", "L000", "t0000"),
    ("bptt", "L000", "t0001"),
    ("bptt", "L000", "t0002"),
    ("bptt", "L000", "first"),
    ("bptt", "L000", "ratio"),
]

# The run-wide keys of KEYS that the UI's first chart section repeats, written out by hand.
HEADLINES = {"train/loss": "0-headline/train_loss", "grad/global_l2": "0-headline/grad_global_l2"}


def _key(family: str, layer: str, stat: str) -> str:
    return f"{family}/{stat}" if not layer else f"{family}/{stat}/{layer}"


def _value(step: int, index: int) -> float:
    return step * 1000.0 + index + 0.125


def _record_run(n_records: int, every: int, metric_points: int, expected: int | None = None) -> tuple[str, list[int]]:
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    steps = [i * every for i in range(n_records)]
    recorder = Recorder(client, run_id, expected_records=expected or n_records, metric_points=metric_points)
    for step in steps:
        recorder.record(step, [_key(*k) for k in KEYS], [_value(step, i) for i in range(len(KEYS))])
    recorder.close()
    recorder.close()  # idempotent
    client.set_terminated(run_id)
    return run_id, steps


def _parquet(run_id: str, tmp_path: Path) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=STATS_ARTIFACT, dst_path=str(tmp_path / "dl")
    )
    return pd.read_parquet(local)


def test_parquet_artifact_holds_every_record(tracking, tmp_path) -> None:
    run_id, steps = _record_run(n_records=7, every=3, metric_points=0)
    assert STATS_ARTIFACT == "stats/gradient_stats.parquet"
    df = _parquet(run_id, tmp_path)
    assert list(df.columns) == ["step", "layer", "family", "stat", "value"]
    assert len(df) == len(steps) * len(KEYS)
    rows = {(int(r.step), str(r.family), str(r.layer), str(r.stat)): r.value for r in df.itertuples()}
    for step in steps:
        for i, (family, layer, stat) in enumerate(KEYS):
            assert rows[(step, family, layer, stat)] == _value(step, i)  # exact: float64 all the way


def test_all_points_reach_mlflow_when_not_downsampled(tracking) -> None:
    run_id, steps = _record_run(n_records=7, every=3, metric_points=0)
    client = MlflowClient()
    history = client.get_metric_history(run_id, "grad/l2/L000")
    assert sorted((m.step, m.value) for m in history) == [(s, _value(s, 2)) for s in steps]
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] != []


@pytest.mark.parametrize("n_records, metric_points", [(50, 10), (41, 7), (10, 3), (5, 200)])
def test_downsampling_keeps_first_and_last_and_at_most_metric_points(tracking, n_records, metric_points) -> None:
    run_id, steps = _record_run(n_records=n_records, every=2, metric_points=metric_points)
    client = MlflowClient()
    for i, k in enumerate(KEYS[:5]):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, _key(*k)))
        got_steps = [s for s, _ in history]
        assert got_steps[0] == 0 and got_steps[-1] == steps[-1]
        assert len(got_steps) == len(set(got_steps))
        assert len(got_steps) <= metric_points + 1  # the last step may come on top of the stride
        assert len(got_steps) >= min(n_records, metric_points) // 2  # still a usable curve
        assert all(v == _value(s, i) for s, v in history)  # points are real records, not averages
        gaps = {b - a for a, b in zip(got_steps[:-2], got_steps[1:-1])}
        assert len(gaps) <= 1  # evenly spaced apart from the final point


def test_downsampling_when_fewer_records_arrive_than_expected(tracking) -> None:
    """A diverged run stops early: step 0 and its last step are still in MLflow."""
    run_id, steps = _record_run(n_records=13, every=1, metric_points=10, expected=101)
    got = sorted(m.step for m in MlflowClient().get_metric_history(run_id, "grad/l2/L000"))
    assert got[0] == 0 and got[-1] == 12


def test_per_time_step_bptt_keys_are_parquet_only(tracking, tmp_path) -> None:
    run_id, _ = _record_run(n_records=3, every=1, metric_points=0)
    logged = set(MlflowClient().get_run(run_id).data.metrics)
    browsable = {_key(*k) for k in KEYS if not (k[0] == "bptt" and k[2].startswith("t"))}
    assert logged == browsable | set(HEADLINES.values())
    df = _parquet(run_id, tmp_path)
    per_t = df[(df.family == "bptt") & df.stat.astype(str).str.match(r"t\d{4}$")]
    assert sorted(set(per_t.stat.astype(str))) == ["t0000", "t0001", "t0002"]
    assert len(per_t) == 3 * 3


def test_validation_metrics_are_sent_as_they_are_and_kept_in_the_table(tracking, tmp_path) -> None:
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    recorder = Recorder(client, run_id, expected_records=100, metric_points=2)
    for step in range(0, 50, 10):
        recorder.log_metrics(step, {"val/loss": 1.0 / (step + 1), "val/acc": step / 100})
    recorder.close()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/loss"))
    assert history == [(s, 1.0 / (s + 1)) for s in range(0, 50, 10)]
    headline = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "0-headline/val_acc"))
    assert headline == [(s, s / 100) for s in range(0, 50, 10)]  # the copy in the UI's first section
    df = _parquet(run_id, tmp_path)
    val = df[(df.family == "val") & (df.layer == "") & (df.stat == "acc")]
    assert list(zip(val.step, val.value)) == [(s, s / 100) for s in range(0, 50, 10)]


def test_live_metrics_leave_in_one_round_per_send_interval(tracking, monkeypatch) -> None:
    """Within one SEND_INTERVAL the thread gathers every queued step into one log_batch round."""
    import gradprobe.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "SEND_INTERVAL", 3600.0)  # nothing is due before close()
    client = MlflowClient()
    calls: list[int] = []
    real = client.log_batch

    def counting(run_id, metrics=(), **kwargs):  # a spy: the real store still receives every call
        calls.append(len(metrics))
        return real(run_id, metrics=metrics, **kwargs)

    client.log_batch = counting
    run_id = client.create_run("0").info.run_id
    recorder = Recorder(client, run_id, expected_records=30, metric_points=0)
    for step in range(30):
        recorder.record(step, [_key(*k) for k in KEYS], [_value(step, i) for i in range(len(KEYS))])
    assert len(calls) <= 1  # at most the first step, sent at once
    recorder.close()
    history = MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(30))  # nothing lost by gathering
    # the first step; then the rest of the live keys with the deferred per-layer keys, in chunks of 1,000
    live_and_layers = 30 * (len([k for k in KEYS if k[0] != "bptt" or not k[2].startswith("t")]) + len(HEADLINES))
    assert sum(calls) == live_and_layers
    assert len(calls) <= 2 + live_and_layers // 1000


def test_headline_keys_are_copied_to_mlflow_only(tracking, tmp_path) -> None:
    """Loss and global norm also go to the UI's first chart section, with the same points; parquet has no copies."""
    run_id, steps = _record_run(n_records=6, every=2, metric_points=3)
    client = MlflowClient()
    for original, copy in HEADLINES.items():
        got = [(m.step, m.value) for m in client.get_metric_history(run_id, copy)]
        want = [(m.step, m.value) for m in client.get_metric_history(run_id, original)]
        assert sorted(got) == sorted(want) and len(got) < len(steps)  # downsampled alike
    df = _parquet(run_id, tmp_path)
    assert "0-headline" not in set(df.family.astype(str))
