"""The run config: defaults valid, every bad value rejected with a message naming field and value."""

from __future__ import annotations

import dataclasses
import math

import pytest

from gradprobe.activations import ACTIVATIONS
from models.init import INITS
from models.losses import LOSSES
from models.optim import OPTIMIZERS
from models.registry import list_models
from pipelines.config import ConfigError, RunConfig, choices, field_names
from pipelines.data import DATASETS

# The allowed values the README's run-config table names (at least).
DESIGN_VALUES = {
    "dataset": {"digits", "mnist1d", "teacher", "adding", "mnist", "cifar10"},
    "model": {"mlp", "resmlp", "cnn", "rnn", "lstm", "gru"},
    "activation": {"sigmoid", "tanh", "relu", "leaky_relu", "gelu", "linear"},
    "norm": {"none", "batch", "layer"},
    "init": {
        "torch_default",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "orthogonal",
        "normal",
    },
    "optimizer": {"sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"},
    "clip": {"none", "norm", "value"},
    "loss": {"ce", "mse", "mae", "huber", "bce", "hinge", "kl"},
}


def test_defaults_are_valid_and_as_documented() -> None:
    cfg = RunConfig()
    assert cfg.dataset == "digits" and cfg.init_gain == 1.0 and cfg.res_scale == 1.0
    assert cfg.task == "classification"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert list(cfg.to_dict()) == field_names()


def test_fields_are_flat_scalars() -> None:
    for f in dataclasses.fields(RunConfig):
        assert f.type in ("str", "int", "float"), f.name
        assert isinstance(f.default, {"str": str, "int": int, "float": float}[f.type]), f.name


@pytest.mark.parametrize("name", sorted(DESIGN_VALUES))
def test_choices_include_the_documented_values_and_the_registries(name: str) -> None:
    assert DESIGN_VALUES[name] <= set(choices(name))
    registry = {
        "dataset": DATASETS,
        "model": list_models(),
        "activation": ACTIVATIONS,
        "init": INITS,
        "optimizer": OPTIMIZERS,
        "loss": LOSSES,
    }.get(name)
    if registry is not None:
        assert set(choices(name)) == set(registry)


def _fitting(field: str, value) -> dict:
    """Other fields that a value needs to be valid (e.g. a sequence dataset for lstm)."""
    if field == "model" and value in ("rnn", "lstm", "gru"):
        return {"dataset": "adding", "loss": "mse", "activation": "tanh"}
    if field == "dataset" and value in ("teacher", "adding"):
        return {"loss": "mse"}
    if field == "loss" and value in ("huber",):
        return {"dataset": "teacher"}
    return {}


@pytest.mark.parametrize("name, value", [(n, v) for n, values in sorted(DESIGN_VALUES.items()) for v in sorted(values)])
def test_every_documented_value_is_accepted(name: str, value: str) -> None:
    cfg = RunConfig(**{name: value, **_fitting(name, value)})
    assert getattr(cfg, name) == value


