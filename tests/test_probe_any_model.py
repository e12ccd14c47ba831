"""The probe on networks the lab did not write: every layer kind against brute-force autograd, any loop.

Each case states its layers by hand (id, weight, the module whose output is the layer's output, the activation
after it), trains a few SGD steps through the plain-loop API, and recomputes every recorded statistic from the
weights before each step and the same batch: autograd on retained outputs, hidden states of recurrent modules
unrolled one time step at a time, norms by torch.linalg in float64.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import gradprobe
from gradprobe import Probe
from tests.grad_oracle import weight_stats

SATURATION_SHARE = 0.05  # φ' below 5 % of its largest value


# -- brute force ----------------------------------------------------------------------------------


def derivative(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """φ'(z) elementwise, by autograd of the activation module."""
    z = z.detach().double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(z).sum(), z)
    return grad


def saturation(module: nn.Module, z: torch.Tensor) -> float:
    """Share of units whose φ'(z) is below 5 % of the largest φ' (found on a grid)."""
    peak = derivative(module, torch.linspace(-10, 10, 200_001)).max().item()
    return (derivative(module, z) < SATURATION_SHARE * peak).double().mean().item()


def act_stats(layer: str, a: torch.Tensor, sat: float) -> dict[str, float]:
    a = a.detach().double()
    return {
        f"act/mean/{layer}": a.mean().item(),
        f"act/std/{layer}": a.std(correction=0).item(),
        f"act/saturation/{layer}": sat,
    }


@dataclass
class Spec:
    """One layer as the test expects it: its id, weight, output module (None: unseen), activation after it.

    act: the name of the activation module, "output" (its own output, saturation unknown) or None (no `act`).
    """

    id: str
    weight: str
    output: str | None
    act: str | None


def first(output):
    return output[0] if isinstance(output, tuple) else output


