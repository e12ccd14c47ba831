"""The train entry point end to end: one MLflow run per config, divergence as a result, bad input rejected early."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gradprobe import stats
from gradprobe.recorder import STATS_ARTIFACT
from pipelines import train
from pipelines.config import RunConfig, choices, field_names

ROOT = Path(__file__).resolve().parents[1]

LAYERS = ["L000", "L001", "L002", "out"]
CONTRACT_METRICS = {
    "grad/l2/L000",
    "backprop/l2/L000",
    "act/saturation/L000",
    "update/ratio/L000",
    "grad/global_l2",
    "grad/global_l2_clipped",
    "train/loss",
    "val/loss",
    "val/acc",
}


def _parquet(client: MlflowClient, run_id: str, dst: Path) -> pd.DataFrame:
    dst.mkdir(parents=True, exist_ok=True)
    return pd.read_parquet(client.download_artifacts(run_id, STATS_ARTIFACT, str(dst)))


def _flags(cfg: RunConfig) -> list[str]:
    """The command line that makes `cfg` (every field, as the MLproject command passes them)."""
    return [a for name, value in cfg.to_dict().items() for a in ("--" + name.replace("_", "-"), str(value))]


def _env(tmp: Path, tracking_uri: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    env["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}"
    return env


# -- one run in-process ---------------------------------------------------------------------------


def test_tiny_run_records_the_contract(tracking, tiny_cfg, tmp_path) -> None:
    result = train.run(tiny_cfg, progress_bar=False)
    assert result.outcome == "completed" and result.steps == tiny_cfg.max_steps and result.diverged_step is None
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert str(tmp_path) in run.info.artifact_uri  # artifacts land under the test's folder
    assert run.data.params == {k: str(v) for k, v in tiny_cfg.to_dict().items()}
    assert run.data.tags["outcome"] == "completed" and "diverged_step" not in run.data.tags
    metrics = run.data.metrics
    assert CONTRACT_METRICS <= set(metrics)
    for layer in LAYERS:
        assert {f"grad/l2/{layer}", f"backprop/l2/{layer}", f"update/ratio/{layer}"} <= set(metrics)
    assert 0 <= metrics["val/acc"] <= 1 and math.isfinite(metrics["val/loss"])
    history = sorted(m.step for m in client.get_metric_history(result.run_id, "grad/l2/L000"))
    assert history == list(range(tiny_cfg.max_steps))
    df = _parquet(client, result.run_id, tmp_path / "dl")
    assert list(df.columns) == ["step", "layer", "family", "stat", "value"]
    assert sorted(df[df.family != "val"].step.unique()) == list(range(tiny_cfg.max_steps))
    val = df[(df.family == "val") & (df.stat == "loss")]
    assert val.value.iloc[-1] == pytest.approx(metrics["val/loss"], rel=1e-6)
    step0 = df[df.step == 0]
    grad_l2 = step0[(step0.family == "grad") & (step0.layer == "L000") & (step0.stat == "l2")].value
    assert len(grad_l2) == 1
    first = client.get_metric_history(result.run_id, "grad/l2/L000")
    assert next(m.value for m in first if m.step == 0) == pytest.approx(grad_l2.item(), rel=1e-6)
    # The last train/loss MLflow holds is the one the run reports.
    assert metrics["train/loss"] == pytest.approx(result.metrics["train/loss"], rel=1e-6)


def test_same_config_and_seed_give_identical_tables(tracking, tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg.replace(max_steps=4, norm="batch", activation="tanh")
    client = MlflowClient()
    tables = [
        _parquet(client, train.run(c, progress_bar=False).run_id, tmp_path / f"dl{i}")
        for i, c in enumerate([cfg, cfg, cfg.replace(seed=1)])
    ]
    # time/elapsed and the probe's cost (probe/…) are wall-clock time, which cannot repeat; the rest must, bit for bit.
    tables = [t[~t.family.isin(["time", "probe"])].reset_index(drop=True) for t in tables]
    assert len(tables[0]) > 0
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    assert not tables[0].value.equals(tables[2].value)  # the seed matters, so the comparison can fail


# -- divergence -----------------------------------------------------------------------------------


def _diverging(cfg: RunConfig) -> RunConfig:
    return cfg.replace(lr=1e6, init="kaiming_normal")


def _check_diverged(client: MlflowClient, run_id: str, dst: Path, max_steps: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["outcome"] == "diverged"
    step = int(run.data.tags["diverged_step"])
    assert 0 <= step < max_steps - 1  # stopped before the end
    df = _parquet(client, run_id, dst)
    df = df[df.family != "val"]  # validation of the diverged model may come after
    assert sorted(df.step.unique()) == list(range(step + 1))  # statistics kept, up to the diverged step

    def value(s: int, key: str) -> float:
        family, stat = key.split("/")
        return df[(df.step == s) & (df.family == family) & (df.layer == "") & (df.stat == stat)].value.item()

    # A norm beyond float32's squares is recorded as it is and diverges too (stats.LARGEST_NORM; NaN fails <=).
    finite = [
        math.isfinite(value(s, "train/loss")) and value(s, "grad/global_l2") <= stats.LARGEST_NORM
        for s in range(step + 1)
    ]
    assert finite == [True] * step + [False]  # the first non-finite step is the one named
    assert {m.step for m in client.get_metric_history(run_id, "grad/l2/L000")} == set(range(step + 1))


def test_divergence_is_a_result(tracking, tiny_cfg, tmp_path) -> None:
    cfg = _diverging(tiny_cfg)
    result = train.run(cfg, progress_bar=False)
    assert result.outcome == "diverged" and result.diverged_step is not None
    _check_diverged(MlflowClient(), result.run_id, tmp_path / "dl", cfg.max_steps)


@pytest.mark.slow
def test_divergence_from_the_command_line_exits_0(tmp_path, tiny_cfg, store_uri) -> None:
    cfg = _diverging(tiny_cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train", *_flags(cfg)],
        cwd=tmp_path,
        env=_env(tmp_path, store_uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    client = MlflowClient(store_uri)
    (run,) = client.search_runs(["0"])
    _check_diverged(client, run.info.run_id, tmp_path / "dl", cfg.max_steps)


# -- the command line -----------------------------------------------------------------------------

BAD_INPUT = {
    "unknown-model": (["--model", "transformer"], "model", "transformer"),
    "depth-0": (["--depth", "0"], "depth", "0"),
    "width-0": (["--width", "0"], "width", "0"),
    "lr-0": (["--lr", "0"], "lr", "0"),
    "clip-threshold-0": (["--clip", "norm", "--clip-threshold", "0"], "clip_threshold", "0"),
    "lstm-on-digits": (["--model", "lstm"], "model", "lstm"),
    "mnist-missing": (["--dataset", "mnist", "--data-dir", "{tmp}/nowhere"], "data_dir", "{tmp}/nowhere"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every bad-input case as a real `python -m pipelines.train`, one per core at a time (each imports Lightning)."""
    results, running = {}, []

    def finish(name: str, tmp: Path, proc: subprocess.Popen) -> None:
        out, err = proc.communicate(timeout=300)
        results[name] = tmp, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    for name, (args, _, _) in BAD_INPUT.items():
        if len(running) >= (os.cpu_count() or 2):
            finish(*running.pop(0))
        tmp = tmp_path_factory.mktemp(f"cli-{name}")
        argv = [a.replace("{tmp}", str(tmp)) for a in args]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.train", *argv],
            cwd=tmp,
            env=_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running.append((name, tmp, proc))
    for item in running:
        finish(*item)
    return results


