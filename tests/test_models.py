"""Every registered family × activation × norm builds, runs and back-propagates; CNN and RNN options."""

from __future__ import annotations

import copy

import pytest
import torch

from models.activations import ACTIVATIONS
from models.norms import NORMS
from models.recurrent import RecurrentLayer
from models.registry import create_model, list_models
from pipelines.config import ConfigError, RunConfig

BATCH = 4
N_OUT = 5
# One input layout per family: images for the feed-forward families, (T, F) sequences for recurrent ones.
INPUTS = {
    "image": ((1, 8, 8), "digits", "ce"),
    "sequence": ((12, 2), "adding", "mse"),
}
RECURRENT = ("rnn", "lstm", "gru")


def _layout(model: str) -> str:
    return "sequence" if model in RECURRENT else "image"


def _build(model: str, activation: str = "tanh", norm: str = "none", **options) -> torch.nn.Module:
    in_shape, _, _ = INPUTS[_layout(model)]
    torch.manual_seed(0)
    return create_model(
        model, in_shape=in_shape, layout=_layout(model), n_outputs=N_OUT,
        depth=2, width=8, activation=activation, norm=norm, **options,
    )  # fmt: skip


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("model", list_models())
def test_every_model_builds_runs_and_backpropagates(model: str, activation: str, norm: str) -> None:
    in_shape, dataset, loss = INPUTS[_layout(model)]
    try:
        RunConfig(model=model, activation=activation, norm=norm, dataset=dataset, loss=loss)
    except ConfigError as exc:
        pytest.skip(f"the config rejects it: {exc}")
    net = _build(model, activation, norm)
    x = torch.randn(BATCH, *in_shape)
    out = net(x)
    assert out.shape == (BATCH, N_OUT)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


def _conv_out(n: int, kernel: int, stride: int) -> int:
    """PyTorch's output length of a convolution with padding kernel // 2."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("head", ["gap", "flatten"])
@pytest.mark.parametrize(
    "size, stride, pool, depth, expected_sizes",
    [
        (8, 1, "none", 3, [8, 8, 8]),
        (8, 2, "none", 4, [4, 2, 1, 1]),  # a 1-wide map is not strided any further
        (8, 1, "max", 4, [4, 2, 1, 1]),  # nor pooled
        (9, 3, "none", 3, [3, 1, 1]),
        (8, 2, "max", 2, [2, 1]),
    ],
)
def test_cnn_shapes_and_total_stride(padding, head, size, stride, pool, depth, expected_sizes) -> None:
    width = 6
    net = create_model(
        "cnn", in_shape=(1, size, size), layout="image", n_outputs=N_OUT, depth=depth, width=width,
        activation="relu", norm="none", kernel_size=3, padding=padding, stride=stride, pool=pool, head=head,
    )  # fmt: skip
    x = torch.randn(BATCH, 1, size, size)
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(BATCH, width, n, n) for n in expected_sizes]
    # Each block's conv arithmetic, from PyTorch's formula, and the cumulative stride it implies.
    n = size
    for block, f in zip(net.layers, feats):
        n = _conv_out(n, 3, block.conv.stride[0])
        if pool == "max" and not isinstance(block.pool, torch.nn.Identity):
            n //= 2
        assert f.shape[-1] == n
        assert block.total_stride == size // n
    assert net(x).shape == (BATCH, N_OUT)
    assert net.readout.in_features == (width if head == "gap" else width * expected_sizes[-1] ** 2)


def test_cnn_conv_options_reach_the_layers() -> None:
    net = create_model(
        "cnn", in_shape=(1, 8, 8), layout="image", n_outputs=N_OUT, depth=2, width=4,
        activation="relu", norm="none", kernel_size=5, padding="circular", stride=2, pool="max",
    )  # fmt: skip
    conv = net.layers[0].conv
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2) and conv.stride == (2, 2)
    assert conv.padding_mode == "circular"
    assert isinstance(net.layers[0].pool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("in_shape, layout", [((2, 11), "signal"), ((1, 6, 5), "image"), ((9, 3), "sequence")])
def test_cnn_dense_head_is_the_readout_at_every_position(in_shape: tuple, layout: str) -> None:
    """head='dense' (segmentation): a 1×1 conv, i.e. the readout's W·h + b at each position, laid out like the input."""
    net = create_model(
        "cnn", in_shape=in_shape, layout=layout, n_outputs=3, depth=2, width=6, activation="tanh", norm="none",
        head="dense",
    ).double()  # fmt: skip
    assert isinstance(net.readout, torch.nn.Linear) and net.readout.in_features == 6  # what the probe reads
    x = torch.randn(BATCH, *in_shape, dtype=torch.float64)
    out, h = net(x), net.features(x)[-1]  # h: (B, width, *positions)
    if layout == "sequence":  # (B, T, F) in, (B, T, outputs) out
        assert out.shape == (BATCH, in_shape[0], 3)
        out = out.movedim(-1, 1)
    else:
        assert out.shape == (BATCH, 3, *in_shape[1:])
    w, b = net.readout.weight, net.readout.bias
    expected = torch.einsum("oc,bc...->bo...", w, h) + b.reshape(1, 3, *[1] * (h.dim() - 2))
    torch.testing.assert_close(out, expected)


