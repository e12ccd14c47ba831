"""The gradient probe inside a real Lightning fit, against brute-force autograd and a hand-written NumPy backprop.

Each test trains a tiny model through `pipelines.train.build` + `make_trainer` with a probe whose recording
function keeps every record, snapshots the weights after every step with a callback of its own, and
recomputes the statistics from the initial weights and the same batches (the data module's loader with
the same seed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from gradprobe import stats
from gradprobe.activations import make_activation
from oracles import reference
from pipelines import train
from pipelines.config import RunConfig
from pipelines.data import TaskData
from tests.grad_oracle import weight_stats

# Every test twice: the statistics through the fused kernels and through eager PyTorch, both against autograd.
pytestmark = pytest.mark.usefixtures("statistics_path")

SATURATION_SHARE = 0.05  # the README's definition: φ' below 5 % of its largest value

GRAD_STATS = ("l2", "rms", "absmax", "mean", "std", "nonfinite")


def loss_of(cfg: RunConfig, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The configured loss, spelled out (MSE for classification: on softmax probabilities vs one-hot)."""
    if cfg.loss == "ce":
        return F.cross_entropy(out, y)
    assert cfg.loss == "mse"
    if cfg.task == "classification":
        return F.mse_loss(out.softmax(-1), F.one_hot(y, out.shape[-1]).to(out.dtype))
    return F.mse_loss(out, y)


# -- running the pipeline ---------------------------------------------------------------------------


@dataclass
class Fit:
    cfg: RunConfig
    net0: torch.nn.Module  # the network before the first step
    records: dict[int, dict[str, float]] = field(default_factory=dict)
    after: list[dict[str, torch.Tensor]] = field(default_factory=list)  # state after step 0, 1, …

    def net_at(self, step: int) -> torch.nn.Module:
        """A copy of the network as it was at the start of `step`."""
        net = copy.deepcopy(self.net0)
        if step > 0:
            net.load_state_dict(self.after[step - 1])
        return net

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches in order, from a fresh data module with the same seed."""
        cfg = self.cfg
        data = TaskData(
            cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed
        )
        loader = iter(data.train_dataloader())
        return [next(loader) for _ in range(cfg.max_steps)]


class Snapshots(pl.Callback):
    def __init__(self, fit: Fit) -> None:
        self.fit = fit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.fit.after.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def run_fit(callbacks: tuple[pl.Callback, ...] = (), **overrides) -> Fit:
    cfg = RunConfig(**{"depth": 3, "width": 16, "max_steps": 1, "batch_size": 32, "log_every": 1, **overrides})
    data, lit = train.build(cfg)
    fit = Fit(cfg, copy.deepcopy(lit.net))

    def record(step: int, keys: list[str], values: list[float]) -> None:
        assert step not in fit.records and len(keys) == len(values) == len(set(keys))
        fit.records[step] = dict(zip(keys, values))

    probe = train.make_probe(cfg, lit, record)
    trainer = train.make_trainer(cfg, [probe, Snapshots(fit), *callbacks], progress_bar=False)
    trainer.fit(lit, datamodule=data)
    assert len(fit.after) == (cfg.max_steps if probe.diverged_step is None else probe.diverged_step + 1)
    assert not any(m._forward_hooks for m in lit.net.modules())  # hooks stay only between logging steps
    return fit


# -- brute force ----------------------------------------------------------------------------------


def derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """φ'(z) elementwise, by autograd of the activation module."""
    z = z.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(make_activation(name)(z).sum(), z)
    return grad


def saturation(name: str, z: torch.Tensor) -> float:
    """Share of units whose φ'(z) is below 5 % of the largest φ' (found on a grid)."""
    peak = derivative(name, torch.linspace(-10, 10, 200_001, dtype=torch.float64)).max().item()
    return (derivative(name, z) < SATURATION_SHARE * peak).double().mean().item()