def reference(model: nn.Module, x, target, specs: list[Spec]) -> dict[str, float]:
    """Every statistic of one step by autograd on the outputs retained by forward hooks."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name in {s.output for s in specs if s.output is not None}:
        handles.append(
            modules[name].register_forward_hook(lambda m, i, o, n=name: [seen.setdefault(n, first(o))][:0] or None)
        )
    for name in {s.act for s in specs if s.act not in (None, "output")}:
        handles.append(
            modules[name].register_forward_hook(lambda m, i, o, n=name: [io.setdefault(n, (i[0], o))][:0] or None)
        )
    loss = F.mse_loss(model(x), target)
    for h in handles:
        h.remove()
    params = dict(model.named_parameters())
    names = sorted(seen)
    grads = torch.autograd.grad(loss, list(params.values()) + [seen[n] for n in names])
    by_param = dict(zip(params, grads[: len(params)]))
    by_output = dict(zip(names, grads[len(params) :]))
    expected = {"train/loss": loss.item()}
    expected["grad/global_l2"] = math.sqrt(sum(g.double().pow(2).sum().item() for g in by_param.values()))
    for s in specs:
        expected.update(weight_stats(s.id, by_param[s.weight]))
        if s.output is not None:
            expected[f"backprop/l2/{s.id}"] = torch.linalg.norm(by_output[s.output].double().flatten()).item()
        if s.act == "output":
            expected.update(act_stats(s.id, seen[s.output], math.nan))
        elif s.act is not None:
            z, a = io[s.act]
            expected.update(act_stats(s.id, a, saturation(modules[s.act], z)))
    return expected


def assert_matches(got: dict[str, float], expected: dict[str, float], rel: float = 2e-4) -> None:
    for key, value in expected.items():
        assert key in got, f"{key} was not recorded"
        if math.isnan(value):
            assert math.isnan(got[key]), key
        elif "/mean/" in key or "/saturation/" in key:  # near-zero means: compare on the scale of the spread
            spread = abs(expected.get(key.replace("/mean/", "/std/"), 0.0)) + abs(
                expected.get(key.replace("/mean/", "/rms/"), 0.0)
            )
            assert got[key] == pytest.approx(value, rel=rel, abs=max(1e-6, rel * spread)), key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


def update_ratio(before: torch.Tensor, after: torch.Tensor) -> float:
    before, after = before.double(), after.double()
    return (torch.linalg.norm((after - before).flatten()) / torch.linalg.norm(before.flatten())).item()


# -- the plain loop -------------------------------------------------------------------------------


@dataclass
class Run:
    records: dict[int, dict[str, float]]
    order: dict[int, list[str]]  # the keys of each record, in their order
    states: list[dict[str, torch.Tensor]]  # the weights before step 0, 1, …, and after the last
    probe: Probe


def plain_loop(
    model: nn.Module, batches, *, lr: float = 0.1, clip: float | None = None, log_every: int = 1, **probe_args
) -> Run:
    """SGD on `batches` with the plain-loop API; the records and the weights around every step."""
    run = Run({}, {}, [], None)

    def sink(step: int, keys: list[str], values: list[float]) -> None:
        assert step not in run.records and len(keys) == len(values) == len(set(keys))
        run.records[step], run.order[step] = dict(zip(keys, values)), keys

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    run.probe = probe = Probe(model, log_every=log_every, max_steps=len(batches), sink=sink, **probe_args)
    for step, (x, y) in enumerate(batches):
        run.states.append(copy.deepcopy(model.state_dict()))
        probe.begin(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        probe.gradients(loss)
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        probe.end()
    run.states.append(copy.deepcopy(model.state_dict()))
    probe.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    return run


def at(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    net = copy.deepcopy(model)
    net.load_state_dict(state)
    return net


def check_steps(model0: nn.Module, run: Run, batches, specs: list[Spec]) -> None:
    """Every step's record against autograd, its update ratios against the weights around it, and no other layer key."""
    for step, (x, y) in enumerate(batches):
        got = run.records[step]
        assert_matches(got, reference(at(model0, run.states[step]), x, y, specs))
        for s in specs:
            expected = update_ratio(run.states[step][s.weight], run.states[step + 1][s.weight])
            assert got[f"update/ratio/{s.id}"] == pytest.approx(expected, rel=1e-4), (step, s.id)
        ids = {key.rsplit("/", 1)[1] for key in got if key.count("/") == 2}
        assert ids == {s.id for s in specs}
        for s in specs:  # a layer records backprop and act exactly where it has them
            assert (f"backprop/l2/{s.id}" in got) == (s.output is not None), s.id
            assert (f"act/mean/{s.id}" in got) == (s.act is not None), s.id