@pytest.mark.slow  # seven interpreters, each importing Lightning (about 6 s of CPU apiece)
@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli_results, case: str) -> None:
    tmp, proc = cli_results[case]
    _, field, value = BAD_INPUT[case]
    value = value.replace("{tmp}", str(tmp))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(rf"\b{field}=", lines[0]), lines[0]
    assert value in lines[0].split(f"{field}=", 1)[1], lines[0]
    assert not (tmp / "mlflow.db").exists() and not (tmp / "mlruns").exists()
    assert sorted(p.name for p in tmp.iterdir()) == []


@pytest.mark.slow
def test_bad_input_message_lists_the_allowed_values(cli_results) -> None:
    line = cli_results["unknown-model"][1].stderr.strip()
    for model in ("mlp", "resmlp", "cnn", "rnn", "lstm", "gru"):
        assert model in line.split("allowed", 1)[1]
    assert "mnist/" in cli_results["mnist-missing"][1].stderr  # says where the files go


def test_help_lists_every_field_as_a_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    flags = set(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", out, flags=re.MULTILINE)) - {"--help"}
    assert flags == {"--" + name.replace("_", "-") for name in field_names()}
    for name in ("model", "init", "optimizer"):  # the allowed values are listed too
        assert all(value in out for value in choices(name))


def test_main_in_process_parses_every_flag(tmp_path, monkeypatch) -> None:
    """config_from_args turns every flag back into the field value (types included)."""
    cfg = RunConfig(
        dataset="adding",
        model="gru",
        loss="huber",
        depth=2,
        width=5,
        lr=0.125,
        init_gain=0.5,
        clip="value",
        clip_threshold=0.25,
        seq_len=7,
        metric_points=0,
        seed=3,
        histograms="on",
    )
    assert train.config_from_args(_flags(cfg)) == cfg
    assert train.config_from_args([]) == RunConfig()
    assert [f.name for f in dataclasses.fields(RunConfig)] == field_names()


# -- under `mlflow run` ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_train_entry_point(tmp_path, store_uri) -> None:
    bin_dir = Path(sys.executable).parent
    env = _env(tmp_path, store_uri)
    env.pop("PYTHONPATH")  # `mlflow run` runs the command from the project root
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    mlflow_cli = shutil.which("mlflow", path=env["PATH"])
    assert mlflow_cli is not None and Path(mlflow_cli).parent == bin_dir
    before = set(os.listdir(ROOT))
    proc = subprocess.run(
        [mlflow_cli, "run", ".", "-e", "train", "--env-manager", "local", "-P", "max_steps=3", "-P", "depth=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(["0"])
    assert len(runs) == 1  # the entry point took over the run `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["outcome"] == "completed"
    assert run.data.params["depth"] == "2" and run.data.params["max_steps"] == "3"
    assert "grad/l2/L001" in run.data.metrics
    assert set(os.listdir(ROOT)) == before  # nothing written into the project


def _hand_gain(table: pd.DataFrame) -> float:
    """(‖∂L/∂x‖ of L000 / of the last hidden layer)^(1/(n−1)) at step 0, straight from the parquet rows."""
    rows = table[(table.family == "backprop") & (table.stat == "l2") & (table.step == 0) & (table.layer != "out")]
    by_layer = dict(zip(rows.layer.astype(str), rows.value))
    first, last = by_layer["L000"], by_layer[max(by_layer)]
    return (first / last) ** (1 / (len(by_layer) - 1))


@pytest.mark.parametrize("activation, depth", [("sigmoid", 6), ("relu", 1)])
def test_the_result_line_names_outcome_and_verdict_and_links_the_run(
    tracking, tmp_path, capsys, activation: str, depth: int
) -> None:
    cfg = RunConfig(depth=depth, width=16, max_steps=3, batch_size=32, activation=activation)
    assert train.main(_flags(cfg)) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    client = MlflowClient()
    (run,) = client.search_runs(["0"])
    run_id = run.info.run_id
    assert line.startswith(f"run {run_id}: {run.data.tags['outcome']} after 3 steps")
    # The probe's price, as the run recorded it (probe/cost_share), in percent to one decimal.
    share = float(re.search(r"\(the probe (\S+) % of training\)", line).group(1))
    assert share == pytest.approx(100 * run.data.metrics["probe/cost_share"], abs=0.051)
    # A local store: the link is to `mlflow ui`'s default address, on the run's page.
    assert line.endswith(f"; http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}")
    if depth == 1:
        assert "verdict: none (needs two hidden layers" in line
        return
    gain = _hand_gain(_parquet(client, run_id, tmp_path / "dl"))
    printed = float(re.search(r"gain at init (\S+):", line).group(1))
    assert printed == pytest.approx(gain, rel=1e-2)  # printed to 3 significant digits
    expected = "vanishing" if gain < 0.95 else "exploding" if gain > 1.05 else "healthy"
    assert f"gain at init {printed:.3g}: {expected};" in line
    assert expected == "vanishing"  # six sigmoid layers at PyTorch's default init: σ′ ≤ 1/4 per layer


def test_a_gan_run_is_not_judged_by_depth(tracking) -> None:
    """A GAN's verdict is its loss's gradient (the report's rule), so its line does not name a depth verdict."""
    cfg = RunConfig(dataset="gmm", loss="gan_saturating", depth=3)
    result = train.RunResult(run_id="a" * 32, outcome="completed", steps=5, metrics={"train/loss": 0.5})
    line = train.result_line(result, cfg, 0.5, "7")
    assert "verdict: see the report (GAN)" in line and "vanishing" not in line
    assert line.endswith(f"http://127.0.0.1:5000/#/experiments/7/runs/{'a' * 32}")
