"""The run configuration: one frozen dataclass of flat scalars, validated when it is made.

Every field is an MLflow param of the run, a `--kebab-case` flag of `python -m pipelines.train` and a
parameter of the MLproject `train` entry point, with the same name and default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lightning_fabric.utilities.seed import max_seed_value

from common.errors import ConfigError
from gradprobe.activations import ACTIVATIONS
from models.init import INITS
from models.losses import LOSSES, tasks_for
from models.norms import NORMS
from models.optim import OPTIMIZERS, SCHEDULES
from models.recurrent import CELLS, RNN_ACTIVATIONS
from models.registry import ACCEPTS, MODELS
from pipelines.data import DATASETS

RECURRENT = tuple(CELLS)
FLOAT32_MAX = 3.4028234663852886e38  # parameters and updates are float32: a larger number cannot be held
SEED_MAX = max_seed_value  # what Lightning's seed_everything accepts (numpy's uint32 range)


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    dataset: str = _f("digits", "task", tuple(DATASETS))
    data_dir: str = _f("data", "folder holding mnist/ and cifar-10-batches-py/ for the file-based datasets")
    model: str = _f("mlp", "model family", tuple(MODELS))
    activation: str = _f("relu", "hidden nonlinearity (ignored by lstm/gru)", tuple(ACTIVATIONS))
    depth: int = _f(10, "hidden layers / residual blocks / conv layers / stacked recurrent layers (≥ 1)")
    width: int = _f(64, "hidden units or channels (≥ 1)")
    norm: str = _f("none", "normalization inside each hidden block", NORMS)
    init: str = _f("torch_default", "weight initialization scheme", tuple(INITS))
    init_gain: float = _f(1.0, "multiplies the init's scale (> 0)")
    res_scale: float = _f(1.0, "α in x + α·branch(x), resmlp only (≥ 0)")
    forget_bias: float = _f(1.0, "LSTM forget-gate bias at init, b_if + b_hf (lstm only; Jozefowicz et al. 2015)")
    kernel_size: int = _f(3, "cnn kernel size (odd, ≥ 1)")
    padding: str = _f("zeros", "cnn padding mode", ("zeros", "circular"))
    stride: int = _f(1, "cnn stride of every conv block (≥ 1)")
    pool: str = _f("none", "cnn 2× max-pooling after every conv block", ("none", "max"))
    head: str = _f(
        "gap",
        "cnn head: global average pool, flatten, or dense (one output per position, a 1×1 conv readout: segmentation)",
        ("gap", "flatten", "dense"),
    )
    optimizer: str = _f("sgd", "optimizer", tuple(OPTIMIZERS))
    lr: float = _f(0.05, "learning rate (> 0; the peak for onecycle)")
    momentum: float = _f(0.9, "momentum of the momentum/nesterov optimizers (0 ≤ m < 1)")
    weight_decay: float = _f(0.0, "weight decay (≥ 0)")
    schedule: str = _f("none", "learning-rate schedule, stepped every optimizer step", tuple(SCHEDULES))
    clip: str = _f("none", "Lightning's gradient clipping algorithm", ("none", "norm", "value"))
    clip_threshold: float = _f(1.0, "clipping threshold (> 0 when clip is on)")
    loss: str = _f("ce", "loss function (it must fit the dataset's task)", tuple(LOSSES))
    embed_dim: int = _f(16, "embedding width of the readout on a metric-learning dataset (≥ 1)")
    latent_dim: int = _f(8, "GAN: dimensions of the generator's input noise (≥ 1; adversarial task only)")
    d_steps: int = _f(1, "GAN: discriminator updates per generator update (≥ 1; adversarial task only)")
    batch_size: int = _f(64, "mini-batch size (≥ 1; larger than the training set = full batch)")
    max_steps: int = _f(200, "optimizer steps (≥ 1)")
    val_every: int = _f(0, "validate every N steps (0: five times a run, and at the end)")
    seed: int = _f(0, "seed of initialization and batch order (≥ 0)")
    log_every: int = _f(1, "record gradient statistics every N steps (1 = every step; step 0 always)")
    seq_len: int = _f(50, "sequence length of the adding task (≥ 2)")
    metric_points: int = _f(200, "at most this many MLflow points per metric key (0: all); parquet keeps all")
    histograms: str = _f(
        "off", "log10|g| histograms of each layer's gradient on logging steps (parquet only)", ("off", "on")
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def task(self) -> str:
        """The dataset's task: classification, regression, binary, segmentation, metric or adversarial."""
        return DATASETS[self.dataset].task

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping, rejecting unknown fields by name."""
        names = field_names()
        for key in values:
            if key not in names:
                raise ConfigError(key, values[key], f"a run-config field ({', '.join(names)})")
        return cls(**values)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Field → value, in declaration order."""
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    """The run-config fields in declaration order."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of a string field, or None for free-valued fields."""
    return next(f.metadata["choices"] for f in dataclasses.fields(RunConfig) if f.name == name)


