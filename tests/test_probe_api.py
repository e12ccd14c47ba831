"""The probe's public API: sink protocol, history, cost, the schedule, bad arguments, the definitions' completeness."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradprobe import Probe, definitions, is_logging_step, stats
from gradprobe import keys as K
from gradprobe.layers import activation_name


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def train(
    probe: Probe,
    model: nn.Module,
    steps: int,
    *,
    lr: float = 0.1,
    clip: float | None = None,
    zero_grad_before_end: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SGD through the plain-loop API; the batches it used."""
    gen = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if zero_grad_before_end:
        probe.watch(optimizer)
    batches = []
    for step in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
        batches.append((x, y))
        probe.begin(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if probe.gradients(loss):
            break
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if zero_grad_before_end:
            optimizer.zero_grad()
        probe.end()
    probe.close()
    return batches


def test_the_sink_receives_what_history_keeps_on_the_schedule() -> None:
    received = []
    model = mlp()
    probe = Probe(
        model, log_every=3, max_steps=8, sink=lambda step, keys, values: received.append((step, keys, values))
    )
    train(probe, model, 8)
    assert [step for step, _, _ in received] == [s for s in range(8) if is_logging_step(s, 3, 8)] == [0, 3, 6, 7]
    assert len(probe.history) == len(received)
    for (step, keys, values), kept in zip(received, probe.history):
        assert kept[0] == step and kept[1] is keys and kept[2] is values  # references, not copies
        assert keys[-1] == K.ELAPSED and len(keys) == len(values) == len(set(keys))
    cost = probe.cost()
    assert set(cost) == {"probe_seconds", "train_seconds"}
    assert 0 < cost["probe_seconds"] < cost["train_seconds"]  # its own work is part of the training's wall time


def test_every_key_parses_back_to_a_statistic_of_its_definition() -> None:
    """Keys and values come from one definition per family: each per-layer key names one of its stats."""
    model = mlp()
    probe = Probe(model, log_every=1)
    train(probe, model, 2)
    families = {d.family: d for d in definitions.STATISTICS}
    for _, keys, _ in probe.history:
        for key in keys:
            family, layer, stat = K.parse(key)
            if layer:
                assert stat in families[family].stats, key
                assert layer in {"0", "2", "4"}
        assert [k for k in keys if K.per_layer(k) and K.parse(k)[0] == "grad"] == K.part_keys(
            "grad", definitions.GRAD.stats, ("0", "2", "4")
        )


def test_each_definition_is_complete() -> None:
    """A family, unique stat names, a description, and a computation that exists in gradprobe.stats."""
    assert len({d.family for d in definitions.STATISTICS}) == len(definitions.STATISTICS)
    for d in definitions.STATISTICS:
        assert d.family and d.about and len(set(d.stats)) == len(d.stats) > 0
        assert callable(getattr(stats, d.compute_name, None)), d.compute_name
        assert not any(K.is_layer(s) for s in d.stats)  # what keeps the previous key form readable
    assert K.GRAD_STATS == definitions.GRAD.stats and set(stats.GRAD_ROW) < set(definitions.GRAD.stats)


def test_the_clipped_norm_and_update_come_from_the_optimizer_hook_when_grads_are_zeroed_before_end() -> None:
    model = mlp()
    model0 = copy.deepcopy(model)
    probe = Probe(model, log_every=1)
    ((x, y),) = train(probe, model, 1, clip=0.05, zero_grad_before_end=True)
    grads = torch.autograd.grad(F.mse_loss(model0(x), y), list(model0.parameters()))
    norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))
    got = dict(zip(*probe.history[0][1:]))
    assert got["grad/global_l2"] == pytest.approx(norm, rel=1e-5)
    assert got["grad/global_l2_clipped"] == pytest.approx(0.05, rel=1e-5)
    w0, w1 = model0[0].weight.detach(), model[0].weight.detach()
    assert got["update/ratio/0"] == pytest.approx((torch.linalg.norm(w1 - w0) / torch.linalg.norm(w0)).item(), rel=1e-4)


def test_stop_on_divergence_drops_the_step_and_a_rank_that_does_not_record_still_guards() -> None:
    for record in (True, False):
        model = mlp()
        probe = Probe(model, log_every=100, stop_on_divergence=True, record=record)
        train(probe, model, 10, lr=1e18)
        assert probe.diverged_step is not None and probe.diverged_step < 9
        assert [step for step, _, _ in probe.history] == ([0, probe.diverged_step] if record else [])
        assert all(torch.isfinite(p).all() for p in model.parameters())  # the diverged step was not taken


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(log_every=0), "log_every=0"),
        (dict(layers=["9"]), "'9' is not a module"),
        (dict(layers=lambda name, module: False), "no layer to probe"),
    ],
)
def test_bad_arguments_are_refused_with_the_field_and_value(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Probe(mlp(), **bad)


def test_activation_modules_are_recognised_with_their_settings() -> None:
    assert activation_name(nn.ReLU()) == "relu" and activation_name(nn.Tanh()) == "tanh"
    assert activation_name(nn.LeakyReLU(0.01)) == "leaky_relu"
    assert activation_name(nn.LeakyReLU(0.2)) is None  # another slope: its saturation would be wrong
    assert activation_name(nn.GELU(approximate="tanh")) is None and activation_name(nn.Dropout()) is None


@pytest.mark.parametrize(
    "layer", ["encoder.layers.0.self_attn.out_proj", "0", "features.3", "L000", "out", "model.head"]
)
def test_keys_of_qualified_layer_names_parse_back(layer: str) -> None:
    for family, stat in [("grad", "l2"), ("act", "saturation"), ("bptt", "t0012"), ("gate", "forget_mean")]:
        built = K.key(family, layer, stat)
        assert built == f"{family}/{stat}/{layer}" and K.parse(built) == (family, layer, stat)


@pytest.mark.parametrize("bad", ["grad/l2/", "grad/l2/a b", "grad/l2/rms", "grad/l2/t0001", "grad//x"])
def test_a_stat_name_or_nothing_is_not_a_layer(bad: str) -> None:
    with pytest.raises(ValueError, match="not a metric key"):
        K.parse(bad)