def main_weight(model: str, block: torch.nn.Module) -> torch.nn.Parameter:
    """The contract's 'main weight', spelled out per family."""
    return {
        "mlp": lambda b: b.linear.weight,
        "resmlp": lambda b: b.branch.linear.weight,
        "cnn": lambda b: b.conv.weight,
    }[model](block)


def act_module(model: str, block: torch.nn.Module) -> torch.nn.Module:
    return block.branch.act if model == "resmlp" else block.act


def reference_feedforward(cfg: RunConfig, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Every step statistic of a feed-forward family by autograd on retained block outputs."""
    outputs: list[torch.Tensor] = []
    acts: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in net.layers]
    handles += [
        act_module(cfg.model, b).register_forward_hook(lambda m, i, o: acts.append((i[0], o))) for b in net.layers
    ]
    logits = net(x)
    for h in handles:
        h.remove()
    loss = loss_of(cfg, logits, y)
    weights = [main_weight(cfg.model, b) for b in net.layers] + [net.readout.weight]
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params + outputs + [logits])
    g_params, g_outputs = grads[: len(params)], grads[len(params) :]
    by_param = {id(p): g for p, g in zip(params, g_params)}
    names = [f"L{i:03d}" for i in range(len(net.layers))] + ["out"]
    expected = {
        "train/loss": loss.item(),
        "grad/global_l2": torch.sqrt(sum(g.double().pow(2).sum() for g in g_params)).item(),
    }
    for name, w, g_out in zip(names, weights, g_outputs):
        expected.update(weight_stats(name, by_param[id(w)]))
        expected[f"backprop/l2/{name}"] = torch.linalg.norm(g_out.flatten()).item()
    for name, (z, a) in zip(names, acts):
        a = a.detach().double()
        expected[f"act/mean/{name}"] = a.mean().item()
        expected[f"act/std/{name}"] = a.std(correction=0).item()
        expected[f"act/saturation/{name}"] = saturation(cfg.activation, z.double())
    return expected


def assert_matches(got: dict[str, float], expected: dict[str, float], rel: float = 2e-4) -> None:
    for key, value in expected.items():
        assert key in got, f"{key} was not recorded"
        if key.endswith(("/mean", "/saturation")):  # near-zero means: compare on the scale of the spread
            scale = abs(expected.get(key.replace("/mean", "/rms"), 0.0)) + abs(
                expected.get(key.replace("/mean", "/std"), 0.0)
            )
            assert got[key] == pytest.approx(value, rel=rel, abs=max(1e-6, rel * scale)), key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


def contract_keys(n_hidden: int) -> set[str]:
    hidden = [f"L{i:03d}" for i in range(n_hidden)]
    keys = {"train/loss", "grad/global_l2", "grad/global_l2_clipped", "time/elapsed"}
    keys |= {f"grad/{s}/{layer}" for layer in hidden + ["out"] for s in GRAD_STATS}
    keys |= {f"backprop/l2/{layer}" for layer in hidden + ["out"]}
    keys |= {f"update/ratio/{layer}" for layer in hidden + ["out"]}
    keys |= {f"act/{s}/{layer}" for layer in hidden for s in ("mean", "std", "saturation")}
    return keys


def update_ratio(before: torch.Tensor, after: torch.Tensor) -> float:
    before, after = before.double(), after.double()
    return (torch.linalg.norm((after - before).flatten()) / torch.linalg.norm(before.flatten())).item()


# -- feed-forward families ------------------------------------------------------------------------


def test_every_step_of_an_mlp_matches_autograd() -> None:
    fit = run_fit(max_steps=6)
    cfg = fit.cfg
    assert sorted(fit.records) == list(range(6))
    assert set(fit.records[0]) == contract_keys(3)
    batches = fit.batches()
    for step, (x, y) in enumerate(batches):
        net = fit.net_at(step)
        expected = reference_feedforward(cfg, net, x, y)
        got = fit.records[step]
        assert_matches(got, expected)
        assert got["grad/global_l2_clipped"] == got["grad/global_l2"]  # clip=none
        # The update of this step, from the weights before and after it.
        after = fit.net_at(step + 1)
        for i, name in enumerate(["L000", "L001", "L002", "out"]):
            w0 = net.layers[i].linear.weight if name != "out" else net.readout.weight
            w1 = after.layers[i].linear.weight if name != "out" else after.readout.weight
            assert got[f"update/ratio/{name}"] == pytest.approx(update_ratio(w0, w1), rel=1e-4), (step, name)


class DoubleFirstWeight(pl.Callback):
    """Doubles L000's weight in place before step 2, after the probe's pass at step 1 has copied it for step 2."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 2:
            with torch.no_grad():
                pl_module.net.layers[0].linear.weight.mul_(2)


def test_a_weight_changed_between_logging_steps_is_copied_again() -> None:
    """The copy taken at the end of step 1 is stale once the weight changes: step 2's ratio uses the new one."""
    fit = run_fit(callbacks=(DoubleFirstWeight(),), max_steps=4)
    before, after = 2 * fit.after[1]["layers.0.linear.weight"], fit.after[2]["layers.0.linear.weight"]
    assert fit.records[2]["update/ratio/L000"] == pytest.approx(update_ratio(before, after), rel=1e-4)
    assert update_ratio(fit.after[1]["layers.0.linear.weight"], after) > 0.5  # what a stale copy would give


def test_first_update_is_plain_sgd_and_its_ratio_is_lr_times_gradient_over_weight() -> None:
    fit = run_fit(lr=0.3)
    net = fit.net_at(0)
    x, y = fit.batches()[0]
    loss = F.cross_entropy(net(x), y)
    w = net.layers[1].linear.weight
    (g,) = torch.autograd.grad(loss, w)
    w1 = fit.after[0]["layers.1.linear.weight"]
    torch.testing.assert_close(w1, w.detach() - 0.3 * g, rtol=1e-5, atol=1e-7)
    expected = 0.3 * torch.linalg.norm(g).item() / torch.linalg.norm(w.detach()).item()
    assert fit.records[0]["update/ratio/L001"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(model="mlp", activation="sigmoid", norm="batch", init="xavier_normal"),
        dict(model="mlp", activation="gelu", norm="layer"),
        dict(model="resmlp", activation="tanh", norm="layer", res_scale=0.5),
        dict(model="cnn", activation="relu", depth=2, width=6, pool="max"),
        dict(model="cnn", activation="leaky_relu", depth=2, width=6, stride=2, head="flatten", loss="mse"),
    ],
    ids=["mlp-sigmoid-batch", "mlp-gelu-layer", "resmlp-tanh-layer", "cnn-relu-pool", "cnn-leaky-stride-mse"],
)
def test_step0_of_other_families_matches_autograd(overrides: dict) -> None:
    fit = run_fit(**overrides)
    x, y = fit.batches()[0]
    assert set(fit.records[0]) == contract_keys(fit.cfg.depth)
    assert_matches(fit.records[0], reference_feedforward(fit.cfg, fit.net_at(0), x, y))