def batches_for(model: nn.Module, make_x, n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = make_x(gen)
        with torch.no_grad():
            shape = copy.deepcopy(model)(x).shape
        out.append((x, torch.randn(shape, generator=gen)))
    return out


def randn(*shape):
    return lambda gen: torch.randn(*shape, generator=gen)


# Every feed-forward layer kind, in a small network; the ids are the modules' qualified names.
CASES = {
    "linear": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)),
        randn(16, 6),
        [Spec("0", "0.weight", "0", "1"), Spec("2", "2.weight", "2", None)],
    ),
    "conv1d": (
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)),
        randn(8, 2, 8),
        [Spec("0", "0.weight", "0", "1"), Spec("3", "3.weight", "3", None)],
    ),
    "conv2d": (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 25, 2)),
        randn(8, 2, 5, 5),
        [Spec("0", "0.weight", "0", "1"), Spec("3", "3.weight", "3", None)],
    ),
    "conv3d": (
        lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.LeakyReLU(0.01), nn.Flatten(), nn.Linear(2 * 27, 2)),
        randn(6, 1, 4, 4, 4),
        [Spec("0", "0.weight", "0", "1"), Spec("3", "3.weight", "3", None)],
    ),
    "convtranspose2d": (
        lambda: nn.Sequential(nn.ConvTranspose2d(2, 3, 2, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 36, 2)),
        randn(8, 2, 3, 3),
        [Spec("0", "0.weight", "0", "1"), Spec("3", "3.weight", "3", None)],
    ),
    "embedding": (
        lambda: nn.Sequential(nn.Embedding(10, 6), nn.Flatten(), nn.Linear(6 * 5, 3)),
        lambda gen: torch.randint(0, 10, (16, 5), generator=gen),
        [Spec("0", "0.weight", "0", "output"), Spec("2", "2.weight", "2", None)],
    ),
    # the ReLU follows the norm: it is the norm's activation; the conv's own output is its `act` (saturation NaN)
    "batchnorm2d": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 9, 2)),
        randn(8, 2, 5, 5),
        [Spec("0", "0.weight", "0", "output"), Spec("1", "1.weight", "1", "2"), Spec("4", "4.weight", "4", None)],
    ),
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)),
        randn(16, 6),
        [Spec("0", "0.weight", "0", "output"), Spec("1", "1.weight", "1", "2"), Spec("3", "3.weight", "3", None)],
    ),
    "groupnorm": (
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 4, 2)),
        randn(8, 2, 6),
        [Spec("0", "0.weight", "0", "output"), Spec("1", "1.weight", "1", "2"), Spec("4", "4.weight", "4", None)],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_step_of_each_layer_kind_matches_autograd(case: str) -> None:
    make, make_x, specs = CASES[case]
    torch.manual_seed(0)
    model = make()
    model0 = copy.deepcopy(model)
    batches = batches_for(model, make_x)
    run = plain_loop(model, batches)
    assert [layer.id for layer in run.probe.layers] == [s.id for s in specs]
    check_steps(model0, run, batches, specs)


class Attention(nn.Module):
    """Self-attention then a readout; `separate` gives the attention distinct key/value sizes (q/k/v weights)."""

    def __init__(self, separate: bool) -> None:
        super().__init__()
        kv = dict(kdim=5, vdim=3) if separate else {}
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **kv)
        self.keys, self.values = (nn.Linear(8, 5), nn.Linear(8, 3)) if separate else (None, None)
        self.readout = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.keys(x) if self.keys is not None else x
        v = self.values(x) if self.values is not None else x
        return self.readout(self.attn(x, k, v)[0])


@pytest.mark.parametrize("separate", [False, True], ids=["packed-in-proj", "q-k-v-weights"])
def test_multihead_attention_projections_match_autograd(separate: bool) -> None:
    """in_proj: its weight's gradient (its output is internal to attention); out_proj: also ∂L/∂(attention output)."""
    torch.manual_seed(0)
    model = Attention(separate)
    model0 = copy.deepcopy(model)
    batches = batches_for(model, randn(4, 6, 8))
    run = plain_loop(model, batches)
    in_weight = "attn.q_proj_weight" if separate else "attn.in_proj_weight"
    specs = [
        Spec("attn.in_proj", in_weight, None, None),
        Spec("attn.out_proj", "attn.out_proj.weight", "attn", "output"),
        Spec("readout", "readout.weight", "readout", None),
    ]
    if separate:
        specs = [
            Spec("keys", "keys.weight", "keys", "output"),
            Spec("values", "values.weight", "values", "output"),
            *specs,
        ]
    assert [layer.id for layer in run.probe.layers] == [s.id for s in specs]  # forward order
    check_steps(model0, run, batches, specs)


# -- recurrent modules ----------------------------------------------------------------------------


class Sequence(nn.Module):
    def __init__(self, cell: str, batch_first: bool, initial_state: bool) -> None:
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = cls(3, 5, batch_first=batch_first)
        self.readout = nn.Linear(5, 2)
        self.batch_first, self.initial_state = batch_first, initial_state
        self.h0 = nn.Parameter(torch.randn(1, 1, 5) * 0.5, requires_grad=False)

    def state(self, batch: int):
        if not self.initial_state:
            return None
        h0 = self.h0.expand(1, batch, 5).contiguous()
        return (h0, 0.3 * h0) if isinstance(self.rnn, nn.LSTM) else h0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.rnn(x, self.state(x.shape[0 if self.batch_first else 1]))[0]
        return self.readout(seq[:, -1] if self.batch_first else seq[-1])


