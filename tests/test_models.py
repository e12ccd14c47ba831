"""Every registered family × activation × norm builds, runs and back-propagates; CNN and RNN options."""

from __future__ import annotations

import pytest
import torch

from gradprobe.activations import ACTIVATIONS
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
        model,
        in_shape=in_shape,
        layout=_layout(model),
        n_outputs=N_OUT,
        depth=2,
        width=8,
        activation=activation,
        norm=norm,
        **options,
    )


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
        "cnn",
        in_shape=(1, size, size),
        layout="image",
        n_outputs=N_OUT,
        depth=depth,
        width=width,
        activation="relu",
        norm="none",
        kernel_size=3,
        padding=padding,
        stride=stride,
        pool=pool,
        head=head,
    )
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
        "cnn",
        in_shape=(1, 8, 8),
        layout="image",
        n_outputs=N_OUT,
        depth=2,
        width=4,
        activation="relu",
        norm="none",
        kernel_size=5,
        padding="circular",
        stride=2,
        pool="max",
    )
    conv = net.layers[0].conv
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2) and conv.stride == (2, 2)
    assert conv.padding_mode == "circular"
    assert isinstance(net.layers[0].pool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("in_shape, layout", [((2, 11), "signal"), ((1, 6, 5), "image"), ((9, 3), "sequence")])
def test_cnn_dense_head_is_the_readout_at_every_position(in_shape: tuple, layout: str) -> None:
    """head='dense' (segmentation): a 1×1 conv, i.e. the readout's W·h + b at each position, laid out like the input."""
    net = create_model(
        "cnn",
        in_shape=in_shape,
        layout=layout,
        n_outputs=3,
        depth=2,
        width=6,
        activation="tanh",
        norm="none",
        head="dense",
    ).double()
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
        "cnn",
        in_shape=(1, 8, 8),
        layout="image",
        n_outputs=N_OUT,
        depth=3,
        width=6,
        activation="relu",
        norm="none",
        padding="circular",
        head="gap",
    ).double()
    x = torch.randn(BATCH, 1, 8, 8, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(3, -2), dims=(2, 3))
    torch.testing.assert_close(net(shifted), net(x), rtol=1e-10, atol=1e-10)
    zeros = create_model(
        "cnn",
        in_shape=(1, 8, 8),
        layout="image",
        n_outputs=N_OUT,
        depth=3,
        width=6,
        activation="relu",
        norm="none",
        padding="zeros",
        head="gap",
    ).double()
    assert not torch.allclose(zeros(shifted), zeros(x))  # the check above can fail


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_cnn_1d_from_signal(head: str) -> None:
    net = create_model(
        "cnn",
        in_shape=(3, 40),
        layout="signal",
        n_outputs=N_OUT,
        depth=3,
        width=6,
        activation="relu",
        norm="batch",
        stride=2,
        head=head,
    )
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


def _stepwise(layer: RecurrentLayer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The fused module called one time step at a time, each h_t a node of the graph; and the 2nd gate."""
    rnn, n = layer.rnn, layer.rnn.hidden_size
    hs, gates, hidden = [], [], None
    for t in range(x.shape[1]):
        h_prev = torch.zeros(len(x), n) if not hs else hs[-1]
        if layer.always_unroll:
            h = layer.nonlinearity(
                x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h_prev @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
            )
        else:
            out, hidden = rnn(x[:, t : t + 1], hidden)
            h = out[:, 0]
            hidden = (h[None], hidden[1]) if isinstance(hidden, tuple) else h[None]  # recur through h itself
        # PyTorch's gate order: LSTM (i, f, g, o), GRU (r, z, n): the forget and update gates are the 2nd block.
        pre = x[:, t] @ rnn.weight_ih_l0[n : 2 * n].T + rnn.bias_ih_l0[n : 2 * n]
        gates.append(torch.sigmoid(pre + h_prev @ rnn.weight_hh_l0[n : 2 * n].T + rnn.bias_hh_l0[n : 2 * n]))
        hs.append(h)
    return torch.stack(hs, dim=1), hs, gates


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize(
    "cell, activation",
    [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("rnn", "leaky_relu"), ("lstm", "tanh"), ("gru", "tanh")],
)
def test_replayed_gradients_through_time_match_autograd(cell: str, activation: str, norm: str) -> None:
    """∂loss/∂h_t from the replay's adjoint recursion = autograd through a step-by-step unroll, every t."""
    net = _build(cell, activation, norm)
    for layer in net.layers:
        layer.keep_sequence = True
    x = torch.randn(BATCH, 12, 2)
    target = torch.randn(BATCH, N_OUT)
    layer = net.layers[0]
    grads = {}
    out = net(x)
    x0, seq = layer.kept
    seq.register_hook(lambda g: grads.__setitem__("consumers", g))
    ((out - target) ** 2).mean().backward()
    replay = layer.replay(x0, seq)
    got = replay.state_gradients(grads["consumers"])  # (T, B, H)

    # The independent computation: the same first layer stepped by hand, the rest of the net on top.
    stacked, hs, gates = _stepwise(layer, x)
    torch.testing.assert_close(stacked, seq.detach(), rtol=1e-5, atol=1e-6)  # replaying the same forward
    rest = layer.norm(stacked)
    for upper in net.layers[1:]:
        rest = upper(rest)
    loss = ((net.readout(rest[:, -1]) - target) ** 2).mean()
    expected = torch.stack(torch.autograd.grad(loss, hs))
    assert expected[0].abs().max() > 0  # something reaches t = 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    if cell != "rnn":
        torch.testing.assert_close(replay.gate, torch.stack(gates).detach(), rtol=1e-5, atol=1e-6)
    else:
        assert replay.gate is None


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
