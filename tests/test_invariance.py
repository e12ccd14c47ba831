"""Invariance tests: exact shift invariance where theory says so, broken equivariance where it says not, the
gradient identities of batch norm and ReLU against autograd, the entry point with reuse, and the report."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT
from mlflow.tracking import MlflowClient

from analysis import invariance_report, load
from common import liveness
from experiments.invariance import measures
from experiments.invariance import zoo as experiment
from gradprobe import keys as K
from models.registry import create_model
from studies import tree

N_OUT = 10
SHAPES = {"1d": ((1, 40), "signal"), "2d": ((1, 8, 8), "image")}


def cnn(dims: str, dtype=torch.float32, **options) -> torch.nn.Module:
    shape, layout = SHAPES[dims]
    options = {"depth": 3, "width": 6, "activation": "relu", "norm": "none", "kernel_size": 3, **options}
    torch.manual_seed(0)
    return create_model("cnn", in_shape=shape, layout=layout, n_outputs=N_OUT, **options).to(dtype).eval()


def inputs(dims: str, n: int = 64, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *SHAPES[dims][0], generator=torch.Generator().manual_seed(1), dtype=dtype)


# -- shifts ---------------------------------------------------------------------------------------


def test_shift_is_roll_or_moves_content_in_from_the_background() -> None:
    x = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert measures.shift(x, 2).flatten().tolist() == [4, 5, 1, 2, 3]
    assert measures.shift(x, 2, circular=False, fill=-1).flatten().tolist() == [-1, -1, 1, 2, 3]
    assert measures.shift(x, -2, circular=False, fill=0).flatten().tolist() == [3, 4, 5, 0, 0]
    assert measures.shift(x, 7, circular=False, fill=9).flatten().tolist() == [9] * 5
    image = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(measures.shift(image, 1), torch.roll(image, (1, 1), (2, 3)))  # 2-D: diagonal
    moved = measures.shift(image, 1, circular=False)
    assert moved[0, 0, 0].eq(0).all() and moved[0, 0, :, 0].eq(0).all()
    torch.testing.assert_close(moved[0, 0, 1:, 1:], image[0, 0, :3, :3])
    blank = torch.full((3, 1, 6, 6), -0.5)
    blank[:, :, 2:4, 2:4] = 3.0
    assert measures.background(blank) == -0.5


# -- exact invariance and broken equivariance -----------------------------------------------------


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_circular_stride1_gap_cnn_is_exactly_shift_invariant(dims: str, norm: str) -> None:
    """Azulay & Weiss 2019: circular stride-1 convolutions and a global average pool make f(T x) = f(x)."""
    net, x = cnn(dims, padding="circular", head="gap", norm=norm), inputs(dims)
    y = torch.randint(0, N_OUT, (len(x),), generator=torch.Generator().manual_seed(2))
    for k in (1, -1, 3):
        assert measures.consistency(net, x, k) == 1.0
        assert measures.prob_change(net, x, k) <= 1e-6
        errors = measures.equivariance_errors(net, x, k)
        assert list(errors) == ["L000", "L001", "L002"] and max(errors.values()) <= 1e-6
    accuracy = measures.accuracy_vs_shift(net, x, y, range(-3, 4))
    assert len(set(accuracy.values())) == 1  # the same accuracy at every circular shift
    rows = pd.DataFrame(measures.shift_metrics(net, x, y, 3, fill=0.0))
    circular = rows[(rows["mode"] == "circ") & (rows["metric"] == "consistency")]
    assert (circular["value"] == 1.0).all() and len(circular) == 7  # six shifts and the one-step summary


@pytest.mark.parametrize("dims", SHAPES)
def test_zero_padding_breaks_equivariance_at_every_layer(dims: str) -> None:
    errors = measures.equivariance_errors(cnn(dims, padding="zeros"), inputs(dims), 1)
    assert min(errors.values()) > 1e-2


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("subsample", [{"stride": 2}, {"pool": "max"}])
def test_subsampling_is_equivariant_only_for_multiples_of_the_stride(dims: str, subsample: dict) -> None:
    net, x = cnn(dims, padding="circular", **subsample), inputs(dims)
    assert measures.layer_strides(net) == {"L000": 2, "L001": 4, "L002": 8}
    assert measures.equivariance_errors(net, x, 1)["L000"] > 1e-2  # a shift by 1 has no counterpart on the output grid
    assert measures.equivariance_errors(net, x, 2)["L000"] <= 1e-6  # a shift by 2 moves the output by exactly 1
    assert measures.equivariance_errors(net, x, 4)["L001"] <= 1e-6
    assert measures.equivariance_errors(net, x, 2)["L001"] > 1e-2  # 2 is not a multiple of L001's stride 4
    rows = pd.DataFrame(measures.equivariance_rows(net, x))
    assert set(zip(rows["layer"], rows["shift"])) == {
        ("L000", 1),
        ("L001", 1),
        ("L002", 1),
        ("L000", 2),
        ("L001", 4),
        ("L002", 8),
    }


# -- gradient identities against autograd ---------------------------------------------------------


def _model(name: str, norm: str) -> torch.nn.Module:
    torch.manual_seed(3)
    if name == "mlp":
        return create_model(
            "mlp", in_shape=(1, 8, 8), layout="image", n_outputs=N_OUT, depth=3, width=12, activation="relu", norm=norm
        )
    return create_model(
        "cnn",
        in_shape=(1, 8, 8),
        layout="image",
        n_outputs=N_OUT,
        depth=3,
        width=6,
        activation="relu",
        norm=norm,
        pool="max",
        padding="zeros",
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, N_OUT, (32,), generator=g)


def _grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: list) -> tuple[torch.Tensor, tuple]:
    out = net(x)
    return out, torch.autograd.grad(F.cross_entropy(out, y), params)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("c", [0.3, 3.0])
def test_batch_norm_makes_the_layer_scale_invariant_and_its_gradient_scale_by_one_over_c(name: str, c: float) -> None:
    net, (x, y) = _model(name, "batch"), _batch()
    measured = measures.batchnorm_scale_check(net, x, y, c)
    assert measured["out_change"] <= 1e-10 and measured["grad_err"] <= 1e-9
    assert measured["grad_scale"] == pytest.approx(1 / c, rel=1e-9)
    assert 0 < measured["out_change_eps"] < 1e-2  # PyTorch's eps = 1e-5 perturbs the identity slightly
    assert measured["step_change"] > 1e-4  # the same function takes a different SGD step
    # Independently, with autograd: W → c·W before the batch norm (train mode, eps → 0, float64).
    base = net.double().train()
    for m in base.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-30
    x = x.double()
    weight = base.layers[0].main_weight
    out, (g,) = _grads(base, x, y, [weight])
    with torch.no_grad():
        weight.mul_(c)
    out_scaled, (g_scaled,) = _grads(base, x, y, [weight])
    torch.testing.assert_close(out_scaled, out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(c * g_scaled, g, rtol=1e-7, atol=1e-12)
    assert measured["grad_scale"] == pytest.approx(float(g_scaled.norm() / g.norm()), rel=1e-9)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("layer", [0, 2])  # layer 2 is the last block: its partner is the readout
@pytest.mark.parametrize("c", [0.3, 3.0])
def test_relu_rescaling_keeps_the_function_and_scales_the_gradients(name: str, layer: int, c: float) -> None:
    net, (x, y) = _model(name, "none"), _batch()
    measured = measures.relu_rescaling_check(net, x, y, c, layer=layer)
    assert measured["out_change"] <= 1e-12 and measured["grad_err"] <= 1e-10
    assert measured["grad_scale_l"] == pytest.approx(1 / c, rel=1e-10)
    assert measured["grad_scale_next"] == pytest.approx(c, rel=1e-10)
    assert measured["step_change"] > 1e-6
    # Independently, with autograd: block `layer` (weight and bias) × c, the next layer's weight × 1/c.
    base = net.double().eval()
    x = x.double()
    first = base.layers[layer].conv if name == "cnn" else base.layers[layer].linear
    nxt = base.layers[layer + 1].main_weight if layer + 1 < len(base.layers) else base.readout.weight
    out, (g_l, g_next) = _grads(base, x, y, [first.weight, nxt])
    with torch.no_grad():
        first.weight.mul_(c)
        first.bias.mul_(c)
        nxt.div_(c)
    out_scaled, (g_l_scaled, g_next_scaled) = _grads(base, x, y, [first.weight, nxt])
    torch.testing.assert_close(out_scaled, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c * g_l_scaled, g_l, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_next_scaled / c, g_next, rtol=1e-10, atol=1e-14)


def test_the_checks_refuse_networks_they_do_not_apply_to() -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match="no batch norm"):
        measures.batchnorm_scale_check(_model("mlp", "none"), x, y, 2.0)
    with pytest.raises(ValueError, match="without normalization"):
        measures.relu_rescaling_check(_model("mlp", "batch"), x, y, 2.0)
    with pytest.raises(ValueError, match="c must be > 0"):
        measures.relu_rescaling_check(_model("mlp", "none"), x, y, -1.0)


# -- keys, MLproject ------------------------------------------------------------------------------


def test_metric_keys() -> None:
    assert K.shift_key("trained", "consistency", "circ", 1) == "invariance/trained/consistency_circ_1"
    assert K.shift_key("init", "acc", "zero", -3) == "invariance/init/acc_zero_-3"
    assert K.shift_key("trained", "prob_change", "circ") == "invariance/trained/prob_change_circ"
    assert K.eqerr_key("init", "L000", 1) == "invariance/init/eqerr/L000/shift_1"
    assert K.gradcheck_key("trained", K.BN_SCALE, 0.3, "grad_scale") == "invariance/trained/bn_scale/c0.3/grad_scale"


def test_mlproject_entry_points_parse_with_their_defaults() -> None:
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    spec = entries["invariance"]
    command = shlex.split(spec["command"].format(**{n: p["default"] for n, p in spec["parameters"].items()}))
    assert command[:3] == ["python", "-m", "experiments.invariance"]
    args = experiment.make_parser().parse_args(command[3:])
    assert args.retrain is False and args.max_steps == experiment.BASE["max_steps"]
    report = shlex.split(
        entries["invariance_report"]["command"].format(
            **{n: p["default"] for n, p in entries["invariance_report"]["parameters"].items()}
        )
    )
    assert report[:3] == ["python", "-m", "analysis.invariance_report"]


def test_bad_arguments_exit_2_before_anything_runs(capsys) -> None:
    assert experiment.main(["--models", "mlp,resnet"]) == 2
    assert "resnet" in capsys.readouterr().err
    assert experiment.main(["--max-steps", "0"]) == 2
    assert "max_steps=0" in capsys.readouterr().err


# -- the report from measured numbers (no MLflow) ------------------------------------------------


def _measured_zoo(names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A zoo table and metrics as measure() makes them, from untrained tiny nets (both states the same)."""
    zoo, tables = [], []
    for i, name in enumerate(names):
        cfg = experiment.zoo_config(name, "digits", width=4, depth=2)
        net, data, loss_fn = experiment.load_net(cfg)
        x, y = (t[:128] for t in data.val.tensors)
        rows = measures.shift_metrics(net, x, y, 2, 0.0)
        if hasattr(net, "features"):
            rows += measures.equivariance_rows(net, x)
        rows += measures.gradient_rows(net, x[:32], y[:32], loss_fn, (0.5, 3.0))
        table = pd.DataFrame([{**r, "state": s} for s in K.INVARIANCE_STATES for r in rows])
        table["key"] = [experiment.row_key(r) for r in table.to_dict("records")]
        table["run_id"] = f"run{i}"
        tables.append(table)
        zoo.append({"dataset": "digits", "model": name, "run_id": f"run{i}", "reused": False})
    return pd.DataFrame(zoo), pd.concat(tables, ignore_index=True)