def reference_recurrent(model: Sequence, x: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The fused module stepped one time step at a time, each h_t kept in the graph; the 2nd gate by hand."""
    rnn, n = model.rnn, model.rnn.hidden_size
    xt = x.transpose(0, 1) if model.batch_first else x  # (T, B, F)
    hidden = model.state(xt.shape[1])
    hs, gates = [], []
    for t in range(xt.shape[0]):
        h_prev = (
            (hidden[0] if isinstance(hidden, tuple) else hidden)[0]
            if hidden is not None
            else xt.new_zeros(xt.shape[1], n)
        )
        out, hidden = rnn(x[:, t : t + 1] if model.batch_first else x[t : t + 1], hidden)
        h = out[:, 0] if model.batch_first else out[0]
        hs.append(h)
        hidden = (h[None], hidden[1]) if isinstance(hidden, tuple) else h[None]  # recur through h itself
        pre = xt[t] @ rnn.weight_ih_l0[n : 2 * n].T + rnn.bias_ih_l0[n : 2 * n]
        gates.append(torch.sigmoid(pre + h_prev @ rnn.weight_hh_l0[n : 2 * n].T + rnn.bias_hh_l0[n : 2 * n]).detach())
    seq = torch.stack(hs)  # (T, B, H)
    pred = model.readout(seq[-1])
    loss = F.mse_loss(pred, target)
    params = dict(model.named_parameters())
    trainable = {k: p for k, p in params.items() if p.requires_grad}
    grads = torch.autograd.grad(loss, [*trainable.values(), *hs, pred])
    by_param = dict(zip(trainable, grads[: len(trainable)]))
    per_t = [torch.linalg.norm(g.double()).item() for g in grads[len(trainable) : -1]]
    expected = {"train/loss": loss.item(), "backprop/l2/readout": torch.linalg.norm(grads[-1]).item()}
    expected["grad/global_l2"] = math.sqrt(sum(g.double().pow(2).sum().item() for g in by_param.values()))
    expected.update(weight_stats("rnn", by_param["rnn.weight_hh_l0"]))
    expected.update(weight_stats("readout", by_param["readout.weight"]))
    # ∂L/∂(the module's outputs): only the last step feeds the readout
    expected["backprop/l2/rnn"] = torch.linalg.norm(grads[len(trainable) + len(hs) - 1]).item()
    for t, value in enumerate(per_t):
        expected[f"bptt/t{t:04d}/rnn"] = value
    expected["bptt/first/rnn"], expected["bptt/last/rnn"], expected["bptt/ratio/rnn"] = (
        per_t[0],
        per_t[-1],
        per_t[0] / per_t[-1],
    )
    h = seq.detach().double()
    expected.update(act_stats("rnn", h, ((1 - h**2) < SATURATION_SHARE).double().mean().item()))  # tanh' = 1 − h²
    if not isinstance(rnn, nn.RNN):
        gate = "forget" if isinstance(rnn, nn.LSTM) else "update"
        z = torch.stack(gates).double()
        expected[f"gate/{gate}_mean/rnn"] = z.mean().item()
        expected[f"gate/{gate}_saturation/rnn"] = ((z * (1 - z)) < SATURATION_SHARE * 0.25).double().mean().item()
    return expected


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(
    "batch_first, initial_state", [(True, False), (False, True)], ids=["batch-first", "time-first-h0"]
)
def test_recurrent_modules_and_their_gradients_through_time_match_autograd(
    cell: str, batch_first: bool, initial_state: bool
) -> None:
    torch.manual_seed(1)
    model = Sequence(cell, batch_first, initial_state)
    model0 = copy.deepcopy(model)
    shape = (6, 7, 3) if batch_first else (7, 6, 3)
    batches = batches_for(model, randn(*shape), n=2)
    run = plain_loop(model, batches)
    for step, (x, y) in enumerate(batches):
        got = run.records[step]
        expected = reference_recurrent(at(model0, run.states[step]), x, y)
        assert_matches(got, expected)
        assert {k for k in got if k.startswith(("bptt/", "gate/"))} == {
            k for k in expected if k.startswith(("bptt/", "gate/"))
        }
        assert expected["bptt/t0000/rnn"] != pytest.approx(expected["bptt/t0006/rnn"], rel=1e-2)  # varies with t


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.readout = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.rnn(x)[0][:, -1])


def test_a_two_layer_lstm_is_probed_without_replaying_through_time() -> None:
    """num_layers > 1: weight_hh_l0's gradient, ∂L/∂outputs and the outputs' statistics; no bptt/gate keys."""
    torch.manual_seed(0)
    model = Stacked()
    model0 = copy.deepcopy(model)
    batches = batches_for(model, randn(5, 6, 3), n=1)
    run = plain_loop(model, batches)
    got = run.records[0]
    assert not any(k.startswith(("bptt/", "gate/")) for k in got)
    x, y = batches[0]
    specs = [Spec("rnn", "rnn.weight_hh_l0", "rnn", None), Spec("readout", "readout.weight", "readout", None)]
    expected = reference(at(model0, run.states[0]), x, y, specs)
    seq = at(model0, run.states[0]).rnn(x)[0].detach().double()  # the top layer's h: tanh-bounded
    expected.update(act_stats("rnn", seq, ((1 - seq**2) < SATURATION_SHARE).double().mean().item()))
    assert_matches(got, expected)


# -- which layers, in which order -----------------------------------------------------------------


class Reordered(nn.Module):
    """Modules declared in another order than they run: the readout first, the activation last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8))
        self.stem = nn.Linear(4, 6)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(torch.relu(self.stem(x)))))


