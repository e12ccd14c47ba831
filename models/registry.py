"""The registry of model families: `create_model(name, ...)` builds any of them from plain arguments."""

from __future__ import annotations

from collections.abc import Callable

from models.base import Family
from models.cnn import CNN
from models.mlp import MLP
from models.recurrent import CELLS, Recurrent
from models.resmlp import ResMLP

# Input layouts a dataset can have: image (C, H, W), signal (C, L), sequence (T, F), vector (F,).
LAYOUTS = ("image", "signal", "sequence", "vector")

Builder = Callable[..., Family]
MODELS: dict[str, Builder] = {}
ACCEPTS: dict[str, tuple[str, ...]] = {}  # family -> input layouts it can read


def register(name: str, accepts: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Register a family builder under `name`, reading the given input layouts."""

    def wrap(fn: Builder) -> Builder:
        MODELS[name], ACCEPTS[name] = fn, accepts
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of every registered family."""
    return sorted(MODELS)


@register("mlp", accepts=LAYOUTS)
def _mlp(in_shape, layout, n_outputs, *, depth, width, activation, norm, **_) -> Family:
    return MLP(in_shape, n_outputs, depth=depth, width=width, activation=activation, norm=norm)


@register("resmlp", accepts=LAYOUTS)
def _resmlp(in_shape, layout, n_outputs, *, depth, width, activation, norm, res_scale=1.0, **_) -> Family:
    return ResMLP(in_shape, n_outputs, depth=depth, width=width, activation=activation, norm=norm, res_scale=res_scale)


@register("cnn", accepts=("image", "signal", "sequence"))
def _cnn(
    in_shape,
    layout,
    n_outputs,
    *,
    depth,
    width,
    activation,
    norm,
    kernel_size=3,
    padding="zeros",
    stride=1,
    pool="none",
    head="gap",
    **_,
) -> Family:
    return CNN(
        in_shape,
        n_outputs,
        depth=depth,
        width=width,
        activation=activation,
        norm=norm,
        kernel_size=kernel_size,
        padding=padding,
        stride=stride,
        pool=pool,
        head=head,
        channels_last=layout == "sequence",
    )


def _recurrent(cell: str) -> Builder:
    def build(in_shape, layout, n_outputs, *, depth, width, activation, norm, **_) -> Family:
        return Recurrent(
            in_shape,
            n_outputs,
            cell=cell,
            depth=depth,
            width=width,
            activation=activation,
            norm=norm,
            channels_first=layout == "signal",
        )

    return build


for _cell in CELLS:
    register(_cell, accepts=("signal", "sequence"))(_recurrent(_cell))


def create_model(name: str, *, in_shape: tuple[int, ...], layout: str, n_outputs: int, **options) -> Family:
    """Build family `name` for inputs of `in_shape`/`layout`; options are the architecture fields."""
    if layout not in ACCEPTS[name]:
        raise ValueError(f"model {name!r} cannot read {layout} inputs; it reads {', '.join(ACCEPTS[name])}")
    return MODELS[name](in_shape, layout, n_outputs, **options)