@pytest.mark.parametrize("log_every, max_steps, logged", [(2, 5, [0, 2, 4]), (3, 6, [0, 3, 5]), (4, 5, [0, 4])])
def test_logging_schedule_and_updates_between_logging_steps(log_every: int, max_steps: int, logged: list[int]) -> None:
    fit = run_fit(log_every=log_every, max_steps=max_steps, depth=2, width=8)
    assert sorted(fit.records) == logged
    batches = fit.batches()
    for step in logged:
        net, after = fit.net_at(step), fit.net_at(step + 1)
        x, y = batches[step]
        assert_matches(fit.records[step], reference_feedforward(fit.cfg, net, x, y))
        expected = update_ratio(net.layers[0].linear.weight, after.layers[0].linear.weight)
        assert fit.records[step]["update/ratio/L000"] == pytest.approx(expected, rel=1e-4)


# -- hand-written backprop (the seed formulas) ----------------------------------------------------


@pytest.mark.parametrize("activation", sorted(reference.ACTIVATIONS))
def test_mlp_matches_a_numpy_backprop_of_the_seed_formulas(activation: str) -> None:
    fit = run_fit(activation=activation, depth=2, width=8, init="xavier_normal", init_gain=2.0)
    sd = {k: v.double().numpy() for k, v in fit.net0.state_dict().items()}
    x, y = fit.batches()[0]
    prefixes = ["layers.0.linear", "layers.1.linear", "readout"]
    weights = [sd[f"{p}.weight"] for p in prefixes]
    biases = [sd[f"{p}.bias"] for p in prefixes]
    # oracles/reference.py: δᴸ = (softmax(z) − onehot(y)) / B; ∂L/∂W = δ·aᵀ; ∂L/∂a = Wᵀ·δ; δ = ∂L/∂a ⊙ φ'(z)
    bp = reference.mlp_backprop(x.double().numpy(), y.numpy(), weights, biases, activation, "ce")
    names = ["L000", "L001", "out"]
    grad_w = dict(zip(names, bp.dW))
    # ∂L/∂(block output) = ∂L/∂a of the next layer's input; for `out`, ∂L/∂logits = δᴸ
    backprop = {"L000": np.linalg.norm(bp.da[1]), "L001": np.linalg.norm(bp.da[2]), "out": np.linalg.norm(bp.delta[-1])}
    got = fit.records[0]
    assert got["train/loss"] == pytest.approx(bp.loss, rel=1e-5)
    for name in names:
        assert got[f"grad/l2/{name}"] == pytest.approx(np.linalg.norm(grad_w[name]), rel=1e-4), name
        assert got[f"grad/absmax/{name}"] == pytest.approx(np.abs(grad_w[name]).max(), rel=1e-4), name
        assert got[f"backprop/l2/{name}"] == pytest.approx(backprop[name], rel=1e-4), name
    global_l2 = np.sqrt(sum((g**2).sum() for g in [*bp.dW, *bp.db]))
    assert got["grad/global_l2"] == pytest.approx(global_l2, rel=1e-4)
    assert backprop["L000"] > 0 and grad_w["L000"].any()  # the case exercises every layer