def test_layer_ids_are_qualified_names_in_forward_order() -> None:
    torch.manual_seed(0)
    model = Reordered()
    model0 = copy.deepcopy(model)
    probe = Probe(model)
    assert [layer.id for layer in probe.layers] == [
        "head",
        "body.0",
        "body.1",
        "stem",
    ]  # module order, until a step ran
    batches = batches_for(model, randn(16, 4), n=2)
    run = plain_loop(model, batches)
    specs = [
        Spec("stem", "stem.weight", "stem", "output"),
        Spec("body.0", "body.0.weight", "body.0", "output"),
        Spec("body.1", "body.1.weight", "body.1", "act"),
        Spec("head", "head.weight", "head", None),
    ]
    assert [layer.id for layer in run.probe.layers] == [s.id for s in specs]
    for step in run.order:  # every block of the record lists the layers in forward order
        assert [k.rsplit("/", 1)[1] for k in run.order[step] if k.startswith("grad/l2/")] == [s.id for s in specs]
        assert [k.rsplit("/", 1)[1] for k in run.order[step] if k.startswith("act/std/")] == [s.id for s in specs[:3]]
    check_steps(model0, run, batches, specs)


def test_a_filter_an_explicit_list_and_aliases_choose_the_layers_and_their_ids() -> None:
    torch.manual_seed(0)
    model = Reordered()
    model0 = copy.deepcopy(model)
    batches = batches_for(model, randn(16, 4), n=1)
    only_linear = plain_loop(copy.deepcopy(model), batches, layers=lambda name, module: isinstance(module, nn.Linear))
    assert [layer.id for layer in only_linear.probe.layers] == ["stem", "body.0", "head"]
    # a user module chosen as one layer: its first layer's weight, its output, the activation after it
    chosen = plain_loop(model, batches, layers=[model.body, "stem"], names={"body": "B", "stem": "S"})
    specs = [Spec("S", "stem.weight", "stem", "output"), Spec("B", "body.0.weight", "body", "act")]
    assert [layer.id for layer in chosen.probe.layers] == ["S", "B"]
    check_steps(model0, chosen, batches, specs)
    with pytest.raises(ValueError, match="'nope' is not a module"):
        Probe(model, layers=["nope"])


