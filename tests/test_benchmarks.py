"""The benchmarks: the interleaved overhead measurement probes the "on" blocks only, exactly as its ratio assumes;
benchmarks.peers runs the rows whose packages are installed, names the missing ones, and counts what each records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmarks import train_overhead as bench
from gradprobe.recorder import STATS_ARTIFACT
from pipelines.config import RunConfig

# Seven whole blocks and one step: block 4 is the first "on" block with two timed neighbours.
STEPS = 7 * bench.BLOCK + 1


@pytest.mark.parametrize("log_every", [1, 10])
def test_interleaved_probes_the_on_blocks_only(
    tracking: str, tiny_cfg: RunConfig, tmp_path: Path, log_every: int
) -> None:
    out = bench.interleaved(tiny_cfg.replace(max_steps=STEPS, log_every=log_every))

    assert out["outcome"] == "completed" and out["steps"] == STEPS
    assert out["blocks"] == 1 and math.isfinite(out["ratio"]) and out["ratio"] > 0
    path = MlflowClient().download_artifacts(out["run_id"], STATS_ARTIFACT, str(tmp_path))
    table = pd.read_parquet(path)
    recorded = sorted(table.loc[table.family == "grad", "step"].unique().tolist())
    # The second step of every "on" block and then every log_every-th; never a block's first step or an "off" block.
    expected = [
        s for s in range(STEPS) if (s // bench.BLOCK) % 2 == 0 and s % bench.BLOCK in range(1, bench.BLOCK, log_every)
    ]
    assert recorded == expected
    # Each recorded step got its whole record: the weights' copy before the step for ΔW, the hooks for ∂loss/∂output.
    update = table[(table.family == "update") & (table.stat == "ratio")]
    backprop = table[table.family == "backprop"]
    assert sorted(update.step.unique().tolist()) == expected == sorted(backprop.step.unique().tolist())
    assert np.isfinite(update.value).all() and (update.value > 0).all()
    assert np.isfinite(backprop.value).all()


# -- benchmarks.peers: the probe against its peers --------------------------------------------------------

PEER_KEYS = ("backpack", "cockpit", "wandb")


def test_peers_quick_runs_the_installed_rows_and_names_the_missing_peers(tmp_path: Path) -> None:
    from benchmarks import peers

    rows = {row.key: row for row in peers.all_rows()}
    missing = [k for k in PEER_KEYS if rows[k].missing()]  # installed peers are left out: no network, no minutes
    ran = ["plain", "lightning", "probe1", "probe10", "probe10_mlflow"]
    out = tmp_path / "peers.json"
    assert peers.main(["--quick", "--rows", *ran, *missing, "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert [w["workload"] for w in report["workloads"]] == ["mlp", "transformer", "resnet"]
    steps = 2 + 10 + 1  # --quick: 2 warm-up steps, 10 timed, and the step whose start stops the clock
    logged_every_10 = sum(s % 10 == 0 or s == steps - 1 for s in range(steps))  # step 0, every 10th, the last
    for workload in report["workloads"]:
        table = workload["rows"]
        for key in ran:
            assert "cannot_run" not in table[key], (workload["workload"], key, table[key])
            assert math.isfinite(table[key]["step_ms"]) and table[key]["step_ms"] > 0
        assert table["lightning"]["ratio"] == 1.0
        # The probe records the same values at every logging step: log_every=10 records a share of log_every=1's.
        every_step = table["probe1"]["layer_scalars"]
        assert every_step > 0
        assert table["probe10"]["layer_scalars"] == pytest.approx(every_step * logged_every_10 / steps)
        assert table["probe10_mlflow"]["layer_scalars"] == table["probe10"]["layer_scalars"]
        for key in missing:
            assert table[key]["cannot_run"].startswith("not installed: ")
            assert all(m in table[key]["cannot_run"] for m in rows[key].missing())


@pytest.mark.parametrize("name", ["mlp", "transformer", "resnet"])
def test_peers_probe_row_records_every_layer_of_an_ordinary_network(name: str, tmp_path: Path) -> None:
    from torch import nn

    from benchmarks import peer_probe, peer_rows, peer_workloads
    from gradprobe import keys

    workload = peer_workloads.make(name, quick=True)
    outcome = peer_probe.probe_row(1)(workload, peer_rows.Plan(warmup=1, steps=2, tmp=tmp_path))

    kinds = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.Embedding, nn.LayerNorm)
    modules = list(workload.model().named_modules())
    expected = {f"net.{n}" for n, m in modules if isinstance(m, kinds)}
    expected |= {f"net.{n}.in_proj" for n, m in modules if isinstance(m, nn.MultiheadAttention)}
    assert {keys.parse(k)[1] for k in outcome.keys if keys.per_layer(k)} == expected


def test_peers_bad_input_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks import peers

    out = tmp_path / "peers.json"
    for argv, field in (
        (["--rows", "probe1", "nope"], "--rows 'nope'"),
        (["--steps", "0"], "--steps 0"),
        (["--warmup", "-1"], "--warmup -1"),
    ):
        with pytest.raises(SystemExit) as exit_:
            peers.main([*argv, "--out", str(out)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0] and "allowed" in err[0]
    assert not out.exists()


def test_tensorboard_row_writes_the_histograms_it_counts(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (benchmarks/requirements-peers.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from benchmarks import peer_rows, peer_workloads

    workload = peer_workloads.make("mlp", quick=True)
    plan = peer_rows.Plan(warmup=2, steps=10, tmp=tmp_path)
    outcome = peer_rows.tensorboard_row(workload, plan)

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    written = sum(len(events.Histograms(tag)) for tag in events.Tags()["histograms"])
    names = [name for name, _ in workload.model().named_parameters()]
    logged_steps = [s for s in range(plan.max_steps) if s % 10 == 0]
    assert sorted(events.Tags()["histograms"]) == sorted(names + [f"{n}.grad" for n in names])
    assert outcome.counts.layer_histograms == written == 2 * len(names) * len(logged_steps)


def test_cockpit_counts_split_per_parameter_numbers_from_network_wide_ones() -> None:
    from benchmarks.peer_rows import cockpit_counts

    output = {
        0: {
            "GradNorm": [1.0, 2.0, 3.0],
            "UpdateSize": [0.1, 0.2, 0.3],
            "Alpha": 0.5,
            "Loss": 2.3,
            "GradHist1d": {"hist": [[1, 2], [3, 4]], "edges": [0.0, 1.0, 2.0]},
        },
        1: {"GradNorm": [1.0, 2.0, 3.0], "Distance": [1.0, 1.0, 1.0], "InnerTest": 0.1},
    }
    counts = cockpit_counts(output)
    assert (counts.layer_scalars, counts.layer_histograms, counts.global_numbers) == (3 + 3 + 3 + 3, 0, 1 + 1 + 1 + 1)