# -- clipping -------------------------------------------------------------------------------------


def _all_grads(cfg: RunConfig, net: torch.nn.Module, x, y) -> list[torch.Tensor]:
    loss = loss_of(cfg, net(x), y)
    return list(torch.autograd.grad(loss, list(net.parameters())))


@pytest.mark.parametrize("threshold", [0.05, 100.0])
def test_norm_clipping_records_the_norm_before_and_min_threshold_norm_after(threshold: float) -> None:
    fit = run_fit(clip="norm", clip_threshold=threshold, max_steps=3, lr=0.1)
    for step, (x, y) in enumerate(fit.batches()):
        net = fit.net_at(step)
        grads = _all_grads(fit.cfg, net, x, y)
        norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads)).item()
        got = fit.records[step]
        assert got["grad/global_l2"] == pytest.approx(norm, rel=1e-4)
        assert got["grad/global_l2_clipped"] == pytest.approx(min(threshold, norm), rel=1e-4)
        # Per-layer gradients are recorded before clipping.
        g0 = grads[[n for n, _ in net.named_parameters()].index("layers.0.linear.weight")]
        assert got["grad/l2/L000"] == pytest.approx(torch.linalg.norm(g0).item(), rel=1e-4)
        # The step taken used the clipped gradient: ΔW = −lr · g · min(1, threshold / norm).
        w0 = net.layers[0].linear.weight.detach()
        expected = 0.1 * torch.linalg.norm(g0).item() * min(1.0, threshold / norm) / torch.linalg.norm(w0).item()
        assert got["update/ratio/L000"] == pytest.approx(expected, rel=1e-3)
    if threshold < 1:
        assert all(r["grad/global_l2"] > threshold for r in fit.records.values())  # clipping really happened