def test_circular_stride1_cnn_with_gap_is_shift_invariant() -> None:
    """Azulay & Weiss 2019: circular stride-1 convolutions with global average pooling are exactly invariant."""
    net = create_model(
        "cnn", in_shape=(1, 8, 8), layout="image", n_outputs=N_OUT, depth=3, width=6,
        activation="relu", norm="none", padding="circular", head="gap",
    ).double()  # fmt: skip
    x = torch.randn(BATCH, 1, 8, 8, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(3, -2), dims=(2, 3))
    torch.testing.assert_close(net(shifted), net(x), rtol=1e-10, atol=1e-10)
    zeros = create_model(
        "cnn", in_shape=(1, 8, 8), layout="image", n_outputs=N_OUT, depth=3, width=6,
        activation="relu", norm="none", padding="zeros", head="gap",
    ).double()  # fmt: skip
    assert not torch.allclose(zeros(shifted), zeros(x))  # the check above can fail


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_cnn_1d_from_signal(head: str) -> None:
    net = create_model(
        "cnn", in_shape=(3, 40), layout="signal", n_outputs=N_OUT, depth=3, width=6,
        activation="relu", norm="batch", stride=2, head=head,
    )  # fmt: skip
    assert all(isinstance(b.conv, torch.nn.Conv1d) for b in net.layers)
    x = torch.randn(BATCH, 3, 40)
    assert [tuple(f.shape) for f in net.features(x)] == [(BATCH, 6, 20), (BATCH, 6, 10), (BATCH, 6, 5)]
    assert [b.total_stride for b in net.layers] == [2, 4, 8]
    assert net(x).shape == (BATCH, N_OUT)


def test_cnn_reads_a_sequence_as_channels() -> None:
    net = create_model(
        "cnn", in_shape=(12, 2), layout="sequence", n_outputs=1, depth=2, width=4, activation="relu", norm="none"
    )
    assert net.layers[0].conv.in_channels == 2
    x = torch.randn(BATCH, 12, 2)
    assert net.features(x)[0].shape == (BATCH, 4, 12)
    assert net(x).shape == (BATCH, 1)


def test_recurrent_reads_a_signal_as_time_steps() -> None:
    net = create_model(
        "gru", in_shape=(3, 10), layout="signal", n_outputs=N_OUT, depth=1, width=4, activation="tanh", norm="none"
    )
    assert net.layers[0].rnn.input_size == 3
    x = torch.randn(BATCH, 3, 10)
    assert net(x).shape == (BATCH, N_OUT)
    assert net.layers[0](x.transpose(1, 2)).shape == (BATCH, 10, 4)


def test_models_reject_layouts_they_cannot_read() -> None:
    with pytest.raises(ValueError, match="lstm"):
        create_model(
            "lstm", in_shape=(1, 8, 8), layout="image", n_outputs=2, depth=1, width=4, activation="tanh", norm="none"
        )


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_unrolled_recurrence_matches_the_fused_kernel(cell: str, activation: str, norm: str) -> None:
    fused = _build(cell, activation, norm)
    unrolled = copy.deepcopy(fused)
    for layer in unrolled.layers:
        assert isinstance(layer, RecurrentLayer)
        layer.unroll = True
    x = torch.randn(BATCH, 12, 2)
    target = torch.randn(BATCH, N_OUT)
    outs = []
    for net in (fused, unrolled):
        out = net(x)
        ((out - target) ** 2).mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert len(unrolled.layers[0].states) == 12  # the unrolled path really ran
    for (name, p), q in zip(fused.named_parameters(), unrolled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_rnn_with_a_nonlinearity_the_kernel_lacks_runs_the_cell_equations() -> None:
    """A sigmoid RNN always unrolls: h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), checked by hand."""
    net = _build("rnn", "sigmoid")
    layer = net.layers[0]
    x = torch.randn(BATCH, 12, 2)
    rnn = layer.rnn
    h = torch.zeros(BATCH, rnn.hidden_size)
    for t in range(12):
        h = torch.sigmoid(x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
    torch.testing.assert_close(layer(x)[:, -1], h, rtol=1e-5, atol=1e-6)