def _check_type(cfg: RunConfig) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"str": str, "int": int, "float": (int, float)}[f.type]
        allowed = f.metadata["choices"]
        if allowed is not None and (not isinstance(value, str) or value not in allowed):
            raise ConfigError(f.name, value, ", ".join(allowed))  # a wrong type too: say what is allowed
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f.name, value, f"a value of type {f.type}")
        try:
            finite = f.type != "float" or (math.isfinite(value) and abs(value) <= FLOAT32_MAX)
        except OverflowError:  # an int beyond the float range, e.g. a 400-digit YAML literal
            finite = False
        if not finite:
            raise ConfigError(f.name, value, f"a finite number of float32 size (|x| ≤ {FLOAT32_MAX:.7g})")


_BOUNDS: dict[str, tuple[str, Any]] = {
    # field: (rule, what the error says is allowed)
    "depth": ("ge1", "an integer ≥ 1"),
    "width": ("ge1", "an integer ≥ 1"),
    "embed_dim": ("ge1", "an integer ≥ 1"),
    "latent_dim": ("ge1", "an integer ≥ 1"),
    "d_steps": ("ge1", "an integer ≥ 1"),
    "kernel_size": ("ge1", "an odd integer ≥ 1"),
    "stride": ("ge1", "an integer ≥ 1"),
    "batch_size": ("ge1", "an integer ≥ 1"),
    "max_steps": ("ge1", "an integer ≥ 1"),
    "log_every": ("ge1", "an integer ≥ 1"),
    "val_every": ("ge0", "an integer ≥ 0"),
    "seed": ("ge0", "an integer ≥ 0"),
    "metric_points": ("ge0", "an integer ≥ 0"),
    "weight_decay": ("ge0", "a number ≥ 0"),
    "res_scale": ("ge0", "a number ≥ 0"),
    "lr": ("gt0", "a number > 0"),
    "init_gain": ("gt0", "a number > 0"),
}


# What a per-position (segmentation) output needs: one logit per input position, so nothing may shrink the map.
SEGMENTATION_NEEDS = {"model": "cnn", "head": "dense", "stride": 1, "pool": "none"}


def _check_outputs(cfg: RunConfig) -> None:
    """The network's output must have the task's shape: per position for segmentation only."""
    segmenting = [name for name, d in DATASETS.items() if d.task == "segmentation"]
    if cfg.task == "segmentation":
        for name, needed in SEGMENTATION_NEEDS.items():
            if getattr(cfg, name) != needed:
                raise ConfigError(
                    name,
                    getattr(cfg, name),
                    f"{needed!r} for the segmentation task {cfg.dataset!r} (one logit "
                    f"per position needs {', '.join(f'{k}={v!r}' for k, v in SEGMENTATION_NEEDS.items())})",
                )
    elif cfg.model == "cnn" and cfg.head == "dense":
        raise ConfigError(
            "head",
            cfg.head,
            f"gap, flatten for the {cfg.task} task {cfg.dataset!r}; dense (one output per "
            f"position) is for the segmentation datasets: {', '.join(segmenting)}",
        )
    if cfg.task == "metric" and cfg.batch_size < 2:
        raise ConfigError("batch_size", cfg.batch_size, "an integer ≥ 2 for a metric task (pairs come from the batch)")


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError for the first field whose value is not allowed, alone or with the others."""
    _check_type(cfg)
    rules = {"ge1": lambda v: v >= 1, "ge0": lambda v: v >= 0, "gt0": lambda v: v > 0}
    for name, (rule, allowed) in _BOUNDS.items():
        if not rules[rule](getattr(cfg, name)):
            raise ConfigError(name, getattr(cfg, name), allowed)
    if cfg.kernel_size % 2 == 0:
        raise ConfigError("kernel_size", cfg.kernel_size, "an odd integer ≥ 1 (same padding)")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError("momentum", cfg.momentum, "a number in [0, 1)")
    if cfg.clip != "none" and cfg.clip_threshold <= 0:
        raise ConfigError("clip_threshold", cfg.clip_threshold, f"a number > 0 when clip={cfg.clip!r}")
    if cfg.seed > SEED_MAX:
        raise ConfigError("seed", cfg.seed, f"an integer in [0, {SEED_MAX}] (what Lightning's seed_everything takes)")
    if cfg.seq_len < 2:
        raise ConfigError("seq_len", cfg.seq_len, "an integer ≥ 2")
    data = DATASETS[cfg.dataset]
    if data.layout not in ACCEPTS[cfg.model]:
        readable = [name for name, d in DATASETS.items() if d.layout in ACCEPTS[cfg.model]]
        raise ConfigError(
            "model",
            cfg.model,
            f"for dataset={cfg.dataset!r} ({data.layout} inputs): "
            + ", ".join(m for m in MODELS if data.layout in ACCEPTS[m])
            + f"; model={cfg.model!r} needs one of the datasets {', '.join(readable)}",
        )
    if cfg.model == "rnn" and cfg.activation not in RNN_ACTIVATIONS:
        raise ConfigError("activation", cfg.activation, f"for model='rnn': {', '.join(RNN_ACTIVATIONS)}")
    if cfg.task not in tasks_for(cfg.loss):
        fitting = [name for name in LOSSES if cfg.task in tasks_for(name)]
        raise ConfigError("loss", cfg.loss, f"for the {cfg.task} task {cfg.dataset!r}: {', '.join(fitting)}")
    _check_outputs(cfg)
    if cfg.norm == "batch" and cfg.batch_size < 2:
        raise ConfigError("batch_size", cfg.batch_size, "an integer ≥ 2 with norm='batch'")