def test_value_clipping_bounds_every_gradient_entry_by_the_threshold() -> None:
    threshold, lr = 0.004, 0.5
    fit = run_fit(clip="value", clip_threshold=threshold, max_steps=2, lr=lr)
    for step, (x, y) in enumerate(fit.batches()):
        net, after = fit.net_at(step), fit.net_at(step + 1)
        grads = _all_grads(fit.cfg, net, x, y)
        clipped = torch.sqrt(sum(g.double().clamp(-threshold, threshold).pow(2).sum() for g in grads)).item()
        got = fit.records[step]
        assert got["grad/global_l2_clipped"] == pytest.approx(clipped, rel=1e-4)
        assert got["grad/global_l2_clipped"] < got["grad/global_l2"]
        for i, name in enumerate(["L000", "L001", "L002"]):
            step_size = (after.layers[i].linear.weight - net.layers[i].linear.weight).abs().max().item() / lr
            assert got[f"grad/absmax/{name}"] > threshold  # recorded before clipping
            assert step_size == pytest.approx(min(threshold, got[f"grad/absmax/{name}"]), rel=1e-3)


# -- recurrent families ---------------------------------------------------------------------------


def reference_recurrent(cell: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Step the fused PyTorch module one time step at a time, keeping each h_t in the graph."""
    seq = x
    layer_outputs, states, gate_values = [], [], []
    for layer in net.layers:
        rnn = layer.rnn
        hs, hidden, gates = [], None, []
        for t in range(seq.shape[1]):
            h_prev = x.new_zeros(len(x), rnn.hidden_size) if hidden is None else hs[-1]
            out, hidden = rnn(seq[:, t : t + 1], hidden)
            h = out[:, 0]
            hs.append(h)
            hidden = (h[None], hidden[1]) if isinstance(hidden, tuple) else h[None]  # recur through h itself
            if cell in ("lstm", "gru"):  # PyTorch's gate order: LSTM (i, f, g, o), GRU (r, z, n); the 2nd
                n = rnn.hidden_size
                pre = seq[:, t] @ rnn.weight_ih_l0[n : 2 * n].T + rnn.bias_ih_l0[n : 2 * n]
                pre = pre + h_prev @ rnn.weight_hh_l0[n : 2 * n].T + rnn.bias_hh_l0[n : 2 * n]
                gates.append(pre.detach())
        seq = torch.stack(hs, dim=1)
        layer_outputs.append(seq)
        states.append(hs)
        gate_values.append(torch.stack(gates) if gates else None)
    pred = net.readout(seq[:, -1])
    loss = F.mse_loss(pred, y)
    flat_states = [h for hs in states for h in hs]
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params + layer_outputs + flat_states + [pred])
    g_params = grads[: len(params)]
    g_layers = grads[len(params) : len(params) + len(layer_outputs)]
    g_states = grads[len(params) + len(layer_outputs) : -1]
    by_param = {id(p): g for p, g in zip(params, g_params)}
    T = x.shape[1]
    expected = {"train/loss": loss.item(), "backprop/l2/out": torch.linalg.norm(grads[-1]).item()}
    expected["grad/global_l2"] = torch.sqrt(sum(g.double().pow(2).sum() for g in g_params)).item()
    expected.update(weight_stats("out", by_param[id(net.readout.weight)]))
    for i, layer in enumerate(net.layers):
        name = f"L{i:03d}"
        expected.update(weight_stats(name, by_param[id(layer.rnn.weight_hh_l0)]))
        expected[f"backprop/l2/{name}"] = torch.linalg.norm(g_layers[i]).item()
        per_t = [torch.linalg.norm(g).item() for g in g_states[i * T : (i + 1) * T]]
        for t, value in enumerate(per_t):
            expected[f"bptt/t{t:04d}/{name}"] = value
        expected[f"bptt/first/{name}"], expected[f"bptt/last/{name}"] = per_t[0], per_t[-1]
        expected[f"bptt/ratio/{name}"] = per_t[0] / per_t[-1]
        h = layer_outputs[i].detach().double()
        expected[f"act/mean/{name}"] = h.mean().item()
        expected[f"act/std/{name}"] = h.std(correction=0).item()
        expected[f"act/saturation/{name}"] = ((1 - h**2) < SATURATION_SHARE).double().mean().item()  # tanh' = 1 − h²
        if gate_values[i] is not None:
            gate = {"lstm": "forget", "gru": "update"}[cell]
            z = gate_values[i].double()
            expected[f"gate/{gate}_mean/{name}"] = torch.sigmoid(z).mean().item()
            expected[f"gate/{gate}_saturation/{name}"] = saturation("sigmoid", z)
    return expected


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_steps_and_bptt_match_autograd_through_time(cell: str) -> None:
    """Every step, with a validation pass between each two (the hooks stay on: it must not reach them)."""
    seq_len = 8
    fit = run_fit(
        model=cell,
        activation="tanh",
        dataset="adding",
        loss="mse",
        seq_len=seq_len,
        depth=2,
        width=6,
        batch_size=16,
        init="orthogonal",
        init_gain=1.5,
        max_steps=3,
        val_every=1,
    )
    assert sorted(fit.records) == [0, 1, 2]
    for step, (x, y) in enumerate(fit.batches()):
        expected = reference_recurrent(cell, fit.net_at(step), x, y)
        got = fit.records[step]
        expected_keys = contract_keys(2) | {k for k in expected if k.startswith(("bptt/", "gate/"))}
        assert set(got) == expected_keys
        assert {k for k in got if k.startswith("bptt/t") and k.endswith("/L001")} == {
            f"bptt/t{t:04d}/L001" for t in range(seq_len)
        }
        assert_matches(got, expected)
        assert expected["bptt/t0000/L000"] != pytest.approx(expected["bptt/t0007/L000"], rel=1e-2)  # varies with t


def test_lstm_forget_gate_by_hand() -> None:
    """Two LSTM units over two steps, the forget gate written out from PyTorch's documented equations."""
    fit = run_fit(
        model="lstm",
        dataset="adding",
        loss="mse",
        seq_len=2,
        depth=1,
        width=2,
        batch_size=4,
        init="normal",
        forget_bias=0.7,
    )
    # init=normal zeroes the biases but the forget gate's (forget_bias): every gate pre-activation at t = 0 is
    # W_ih x_0 (+ 0.7 for f), at t = 1 adds W_hh h_0.
    net = fit.net_at(0)
    x, _ = fit.batches()[0]
    w_f = net.layers[0].rnn.weight_ih_l0[2:4]
    u_f = net.layers[0].rnn.weight_hh_l0[2:4]
    w_i, w_g, w_o = (net.layers[0].rnn.weight_ih_l0[k : k + 2] for k in (0, 4, 6))
    f0 = torch.sigmoid(x[:, 0] @ w_f.T + 0.7)
    c0 = torch.sigmoid(x[:, 0] @ w_i.T) * torch.tanh(x[:, 0] @ w_g.T)
    h0 = torch.sigmoid(x[:, 0] @ w_o.T) * torch.tanh(c0)
    f1 = torch.sigmoid(x[:, 1] @ w_f.T + h0 @ u_f.T + 0.7)
    gates = torch.stack([f0, f1])
    assert fit.records[0]["gate/forget_mean/L000"] == pytest.approx(gates.mean().item(), rel=1e-5)
    sat = ((gates * (1 - gates)) < SATURATION_SHARE * 0.25).float().mean().item()
    assert fit.records[0]["gate/forget_saturation/L000"] == pytest.approx(sat, abs=1e-6)


# -- divergence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("log_every", [1, 4])  # the diverged step (2) is a logging step, or not
def test_diverged_step_records_its_own_norms_not_a_stale_clipped_norm(log_every: int) -> None:
    fit = run_fit(lr=1e6, init="kaiming_normal", max_steps=6, log_every=log_every)
    diverged = max(fit.records)
    got = fit.records[diverged]
    x, y = fit.batches()[diverged]
    grads = _all_grads(fit.cfg, fit.net_at(diverged), x, y)
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads)).item()
    # Diverged: a norm beyond float32's squares (no clipping could use it), recorded as it is (or inf/NaN).
    assert not norm <= stats.LARGEST_NORM
    assert (
        got["grad/global_l2"] == pytest.approx(norm, rel=1e-5)
        if np.isfinite(norm)
        else not np.isfinite(got["grad/global_l2"])
    )
    # No step is taken and nothing is clipped: the "after clipping" norm is this step's norm, not a
    # value left over from an earlier logging step, nor the norm of the dropped (absent) gradients.
    assert got["grad/global_l2_clipped"] == got["grad/global_l2"] or not np.isfinite(got["grad/global_l2_clipped"])
    assert fit.after[diverged - 1]["layers.0.linear.weight"].equal(fit.after[diverged]["layers.0.linear.weight"])


