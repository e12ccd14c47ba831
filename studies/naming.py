"""Trial run names that tell a study's trials apart: every run-config field the study varies, short.

    relu-d32-he-bn-adam3e-3-clip1

A field appears when the spec's space can give it more than one value (over the choices of categorical
and bundle parameters, any value of a range); fields the study holds fixed are left out, so the name
is short and names only what differs. Fields appear in one order (FIELD_ORDER), the rest after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.config import RunConfig, field_names
from studies.spec import StudySpec

INIT_SHORT = {
    "torch_default": "tdef",
    "xavier_uniform": "xavu",
    "xavier_normal": "xav",
    "kaiming_uniform": "heu",
    "kaiming_normal": "he",
    "orthogonal": "orth",
    "normal": "normal",
    "identity": "ident",
}
NORM_SHORT = {"none": "", "batch": "bn", "layer": "ln", "group": "gn", "weight": "wn"}
CLIP_SHORT = {"none": "noclip", "norm": "clip", "value": "vclip"}
OPTIMIZER_SHORT = {"momentum": "mom", "nesterov": "nest", "rmsprop": "rms", "adagrad": "adag"}
# Name order: what the data and the network are, then how they are trained.
FIELD_ORDER = (
    "dataset",
    "loss",
    "model",
    "activation",
    "depth",
    "width",
    "init",
    "init_gain",
    "norm",
    "res_scale",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "clip",
    "seed",
)


def number(value: float) -> str:
    """A short number: 0.1, 32, 3e-3 (small and large ones in compact scientific notation)."""
    value = float(value)
    if value == int(value) and abs(value) < 1e5:
        return str(int(value))
    if 1e-2 <= abs(value) < 1e5:
        return f"{value:.3g}"
    mantissa, _, exponent = f"{value:.2e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


TOKENS: dict[str, Callable[[RunConfig], str]] = {
    "depth": lambda c: f"d{c.depth}",
    "width": lambda c: f"w{c.width}",
    "init": lambda c: INIT_SHORT.get(c.init, c.init),
    "init_gain": lambda c: f"g{number(c.init_gain)}",
    "norm": lambda c: NORM_SHORT.get(c.norm, c.norm),
    "res_scale": lambda c: f"a{number(c.res_scale)}" if c.model.startswith("res") else "",  # α of residual nets only
    "momentum": lambda c: f"m{number(c.momentum)}",
    "weight_decay": lambda c: f"wd{number(c.weight_decay)}",
    "seed": lambda c: f"s{c.seed}",
    "seq_len": lambda c: f"T{c.seq_len}",
    "forget_bias": lambda c: (
        f"fb{number(c.forget_bias)}" if c.model == "lstm" else ""
    ),  # only an LSTM has a forget gate
}


def varying_fields(spec: StudySpec) -> list[str]:
    """The run-config fields whose value differs between trials of the study, in name order."""
    base = spec.config({}).to_dict()
    seen: dict[str, set[str]] = {}
    for param in spec.space:
        if param.kind in ("int", "float"):
            if param.low != param.high:
                seen.setdefault(param.name, set()).update({"low", "high"})
            continue
        choices = [param.expand(value) for value in param.grid_values()]
        for name in {key for fields in choices for key in fields}:
            seen.setdefault(name, set()).update(repr(fields.get(name, base[name])) for fields in choices)
    varying = {name for name, values in seen.items() if len(values) > 1}
    ordered = [name for name in FIELD_ORDER if name in varying]
    return ordered + [name for name in field_names() if name in varying and name not in FIELD_ORDER]


def _token(cfg: RunConfig, name: str, varying: set[str]) -> str:
    if name == "lr":  # after the optimizer's name when both vary: adam3e-3
        return "" if "optimizer" in varying else f"lr{number(cfg.lr)}"
    if name == "optimizer":
        return OPTIMIZER_SHORT.get(cfg.optimizer, cfg.optimizer) + (number(cfg.lr) if "lr" in varying else "")
    if name == "clip":
        return CLIP_SHORT.get(cfg.clip, cfg.clip) + ("" if cfg.clip == "none" else number(cfg.clip_threshold))
    if name == "clip_threshold":
        return "" if "clip" in varying else f"ct{number(cfg.clip_threshold)}"
    if name in TOKENS:
        return TOKENS[name](cfg)
    value: Any = getattr(cfg, name)
    return str(value) if name in FIELD_ORDER else f"{name}{number(value) if isinstance(value, float) else value}"


def trial_name(spec: StudySpec, cfg: RunConfig, fields: list[str] | None = None) -> str:
    """The run name of a trial with config `cfg`: a token per varying field (the study's name if none varies)."""
    fields = varying_fields(spec) if fields is None else fields
    tokens = [_token(cfg, name, set(fields)) for name in fields]
    return "-".join(t for t in tokens if t) or spec.name


def unique(name: str, number: int, others: list[str]) -> str:
    """`name`, or `name-t<number>` when another trial of the study carries the same name."""
    return f"{name}-t{number}" if name in others else name


NAME_ATTR = "run_name_base"  # a trial's name before any suffix (Optuna user attribute)


def claim_name(trial: Any, name: str) -> str:
    """The run name of `trial` (an optuna.Trial): `name`, suffixed with its number if another trial took it.

    The attribute is written before the others are read: of two trials naming themselves at once, the
    later one always sees the earlier (both may suffix; no two keep one name).
    """
    trial.set_user_attr(NAME_ATTR, name)
    others = [t.user_attrs.get(NAME_ATTR) for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
    return unique(name, trial.number, others)