# -- Lightning, on modules the lab did not write ------------------------------------------------------


class Encoder(nn.Module):
    """A 2-layer Transformer encoder over token embeddings, mean-pooled into a regression head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """A torchvision-free small ResNet with batch norm on CIFAR-shaped input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Residual(8), Residual(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class UserModule(pl.LightningModule):
    """An ordinary LightningModule: a network, MSE, SGD; no `net`, no `last_loss`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Before(pl.Callback):
    """The model's weights at the start of every training step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.states.append(copy.deepcopy(pl_module.model.state_dict()))


WORKLOADS = {
    "transformer": (Encoder, lambda gen: torch.randint(0, 20, (8, 10), generator=gen)),
    "resnet": (ResNet, randn(8, 3, 12, 12)),
}


def fit_lightning(make, batches, clip: float, **probe_args) -> tuple[dict[int, dict[str, float]], list, nn.Module]:
    torch.manual_seed(0)
    lit = UserModule(make())
    model0 = copy.deepcopy(lit.model)
    records: dict[int, dict[str, float]] = {}
    probe = gradprobe.GradientProbe(
        log_every=1, sink=lambda s, k, v: records.__setitem__(s, dict(zip(k, v))), **probe_args
    )
    before = Before()
    trainer = pl.Trainer(
        max_steps=len(batches),
        callbacks=[probe, before],
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(lit, torch.utils.data.DataLoader(batches, batch_size=None))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lit.modules())
    return records, before.states, model0


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_the_callback_on_a_users_lightning_module_records_norms_before_and_after_clipping(workload: str) -> None:
    make, make_x = WORKLOADS[workload]
    torch.manual_seed(0)
    batches = batches_for(make(), make_x, n=3)
    clip = 0.05
    records, states, model0 = fit_lightning(make, batches, clip)
    assert sorted(records) == [0, 1, 2]
    for step, (x, y) in enumerate(batches):
        net = at(model0, states[step])
        loss = F.mse_loss(net(x), y)
        loss.backward()
        params = [p for p in net.parameters() if p.grad is not None]
        by_name = {n: p.grad.clone() for n, p in net.named_parameters()}
        norm = nn.utils.clip_grad_norm_(params, clip).item()  # returns the norm before clipping, then clips
        clipped = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params))
        got = records[step]
        assert got["train/loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert got["grad/global_l2"] == pytest.approx(norm, rel=1e-4)
        assert got["grad/global_l2_clipped"] == pytest.approx(clipped, rel=1e-4)
        assert clipped < 0.9 * norm  # clipping bit
        checked = 0
        for name, g in by_name.items():  # per-layer gradients are recorded before clipping
            layer = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and f"grad/l2/model.{layer}" in got:
                assert got[f"grad/l2/model.{layer}"] == pytest.approx(torch.linalg.norm(g).item(), rel=1e-4), name
                checked += 1
        assert checked >= 8
    layers = {key.rsplit("/", 1)[1] for key in records[0] if key.startswith("grad/l2/")}
    if workload == "transformer":
        assert {
            "model.encoder.layers.1.self_attn.in_proj",
            "model.encoder.layers.1.self_attn.out_proj",
            "model.encoder.layers.0.linear2",
            "model.encoder.layers.0.norm1",
            "model.embed",
        } <= layers
        assert got["grad/l2/model.encoder.layers.0.self_attn.in_proj"] == pytest.approx(
            torch.linalg.norm(by_name["encoder.layers.0.self_attn.in_proj_weight"]).item(), rel=1e-4
        )
    else:
        assert {"model.stem.0", "model.stem.1", "model.blocks.1.bn2", "model.head"} <= layers


def test_the_plain_loop_gives_the_callbacks_numbers_on_the_same_seed() -> None:
    make, make_x = WORKLOADS["transformer"]
    torch.manual_seed(0)
    batches = batches_for(make(), make_x, n=3)
    records, _, model0 = fit_lightning(make, batches, clip=0.05)
    model = copy.deepcopy(model0)
    run = plain_loop(_Wrapped(model), batches, lr=0.05, clip=0.05)
    assert sorted(run.records) == sorted(records)
    for step in records:
        assert set(run.records[step]) == set(records[step])
        for key, value in records[step].items():
            if key != "time/elapsed":
                assert run.records[step][key] == pytest.approx(value, rel=1e-5, abs=1e-9, nan_ok=True), (step, key)


class _Wrapped(nn.Module):
    """The plain model under the same attribute name as in the LightningModule, so the layer ids agree."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# -- divergence, import ---------------------------------------------------------------------------------


def test_by_default_a_diverged_step_is_recorded_with_one_warning_and_training_goes_on() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = batches_for(model, randn(16, 4), n=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = plain_loop(model, batches, lr=1e18, log_every=100)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1
    diverged = run.probe.diverged_step
    assert diverged is not None and sorted(run.records) == sorted({0, diverged, 5})  # schedule + the diverged step
    assert not math.isfinite(run.records[diverged]["grad/global_l2"]) or run.records[diverged]["grad/global_l2"] > 1e19
    assert len(run.states) == 7 and not torch.equal(
        run.states[diverged]["0.weight"], run.states[diverged + 1]["0.weight"]
    )


def test_importing_gradprobe_does_not_import_lightning() -> None:
    code = (
        "import sys, gradprobe; assert 'pytorch_lightning' not in sys.modules; "
        "gradprobe.GradientProbe; assert 'pytorch_lightning' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_with_gradient_accumulation_a_record_holds_the_accumulated_gradients() -> None:
    """accumulate_grad_batches=2: one record per optimizer step, its norm that of the summed micro-batch gradients."""
    make, make_x = WORKLOADS["resnet"]
    torch.manual_seed(0)
    batches = batches_for(make(), make_x, n=4)
    torch.manual_seed(0)
    lit = UserModule(make())
    model0 = copy.deepcopy(lit.model)
    records: dict[int, dict[str, float]] = {}
    probe = gradprobe.GradientProbe(log_every=1, sink=lambda s, k, v: records.__setitem__(s, dict(zip(k, v))))
    before = Before()
    trainer = pl.Trainer(
        max_steps=2,
        callbacks=[probe, before],
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(lit, torch.utils.data.DataLoader(batches, batch_size=None))
    assert sorted(records) == [0, 1]
    for step in (0, 1):
        net = at(model0, before.states[2 * step])
        for x, y in batches[2 * step : 2 * step + 2]:
            (F.mse_loss(net(x), y) / 2).backward()  # Lightning scales each micro-batch's loss
        norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in net.parameters()))
        assert records[step]["grad/global_l2"] == pytest.approx(norm, rel=1e-4)
        assert records[step]["grad/l2/model.head"] == pytest.approx(
            torch.linalg.norm(net.head.weight.grad).item(), rel=1e-4
        )


class TwoActivations(nn.Module):
    """Two activation modules after one layer, declared in the other order than they run."""

    def __init__(self) -> None:
        super().__init__()
        self.gelu = nn.GELU()
        self.lin = nn.Linear(4, 8)
        self.tanh = nn.Tanh()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gelu(self.tanh(self.lin(x))))


def test_a_layers_activation_is_the_first_activation_module_called_after_it() -> None:
    torch.manual_seed(0)
    model = TwoActivations()
    model0 = copy.deepcopy(model)
    batches = batches_for(model, randn(16, 4), n=1)
    run = plain_loop(model, batches)
    check_steps(
        model0, run, batches, [Spec("lin", "lin.weight", "lin", "tanh"), Spec("head", "head.weight", "head", None)]
    )