def test_report_renders_every_figure_and_the_verdict(tmp_path: Path) -> None:
    zoo, metrics = _measured_zoo(["mlp", "cnn_circ", "cnn_circ_stride2", "cnn_circ_bn"])
    invocation = pd.Series({"run_id": "invocation", "role": "parent"})
    index = invariance_report.write_report(invocation, zoo, metrics, tmp_path / "invariance")
    page = index.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert (
        set(images) == {f"{n}.png" for n in invariance_report.FIGURES} == {p.name for p in index.parent.glob("*.png")}
    )
    assert page.count("<b>exactly invariant</b>") == 2 and "NOT exact" not in page  # cnn_circ and cnn_circ_bn
    summary = pd.read_csv(index.parent / "summary.csv")
    assert list(summary["model"]) == list(zoo["model"])
    assert summary.loc[summary["model"] == "cnn_circ", "consistency_circ_trained"].item() == 1.0
    assert summary.loc[summary["model"] == "cnn_circ_stride2", "eqerr_k1_max_init"].item() > 1e-2


# -- the entry point end to end -------------------------------------------------------------------

TINY = [
    "--models",
    "mlp,cnn_circ,cnn_circ_bn",
    "--datasets",
    "digits",
    "--max-steps",
    "4",
    "--width",
    "6",
    "--threads",
    str(torch.get_num_threads()),
]


