"""Which layers of a network the probe watches: discovered from the module tree, or chosen by the user.

A layer is a module with a main weight, the parameter whose gradient is the layer's `grad` statistics:
Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding, BatchNorm*/LayerNorm/GroupNorm (with an affine
weight), the two projections of a MultiheadAttention (`<name>.in_proj`: in_proj_weight or q_proj_weight;
`<name>.out_proj`), and nn.RNN/LSTM/GRU (weight_hh_l0). Discovery descends into every other module, so
user modules holding these are covered. A user module chosen explicitly is one layer (its `main_weight`
if it has one, else the first layer's weight inside; its `act` module if it has one).

Layer ids are qualified names in the probed network (`encoder.layers.0.self_attn.out_proj`), or the
aliases a `names` mapping gives them; the probe orders them by the first forward call (module order
until the first logging step has run).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from gradprobe.activations import ACTIVATIONS
from gradprobe.recurrent import replayable

LayerFilter = Callable[[str, nn.Module], bool]
Selection = LayerFilter | Iterable[str | nn.Module] | None

WEIGHTED = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)
IN_PROJ, OUT_PROJ = "in_proj", "out_proj"
ROOT = "model"  # the id of the probed module itself, when it is a layer


@dataclass
class Layer:
    """One probed layer: its id, main weight, the module whose output is its output, and what follows it."""

    name: str  # qualified name in the probed network
    weight: nn.Parameter
    output: nn.Module | None  # its forward output (first element of a tuple) is the layer's output; None: unseen
    runs: nn.Module  # the module whose first call places the layer in forward order
    act: nn.Module | None = None  # the activation module after it (recognised by `activation_name`)
    recurrent: nn.RNNBase | None = None  # replayed for ∂loss/∂h_t when `replayable`
    alias: str | None = None

    @property
    def id(self) -> str:
        """The layer's id in metric keys: its alias, else its qualified name."""
        return self.alias or self.name

    @property
    def replayed(self) -> bool:
        """Whether its gradients through time are computed (a single-layer unidirectional recurrent module)."""
        return self.recurrent is not None and replayable(self.recurrent)


@functools.cache
def _references() -> list[tuple[str, nn.Module]]:
    return [(name, entry.make()) for name, entry in ACTIVATIONS.items()]


def activation_name(module: nn.Module) -> str | None:
    """The gradprobe.activations name of an activation module (same type and settings), or None."""
    for name, reference in _references():
        if type(module) is type(reference) and module.extra_repr() == reference.extra_repr():
            return name
    return None


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, WEIGHTED) and isinstance(getattr(module, "weight", None), nn.Parameter)


def _attention_layers(name: str, mha: nn.MultiheadAttention) -> list[Layer]:
    """The two projections of an attention module; both seen through its output (in_proj's own is internal)."""
    in_weight = mha.in_proj_weight if mha.in_proj_weight is not None else mha.q_proj_weight
    return [
        Layer(_join(name, IN_PROJ), in_weight, None, mha),
        Layer(_join(name, OUT_PROJ), mha.out_proj.weight, mha, mha),
    ]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _leaf_layers(name: str, module: nn.Module) -> list[Layer] | None:
    """The layers a module of a known kind is, or None if it is not one (descend into it)."""
    if isinstance(module, nn.MultiheadAttention):
        return _attention_layers(name, module)
    if isinstance(module, nn.RNNBase):
        return [Layer(name or ROOT, module.weight_hh_l0, module, module, recurrent=module)]
    if isinstance(module, WEIGHTED):
        return [Layer(name or ROOT, module.weight, module, module)] if _weighted(module) else []
    return None


def _walk(module: nn.Module, prefix: str = "") -> Iterable[Layer]:
    found = _leaf_layers(prefix, module)
    if found is not None:
        yield from found
        return
    for child_name, child in module.named_children():
        yield from _walk(child, _join(prefix, child_name))


def _block(name: str, module: nn.Module) -> Layer:
    """A user module taken as one layer: its `main_weight` (else its first layer's), its `act`, its recurrent module."""
    inner = list(_walk(module, name))
    weight = getattr(module, "main_weight", None)
    if weight is None:
        if not inner:
            raise ValueError(f"layer {name!r}: no weight to probe in {type(module).__name__}")
        weight = inner[0].weight
    act = getattr(module, "act", None)
    act = act if isinstance(act, nn.Module) and activation_name(act) is not None else None
    rnns = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    return Layer(name or ROOT, weight, module, module, act=act, recurrent=rnns[0] if len(rnns) == 1 else None)


def discover_layers(model: nn.Module, layers: Selection = None, names: Mapping[str, str] | None = None) -> list[Layer]:
    """The probed layers of `model` in module order: every layer of a known kind, those `layers` keeps or lists.

    `layers`: None (all), a filter `callable(qualified_name, module) -> bool`, or a list of qualified names
    or modules (a MultiheadAttention's projections as `<name>.in_proj` / `<name>.out_proj`). `names` maps
    qualified names to the ids used in keys. Only layers whose weight requires grad are probed.
    """
    if layers is None or callable(layers):
        found = list(_walk(model))
        if callable(layers):
            found = [layer for layer in found if layers(layer.name, _module_of(model, layer))]
    else:
        found = [layer for item in layers for layer in _chosen(model, item)]
    found = [layer for layer in found if layer.weight.requires_grad]
    for layer in found:
        layer.alias = (names or {}).get(layer.name)
    ids = [layer.id for layer in found]
    if len(set(ids)) != len(ids):
        raise ValueError(f"layers: the same layer id twice in {ids}")
    return found


def _module_of(model: nn.Module, layer: Layer) -> nn.Module:
    if layer.name.endswith((f".{IN_PROJ}", f".{OUT_PROJ}")) or layer.name in (IN_PROJ, OUT_PROJ):
        owner = layer.name.rpartition(".")[0]
        return model.get_submodule(owner) if owner else model
    return model if layer.name == ROOT else model.get_submodule(layer.name)


def _chosen(model: nn.Module, item: str | nn.Module) -> list[Layer]:
    """The layers of one explicit choice: a qualified name or a module of `model`."""
    if isinstance(item, nn.Module):
        name = next((n for n, m in model.named_modules() if m is item), None)
        if name is None:
            raise ValueError(f"layers: {type(item).__name__} is not a module of the probed network")
    else:
        name = item
    head, _, last = name.rpartition(".")
    if last in (IN_PROJ, OUT_PROJ):
        owner = _submodule(model, head)
        if isinstance(owner, nn.MultiheadAttention):
            return [layer for layer in _attention_layers(head, owner) if layer.name == name]
    module = _submodule(model, name)
    leaf = _leaf_layers(name, module)
    return leaf if leaf is not None else [_block(name, module)]


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layers: {name!r} is not a module of the probed network") from None