# -- vanishing gradients far below float32's squares ----------------------------------------------


def _backprop_norms_in_float64(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """‖∂loss/∂(each block's output)‖ by autograd on a float64 copy of the network (nothing underflows there)."""
    net = copy.deepcopy(net).double()
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in net.layers]
    loss = F.cross_entropy(net(x.double()), y)
    for h in handles:
        h.remove()
    return [torch.linalg.vector_norm(g).item() for g in torch.autograd.grad(loss, outputs)]


def test_a_sigmoid_mlp_of_depth_48_records_its_vanishing_backprop_norms() -> None:
    """Step 0 of a 48 × 256 sigmoid MLP on digits: ‖∂L/∂h‖ falls below 1e-20 near the input and is recorded
    as it is (float32 sums of squares make it 0), against float64 autograd."""
    fit = run_fit(depth=48, width=256, activation="sigmoid", dataset="digits", batch_size=64, init="xavier_normal")
    x, y = fit.batches()[0]
    expected = _backprop_norms_in_float64(fit.net_at(0), x, y)
    got = [fit.records[0][f"backprop/l2/L{i:03d}"] for i in range(48)]
    assert expected[0] < 1e-19  # the regime where float32 squares underflow
    assert got[0] > 0
    # float32 autograd against float64 through 48 layers: rounding, not underflow, sets the tolerance.
    assert got == pytest.approx(expected, rel=1e-3, abs=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_gradient_through_time_to_h0_at_init_is_recorded_as_it_is(cell: str) -> None:
    """‖∂L/∂h_0‖ of a long sequence at init: tiny but not 0, and the float64 autograd value."""
    seq_len = 100
    fit = run_fit(
        model=cell,
        activation="tanh",
        dataset="adding",
        loss="mse",
        seq_len=seq_len,
        depth=1,
        width=32,
        batch_size=16,
        init="orthogonal",
        init_gain=0.5,
        forget_bias=0.0,
    )
    x, y = fit.batches()[0]
    net = copy.deepcopy(fit.net_at(0)).double()
    expected = reference_recurrent(cell, net, x.double(), y.double())
    got = fit.records[0]
    assert 0 < expected["bptt/t0000/L000"] < 1e-22  # float32 squares of its entries are 0
    for t in (0, 1, 50, seq_len - 1):
        key = f"bptt/t{t:04d}/L000"
        assert got[key] == pytest.approx(expected[key], rel=1e-3, abs=0), key