@pytest.mark.slow
def test_entry_point_trains_logs_reuses_and_reports(tracking: str, tmp_path: Path) -> None:
    assert experiment.main(TINY) == 0
    client = MlflowClient()
    trials = load.runs(K.INVARIANCE)
    assert len(trials) == 3 and set(trials[K.INVARIANCE_ZOO_TAG]) == {"mlp", "cnn_circ", "cnn_circ_bn"}
    parent = load.runs(K.INVARIANCE, role="parent")
    assert len(parent) == 1 and (trials["parent_run_id"] == parent["run_id"].item()).all()
    circ = trials.loc[trials[K.INVARIANCE_ZOO_TAG] == "cnn_circ", "run_id"].item()
    run = client.get_run(circ)
    assert run.info.status == "FINISHED" and run.data.tags["role"] == "trial"
    assert {a.path for a in client.list_artifacts(circ, "model")} == {experiment.MODEL_ARTIFACT}
    metrics = run.data.metrics
    for state in K.INVARIANCE_STATES:
        assert metrics[K.shift_key(state, "consistency", "circ")] == 1.0
        assert metrics[K.eqerr_key(state, "L000", 1)] <= 1e-6
        assert metrics[K.shift_key(state, "prob_change", "circ")] <= 1e-6
        assert K.gradcheck_key(state, K.RELU_RESCALE, 3.0, "grad_scale_l") in metrics
    bn = trials.loc[trials[K.INVARIANCE_ZOO_TAG] == "cnn_circ_bn", "run_id"].item()
    assert client.get_run(bn).data.metrics[K.gradcheck_key("trained", K.BN_SCALE, 3.0, "grad_scale")] == pytest.approx(
        1 / 3, rel=1e-6
    )
    table = load.invariance_metrics(trials)
    assert set(table["run_id"]) == set(trials["run_id"])
    assert (table.groupby("run_id")["key"].apply(lambda k: k.is_unique)).all()
    logged = client.get_run(circ).data.metrics
    assert all(
        logged[k] == pytest.approx(v, rel=1e-6, abs=1e-12)
        for k, v in zip(table.loc[table["run_id"] == circ, "key"], table.loc[table["run_id"] == circ, "value"])
    )
    index = tmp_path / "reports" / "invariance" / "index.html"
    assert index.exists() and "<b>exactly invariant</b>" in index.read_text(encoding="utf-8")
    parent_id = parent["run_id"].item()
    assert {Path(a.path).name for a in client.list_artifacts(parent_id, "report")} >= {"index.html", "consistency.png"}

    # Second invocation: every model is reused (no new training run), tested again, nested as a worker.
    assert experiment.main(TINY) == 0
    assert len(load.runs(K.INVARIANCE)) == 3
    invocation, zoo = load.invariance_invocation()
    assert invocation["role"] == "worker" and invocation["parent_run_id"] == parent_id
    assert zoo["reused"].all() and set(zoo["run_id"]) == set(trials["run_id"])
    # A different configuration is trained, not reused.
    assert experiment.main([*TINY[:4], "--models", "mlp", "--max-steps", "5", *TINY[6:]]) == 0
    assert len(load.runs(K.INVARIANCE)) == 4
    # The report regenerates from MLflow alone, for a chosen invocation.
    assert invariance_report.main(["--run-id", invocation["run_id"], "--out-dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "invariance" / "gradient_checks.png").exists()


# -- the run tree is the studies' (studies/tree.py) -------------------------------------------------


def test_an_invocation_that_fails_ends_failed_with_the_reason(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cfg, run_id):  # the measurement fails after the model trained
        raise RuntimeError("measurement broke")

    monkeypatch.setattr(experiment, "measure", broken)
    with pytest.raises(RuntimeError, match="measurement broke"):
        experiment.main(["--models", "mlp", *TINY[2:]])
    parent = load.runs(K.INVARIANCE, role="parent")
    run = MlflowClient().get_run(parent["run_id"].item())
    assert run.info.status == "FAILED"
    assert run.data.tags[tree.FAILURE_TAG] == "RuntimeError: measurement broke"


def test_runs_of_the_tree_left_by_a_dead_process_are_closed(tracking: str) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = MlflowClient()
    orphan = client.create_run(
        "0", tags={"study": K.INVARIANCE, "role": tree.WORKER, **liveness.identity(int(dead.stdout))}
    ).info.run_id
    other = client.create_run("0", tags={"study": "another", **liveness.identity(int(dead.stdout))}).info.run_id
    parent, own, _ = experiment.attach(client)
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["outcome"] == liveness.KILLED_OUTCOME
    assert client.get_run(other).info.status == "RUNNING"  # another study's run is not this tree's
    assert parent == own and client.get_run(own).data.tags["role"] == tree.PARENT
