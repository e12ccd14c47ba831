"""The diagnosis on real lab runs: each pathology trained into a tiny network and recognised, from the parquet
table, from metric histories alone, and through `python -m gradprobe.diagnose` on a real MLflow store."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis.summary import MEAN_FIELD, predicted_layer_gains
from gradprobe import diagnose as D
from gradprobe import verdict as V
from gradprobe.recorder import STATS_ARTIFACT
from pipelines import train
from pipelines.config import RunConfig
from tests.conftest import copy_store, pointed_at

ROOT = Path(__file__).resolve().parents[1]
_BUILD = train.build
DEAD_LAYER = 2  # the hidden layer whose biases are pushed far negative
FAST = {"max_steps": 4, "batch_size": 32, "val_every": 4, "metric_points": 0}
CONFIGS = {
    # σ'(z) ≤ 1/4: under Xavier each layer passes on about a quarter of the gradient.
    "vanishing": RunConfig(activation="sigmoid", depth=20, width=32, init="xavier_normal", **FAST),
    # Kaiming ×3: each ReLU layer multiplies the gradient by about 3; a tiny step keeps it finite.
    "exploding": RunConfig(activation="relu", depth=8, width=64, init="kaiming_normal", init_gain=3.0, lr=1e-6, **FAST),
    "dead": RunConfig(activation="relu", depth=5, width=32, init="kaiming_normal", **FAST),
    "healthy": RunConfig(activation="relu", depth=4, width=128, init="kaiming_normal", **FAST),
    "diverged": RunConfig(activation="relu", depth=4, width=16, init="kaiming_normal", lr=1e6, **FAST),
}


def _with_dead_layer(build):
    def patched(cfg: RunConfig):
        data, lit = build(cfg)
        with torch.no_grad():  # every pre-activation of this layer far below 0: its ReLUs never fire
            lit.net.layers[DEAD_LAYER].linear.bias.fill_(-100.0)
        return data, lit

    return patched


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> tuple[str, dict[str, train.RunResult]]:
    """A store holding one trained lab run per pathology (and a healthy one)."""
    folder = tmp_path_factory.mktemp("diagnose")
    uri = copy_store(empty_store, folder)
    results = {}
    with pointed_at(uri), pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for name, cfg in CONFIGS.items():
            patch.setattr(train, "build", _with_dead_layer(_BUILD) if name == "dead" else _BUILD)
            results[name] = train.run(cfg, progress_bar=False)
    return uri, results


def _table(uri: str, run_id: str, dst: Path) -> pd.DataFrame:
    dst.mkdir(parents=True, exist_ok=True)
    return pd.read_parquet(MlflowClient(uri).download_artifacts(run_id, STATS_ARTIFACT, str(dst)))


def _diagnosis(runs, name: str, tmp_path: Path) -> tuple[D.Diagnosis, pd.DataFrame]:
    uri, results = runs
    table = _table(uri, results[name].run_id, tmp_path / name)
    return D.diagnose(table, params=CONFIGS[name].to_dict()), table


def _backprop(table: pd.DataFrame, step: int) -> dict[str, float]:
    rows = table[(table.family == "backprop") & (table.stat == "l2") & (table.step == step)]
    return dict(zip(rows.layer.astype(str), rows.value))


def _hidden(d: D.Diagnosis) -> list[D.LayerEvidence]:
    return [e for e in d.layers if e.judged]


# -- the verdicts ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_deep_sigmoid_vanishes_and_the_gains_are_the_norms_quotients(runs, tmp_path) -> None:
    d, table = _diagnosis(runs, "vanishing", tmp_path)
    assert [e.layer for e in d.layers] == [f"L{i:03d}" for i in range(20)] + ["out"]  # forward order
    assert {e.verdict for e in _hidden(d)} == {"vanishing"} and d.verdict == "vanishing"
    norms = _backprop(table, 0)
    for e, after in zip(d.layers, d.layers[1:]):  # hand-computed ‖∂L/∂x_l‖/‖∂L/∂x_{l+1}‖ at step 0
        assert e.gain_start == pytest.approx(norms[e.layer] / norms[after.layer], rel=1e-12)
    assert d.gain_start.gain < 1 / V.LAYER_GAIN_BAND
    # Mean-field theory at width 32 and the measured geometric mean over 19 layers agree to a few per cent.
    assert d.gain_start.gain == pytest.approx(d.predicted_gain, rel=0.1)
    assert all(note.startswith("tiny updates") for e in _hidden(d) for note in e.notes)  # not "raise the rate"
    assert "vanishing" in d.summary() and "Why won't my network train?" in d.markdown()


@pytest.mark.slow
def test_relu_with_a_large_init_explodes(runs, tmp_path) -> None:
    d, _ = _diagnosis(runs, "exploding", tmp_path)
    assert runs[1]["exploding"].outcome == "completed"
    assert {e.verdict for e in _hidden(d)} == {"exploding"} and d.verdict == "exploding"
    assert d.gain_start.gain > V.LAYER_GAIN_BAND


@pytest.mark.slow
def test_a_large_negative_bias_kills_the_units_and_the_gradient_behind_them(runs, tmp_path) -> None:
    d, table = _diagnosis(runs, "dead", tmp_path)
    by_layer = {e.layer: e for e in d.layers}
    dead = f"L{DEAD_LAYER:03d}"
    assert by_layer[dead].verdict == "dead units" and d.verdict == "dead units"
    saturation = table[(table.family == "act") & (table.stat == "saturation") & (table.layer == dead)].value
    assert by_layer[dead].inactive_start == saturation.iloc[0] >= V.DEAD_SHARE
    # No gradient gets past the dead layer: the layers before it receive none.
    assert all(by_layer[f"L{i:03d}"].verdict == "vanishing" for i in range(DEAD_LAYER))
    # The layers after it see zero inputs and zero biases (Kaiming zeroes them): dead as well.
    off = table[(table.family == "act") & (table.stat == "saturation")].groupby("layer", observed=True).value.max()
    assert d.named("dead units") == [str(layer) for layer in off.index if off[layer] >= V.DEAD_SHARE]
    assert d.named("dead units")[0] == dead


@pytest.mark.slow
def test_a_healthy_kaiming_relu_net_is_healthy(runs, tmp_path) -> None:
    d, _ = _diagnosis(runs, "healthy", tmp_path)
    assert {e.verdict for e in d.layers} == {"healthy"} and d.verdict == "healthy"
    assert d.summary().startswith("healthy")


@pytest.mark.slow
def test_a_diverged_run_says_so_at_the_step_the_lab_recorded(runs, tmp_path) -> None:
    d, _ = _diagnosis(runs, "diverged", tmp_path)
    result = runs[1]["diverged"]
    assert result.outcome == "diverged"
    assert d.verdict == "diverged" and d.diverged_step == result.diverged_step
    assert f"diverged at step {result.diverged_step}" in d.answer()


# -- the mean-field prediction ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_prediction_is_the_analysis_one_and_the_closed_form(runs, tmp_path) -> None:
    d, table = _diagnosis(runs, "vanishing", tmp_path)
    first = table[(table.family == "act") & (table.layer == "L000") & (table.step == 0)].set_index("stat").value
    expected, rule = predicted_layer_gains(CONFIGS["vanishing"].to_dict(), first["mean"] ** 2 + first["std"] ** 2)
    assert rule == MEAN_FIELD and np.allclose([e.predicted for e in d.layers[:19]], expected, rtol=1e-12)
    # ReLU under Kaiming: σ_w² = 2 and E[1(z > 0)] = 1/2, so χ₁ = 1 at every depth.
    healthy, _ = _diagnosis(runs, "healthy", tmp_path)
    assert [e.predicted for e in healthy.layers[:3]] == pytest.approx([1.0] * 3, rel=1e-9)
    assert math.isnan(healthy.layers[3].predicted)  # the readout: no prediction


def test_the_prediction_matches_a_monte_carlo_of_the_tanh_chain() -> None:
    arch = D.MeanField("tanh", "xavier_normal", width=200, depth=4, gain=1.5)
    got = D.predicted_chain_gains(arch, first_m2=0.7)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    sw2, q = 1.5**2, 1.5**2 * 0.7  # Xavier with fan_in = fan_out: σ_w² = gain²; no bias
    for gain in got:
        assert gain == pytest.approx(math.sqrt(sw2 * np.mean((1 - np.tanh(math.sqrt(q) * z) ** 2) ** 2)), rel=2e-3)
        q = sw2 * np.mean(np.tanh(math.sqrt(q) * z) ** 2)


def test_no_prediction_outside_the_plain_chain() -> None:
    assert (
        D.mean_field_from_params(
            {
                "model": "mlp",
                "norm": "batch",
                "activation": "relu",
                "init": "kaiming_normal",
                "width": "8",
                "depth": "3",
            }
        )
        is None
    )
    assert (
        D.mean_field_from_params(
            {"model": "cnn", "activation": "relu", "init": "kaiming_normal", "width": 8, "depth": 3}
        )
        is None
    )
    assert (
        D.mean_field_from_params(
            {"activation": "relu", "init": "kaiming_normal", "width": "8", "depth": "__import__('os')"}
        )
        is None
    )  # untrusted params are parsed, not run


# -- reports, histories, the command line ------------------------------------------------------------


@pytest.mark.slow
def test_every_lab_run_logs_its_diagnosis(runs, tmp_path) -> None:
    uri, results = runs
    d, _ = _diagnosis(runs, "dead", tmp_path)
    path = MlflowClient(uri).download_artifacts(results["dead"].run_id, D.DIAGNOSIS_ARTIFACT, str(tmp_path))
    assert Path(path).read_text(encoding="utf-8") == d.markdown()


@pytest.mark.slow
def test_a_failing_diagnosis_only_warns_and_the_run_finishes(tracking, tiny_cfg, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("broken diagnosis")

    monkeypatch.setattr(D, "diagnose", broken)
    with pytest.warns(UserWarning, match="broken diagnosis"):
        result = train.run(tiny_cfg, progress_bar=False)
    client = MlflowClient()
    assert client.get_run(result.run_id).info.status == "FINISHED" and result.outcome == "completed"
    assert D.DIAGNOSIS_ARTIFACT not in [f.path for f in client.list_artifacts(result.run_id)]


def _metrics_only_run(uri: str, table: pd.DataFrame) -> str:
    """A run with the same statistics as metric histories only (as Lightning's MLFlowLogger records them)."""
    from mlflow.entities import Metric

    from gradprobe import keys as K

    client = MlflowClient(uri)
    run_id = client.create_run("0").info.run_id
    metrics = [
        Metric(K.key(r.family, r.layer or None, r.stat), float(r.value), 0, int(r.step))
        for r in table.itertuples()
        if r.family != "val"
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.set_terminated(run_id)
    return run_id


@pytest.mark.slow
def test_a_run_with_metric_histories_only_gives_the_same_verdicts(runs, tmp_path) -> None:
    uri, _ = runs
    d, table = _diagnosis(runs, "dead", tmp_path)
    run_id = _metrics_only_run(uri, table)
    read, params = D.read_run(MlflowClient(uri), run_id)
    assert params == {}
    again = D.diagnose(read, activations="relu")
    assert [(e.layer, e.verdict) for e in again.layers] == [(e.layer, e.verdict) for e in d.layers]
    assert [e.gain_start for e in again.layers] == pytest.approx([e.gain_start for e in d.layers], nan_ok=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "gradprobe.diagnose", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_the_command_prints_writes_and_logs_the_report(runs, tmp_path) -> None:
    uri, results = runs
    run_id = results["vanishing"].run_id
    out = tmp_path / "report.md"
    done = _cli("--run-id", run_id, "--tracking-uri", uri, "--out", str(out), "--log")
    assert done.returncode == 0, done.stderr
    d, _ = _diagnosis(runs, "vanishing", tmp_path)
    assert done.stdout.strip() == d.markdown().strip() == out.read_text(encoding="utf-8").strip()
    assert "| `L018` | vanishing |" in done.stdout and "| `L019` | healthy |" in done.stdout  # L019: into the readout
    logged = MlflowClient(uri).download_artifacts(run_id, D.DIAGNOSIS_ARTIFACT, str(tmp_path / "dl"))
    assert Path(logged).read_text(encoding="utf-8").strip() == d.markdown().strip()


@pytest.mark.slow
def test_the_command_reads_a_run_without_parquet(runs, tmp_path) -> None:
    uri, _ = runs
    _, table = _diagnosis(runs, "healthy", tmp_path)
    done = _cli("--run-id", _metrics_only_run(uri, table), "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr
    assert "| `L000` | healthy |" in done.stdout and "| `out` |" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing run", "no store", "bad flag", "bad out"])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, case) -> None:
    uri, results = runs
    absent = tmp_path / "absent.db"
    args = {
        "missing run": ["--run-id", "0" * 32, "--tracking-uri", uri],
        "no store": ["--run-id", results["healthy"].run_id, "--tracking-uri", f"sqlite:///{absent}"],
        "bad flag": ["--run-id", results["healthy"].run_id, "--tracking-uri", uri, "--colour", "red"],
        "bad out": [
            "--run-id",
            results["healthy"].run_id,
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "no" / "x.md"),
        ],
    }[case]
    done = _cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert not absent.exists() and not (tmp_path / "no").exists()  # reading never creates a store or a folder


def test_layer_names_from_a_store_cannot_break_the_report() -> None:
    hostile = "a|b<script>`x`\nz"
    rows = [(0, name, "backprop", "l2", v) for name, v in [("L000", 1.0), (hostile, 1.0), ("out", 1.0)]]
    report = D.diagnose(pd.DataFrame(rows, columns=D.COLUMNS)).markdown()
    table_rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert len(table_rows) == 3 and "<script>" not in report
    assert all(line.count(" | ") == 8 for line in table_rows)  # nine cells: no extra column from the name's `|`


def test_layers_keep_the_order_they_first_appear_in() -> None:
    names = ["encoder.layers.0.self_attn.out_proj", "encoder.layers.0.linear1", "encoder.layers.0.linear2", "head"]
    rows = [(step, name, "backprop", "l2", 1.0) for step in (0, 1) for name in names]
    assert [e.layer for e in D.diagnose(pd.DataFrame(rows, columns=D.COLUMNS)).layers] == names


def test_verdict_rules_at_their_thresholds() -> None:
    band = V.LAYER_GAIN_BAND
    assert [V.gain_verdict(g) for g in (0.0, 0.99 / band, 1.0, band * 1.01, math.nan)] == [
        "vanishing",
        "vanishing",
        "healthy",
        "exploding",
        "healthy",
    ]
    assert V.saturation_verdict(V.DEAD_SHARE, "relu") == "dead units"
    assert V.saturation_verdict(V.DEAD_SHARE * 0.99, "relu") == "healthy"
    assert V.saturation_verdict(V.SATURATED_SHARE, "tanh") == "saturated"
    assert V.saturation_verdict(0.99, None, act_mean=0.0, act_std=0.0) == "dead units"  # outputs all zero
    assert V.saturation_verdict(0.99, None, act_mean=0.3, act_std=0.1) == "saturated"
    assert V.saturation_verdict(0.6, None, act_mean=0.3, act_std=0.4) == "healthy"  # a ReLU layer, kind unknown
    assert V.learning_rate_advice(V.UPDATE_RATIO_LOW / 2) == "learning rate likely too low"
    assert V.learning_rate_advice(V.UPDATE_RATIO_HIGH * 2) == "learning rate likely too high"
    assert V.learning_rate_advice(1e-3) == ""
    assert V.worst(["healthy", "vanishing", "dead units"]) == "dead units"


def test_without_mlflow_the_package_diagnoses_and_the_command_says_what_is_missing() -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None; import pandas as pd; from gradprobe import diagnose as D; "
        "rows = [(0, n, 'backprop', 'l2', 1.0) for n in ('a', 'b', 'c')]; "
        "print(D.diagnose(pd.DataFrame(rows, columns=D.COLUMNS)).verdict); sys.exit(D.main(['--run-id', 'x']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "healthy"  # the diagnosis itself needs no MLflow
    assert done.returncode == 2 and done.stderr.startswith("error: mlflow=") and len(done.stderr.splitlines()) == 1


@pytest.mark.slow
def test_log_diagnosis_through_lightnings_mlflow_logger(runs, tmp_path) -> None:
    from pytorch_lightning.loggers import MLFlowLogger

    uri, _ = runs
    d, table = _diagnosis(runs, "healthy", tmp_path)
    logger = MLFlowLogger(experiment_name="diagnosis", tracking_uri=uri, artifact_location=str(tmp_path / "art"))
    assert D.log_diagnosis(table, logger, params=CONFIGS["healthy"].to_dict()) is not None
    logged = MlflowClient(uri).download_artifacts(logger.run_id, D.DIAGNOSIS_ARTIFACT, str(tmp_path / "dl"))
    assert Path(logged).read_text(encoding="utf-8") == d.markdown()