BAD = [
    ("dataset", "imagenet"),
    ("model", "transformer"),
    ("activation", "swish"),
    ("norm", "group"),
    ("init", "zeros"),
    ("optimizer", "lbfgs"),
    ("schedule", "linear"),
    ("clip", "both"),
    ("loss", "focal"),
    ("padding", "reflect"),
    ("pool", "avg"),
    ("head", "max"),
    ("histograms", "yes"),
    ("histograms", True),
    ("depth", 0),
    ("depth", -3),
    ("depth", 2.5),
    ("depth", "10"),
    ("depth", True),
    ("width", 0),
    ("embed_dim", 0),
    ("kernel_size", 0),
    ("kernel_size", 4),
    ("stride", 0),
    ("batch_size", 0),
    ("max_steps", 0),
    ("log_every", 0),
    ("val_every", -1),
    ("seed", -1),
    ("seq_len", 1),
    ("metric_points", -5),
    ("lr", 0.0),
    ("lr", -0.1),
    ("lr", math.nan),
    ("lr", math.inf),
    ("init_gain", 0.0),
    ("res_scale", -0.5),
    ("weight_decay", -1e-4),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("clip_threshold", math.nan),
    ("seed", 2**32),
    ("lr", 3.5e38),  # finite in float64, beyond float32
    ("weight_decay", 1e39),
]


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_values_are_named_in_the_error(name: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(**{name: value})
    assert err.value.field == name
    message = str(err.value)
    assert f"{name}=" in message and repr(value) in message
    assert "allowed" in message
    allowed = choices(name)
    if allowed is not None:  # the allowed values are listed
        assert all(v in message for v in allowed)


@pytest.mark.parametrize(
    "values, name, bad",
    [
        ({"clip": "norm", "clip_threshold": 0.0}, "clip_threshold", 0.0),
        ({"clip": "value", "clip_threshold": -1.0}, "clip_threshold", -1.0),
        ({"model": "lstm"}, "model", "lstm"),  # digits are images
        ({"model": "cnn", "dataset": "teacher", "loss": "mse"}, "model", "cnn"),  # vectors
        ({"model": "rnn", "dataset": "adding", "loss": "mse", "activation": "gelu"}, "activation", "gelu"),
        ({"dataset": "teacher"}, "loss", "ce"),  # cross-entropy on a regression task
        ({"loss": "huber"}, "loss", "huber"),  # a regression loss on digits
        ({"norm": "batch", "batch_size": 1}, "batch_size", 1),
        ({"loss": "dice"}, "loss", "dice"),  # a segmentation loss on digits
        ({"dataset": "breast_cancer"}, "loss", "ce"),  # one logit: bce, hinge or mse
        ({"dataset": "digits_metric"}, "loss", "ce"),  # an embedding has no classes
        ({"dataset": "diabetes", "loss": "bce"}, "loss", "bce"),
        ({"dataset": "segment1d", "loss": "dice"}, "model", "mlp"),  # per-position output needs the cnn
        ({"dataset": "segment1d", "loss": "dice", "model": "rnn", "activation": "tanh"}, "model", "rnn"),
        ({"dataset": "segment1d", "loss": "dice", "model": "cnn"}, "head", "gap"),
        ({"dataset": "segment1d", "loss": "dice", "model": "cnn", "head": "dense", "stride": 2}, "stride", 2),
        ({"dataset": "segment1d", "loss": "dice", "model": "cnn", "head": "dense", "pool": "max"}, "pool", "max"),
        ({"model": "cnn", "head": "dense"}, "head", "dense"),  # per-position output on a classification task
        ({"dataset": "digits_metric", "loss": "triplet", "batch_size": 1}, "batch_size", 1),
    ],
)
def test_combinations_are_checked(values: dict, name: str, bad) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(**values)
    assert err.value.field == name
    assert f"{name}={bad!r}" in str(err.value)


# The losses that fit each task, as the README's table lists them.
FITTING = {
    "digits": ["ce", "mse", "mae", "bce", "hinge", "kl"],
    "teacher": ["mse", "mae", "huber"],
    "diabetes": ["mse", "mae", "huber"],
    "breast_cancer": ["mse", "bce", "hinge"],
    "segment1d": ["bce", "dice", "iou"],
    "digits_metric": ["contrastive", "triplet"],
}
SEGMENT = {"model": "cnn", "head": "dense"}


@pytest.mark.parametrize("dataset", sorted(FITTING))
def test_a_loss_that_does_not_fit_names_the_losses_that_do(dataset: str) -> None:
    extra = SEGMENT if dataset == "segment1d" else {}
    for loss in FITTING[dataset]:
        assert RunConfig(dataset=dataset, loss=loss, **extra).loss == loss
    for loss in sorted(set(FITTING["digits"]) | set(FITTING["segment1d"]) | {"huber", "triplet"}):
        if loss in FITTING[dataset]:
            continue
        with pytest.raises(ConfigError) as err:
            RunConfig(dataset=dataset, loss=loss, **extra)
        assert err.value.field == "loss" and f"loss={loss!r}" in str(err.value)
        allowed = str(err.value).split("allowed: ", 1)[1]
        assert allowed.split(": ", 1)[1].split(", ") == FITTING[dataset]  # exactly those, registry order
        assert dataset in allowed and RunConfig(dataset=dataset, loss=FITTING[dataset][0], **extra).task in allowed


def test_clip_threshold_only_matters_when_clipping() -> None:
    assert RunConfig(clip="none", clip_threshold=0.0).clip_threshold == 0.0


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"depth": 3, "learning_rate": 0.1})
    assert err.value.field == "learning_rate"
    assert "learning_rate" in str(err.value) and "0.1" in str(err.value)
    assert RunConfig.from_dict({"depth": 3}).depth == 3


def test_config_is_frozen_and_replace_validates() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3  # type: ignore[misc]
    assert cfg.replace(depth=3).depth == 3 and cfg.depth == 10
    with pytest.raises(ConfigError, match="depth=0"):
        cfg.replace(depth=0)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_seed_range_is_what_lightning_accepts() -> None:
    import pytorch_lightning as pl

    top = 2**32 - 1
    pl.seed_everything(top, verbose=False)  # the oracle: Lightning itself
    with pytest.raises(ValueError):
        pl.seed_everything(top + 1, verbose=False)
    assert RunConfig(seed=top).seed == top
    with pytest.raises(ConfigError):
        RunConfig(seed=top + 1)


def test_float_fields_stop_at_float32s_largest() -> None:
    import numpy as np

    largest = float(np.finfo(np.float32).max)
    assert RunConfig(lr=largest).lr == largest
    with pytest.raises(ConfigError) as err:
        RunConfig(lr=float(np.nextafter(np.float64(largest), np.inf)))
    assert err.value.field == "lr"
