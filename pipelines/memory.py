"""How much memory a run config needs, estimated from the config alone, before anything is allocated.

A config can be valid and still not fit the machine (`--width 10000000`, `--depth 100000`): building it
would swap or be killed minutes later. `check_fits` refuses such a config up front with a ConfigError that
names the field most to blame, the estimate and the limit. The estimate is the sum of

- parameters: float32 weights, their gradients and the optimizer's state (exact parameter counts, one
  function per model family, registered by the family's name like models/registry.py);
- activations: what one training batch keeps for the backward pass;
- data: the dataset's arrays (generated in float64, kept in float32);
- statistics: every recorded per-layer statistic, kept in memory until the run writes its table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from gradprobe import keys as K
from pipelines.config import RECURRENT, ConfigError, RunConfig
from pipelines.data import DATASETS

LIMIT_SHARE = 0.5  # of this machine's memory (or of the cgroup's limit): the rest is the OS, MLflow, other work
FLOAT = 4  # bytes of a float32
SAVED_PER_LAYER = 4  # tensors per hidden unit a batch keeps for backward: pre-norm, post-norm, activation, its gradient
DATA_BYTES = 12  # per input number: generated as float64, kept as float32
BYTES_PER_STAT = 80  # one recorded value: a Python float in the record lists, then a row of the parquet table
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adagrad": 1, "adam": 2, "adamw": 2}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # weight blocks per recurrent cell
# Fields that size the run; the one whose default most shrinks the estimate is named in the error.
SIZING = ("width", "depth", "kernel_size", "seq_len", "batch_size", "embed_dim", "latent_dim", "max_steps")
SEQUENCE_STEPS = 0  # marks an axis whose length is the config's seq_len


@dataclass(frozen=True)
class DataShape:
    """A dataset's sizes, known without loading it: one example's shape, examples, outputs, target numbers."""

    in_shape: tuple[int, ...]
    n_train: int
    n_val: int
    n_outputs: int
    target_size: int = 1
    n_test: int = 0  # the official test split, held in memory beside train and validation


def _shape(
    in_shape: tuple[int, ...], n_train: int, n_val: int, n_outputs: int, target: int = 1, n_test: int = 0
) -> Callable:
    def at(seq_len: int) -> DataShape:
        shape = tuple(seq_len if n == SEQUENCE_STEPS else n for n in in_shape)
        return DataShape(shape, n_train, n_val, n_outputs, seq_len if target == SEQUENCE_STEPS else target, n_test)

    return at


# The sizes pipelines/data.py produces (tests/test_memory.py checks each against the loaded data).
DATA_SHAPES: dict[str, Callable[[int], DataShape]] = {
    "digits": _shape((1, 8, 8), 1438, 359, 10),
    "mnist1d": _shape((1, 40), 3200, 800, 10, n_test=1000),  # validation held out of the 4,000 training examples
    "teacher": _shape((16,), 3277, 819, 1),
    "adding": _shape((SEQUENCE_STEPS, 2), 8000, 1000, 1),
    "temporal_order": _shape((SEQUENCE_STEPS, 6), 8000, 1000, 4),
    "diabetes": _shape((10,), 354, 88, 1),
    "breast_cancer": _shape((30,), 455, 114, 1),
    "segment1d": _shape((1, SEQUENCE_STEPS), 4000, 1000, 1, SEQUENCE_STEPS),
    "digits_metric": _shape((1, 8, 8), 1438, 359, 10),
    "gmm": _shape((2,), 8000, 1000, 2, 2),
    "mnist": _shape((1, 28, 28), 48000, 12000, 10, n_test=10000),  # the standard files
    "cifar10": _shape((3, 32, 32), 40000, 10000, 10, n_test=10000),
}

# family -> (cfg, in_shape, layout, n_outputs) -> (parameters, activation numbers per example)
Estimator = Callable[[RunConfig, tuple[int, ...], str, int], tuple[int, int]]
ESTIMATORS: dict[str, Estimator] = {}


def estimator(*names: str) -> Callable[[Estimator], Estimator]:
    """Register the size estimate of the model families `names`."""

    def wrap(fn: Estimator) -> Estimator:
        for name in names:
            ESTIMATORS[name] = fn
        return fn

    return wrap


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _norm(cfg: RunConfig, features: int) -> int:
    return 0 if cfg.norm == "none" else 2 * features  # batch, layer and group norm: a scale and a shift


@estimator("mlp")
def _mlp(cfg: RunConfig, in_shape: tuple[int, ...], layout: str, n_outputs: int) -> tuple[int, int]:
    w, d = cfg.width, cfg.depth
    hidden = _linear(math.prod(in_shape), w) + (d - 1) * _linear(w, w) + d * _norm(cfg, w)
    return hidden + _linear(w, n_outputs), d * w


@estimator("resmlp")
def _resmlp(cfg: RunConfig, in_shape: tuple[int, ...], layout: str, n_outputs: int) -> tuple[int, int]:
    w, d = cfg.width, cfg.depth
    hidden = _linear(math.prod(in_shape), w) + d * (_linear(w, w) + _norm(cfg, w))
    return hidden + _linear(w, n_outputs), (d + 1) * w


@estimator("cnn")
def _cnn(cfg: RunConfig, in_shape: tuple[int, ...], layout: str, n_outputs: int) -> tuple[int, int]:
    if layout == "sequence":  # read as features × time, as models/cnn.py does
        in_shape = (in_shape[-1], *in_shape[:-1])
    w, dims = cfg.width, len(in_shape) - 1
    spatial = list(in_shape[1:])
    block = w * w * cfg.kernel_size**dims + w + _norm(cfg, w)  # a conv block's parameters (input: w channels)
    params = in_shape[0] * w * cfg.kernel_size**dims + w + _norm(cfg, w) + (cfg.depth - 1) * block
    acts = 0
    for i in range(cfg.depth):  # the feature map shrinks with stride and pooling, then stays: stop there
        before = spatial
        s = cfg.stride if min(spatial) >= cfg.stride else 1
        spatial = [math.ceil(n / s) for n in spatial]
        if cfg.pool == "max" and min(spatial) >= 2:
            spatial = [n // 2 for n in spatial]
        acts += w * math.prod(spatial)
        if spatial == before:  # nothing shrinks any more: the other blocks are alike
            acts += (cfg.depth - 1 - i) * w * math.prod(spatial)
            break
    positions = math.prod(spatial)
    readout = _linear(w * positions if cfg.head == "flatten" else w, n_outputs)
    return params + readout, acts + (n_outputs * positions if cfg.head == "dense" else 0)


@estimator(*RECURRENT)
def _recurrent(cfg: RunConfig, in_shape: tuple[int, ...], layout: str, n_outputs: int) -> tuple[int, int]:
    features, steps = (in_shape[0], in_shape[1]) if layout == "signal" else (in_shape[1], in_shape[0])
    w, g = cfg.width, GATES[cfg.model]
    layer = g * w * (features + w) + 2 * g * w + _norm(cfg, w)  # the first layer; the others read w features
    params = layer + (cfg.depth - 1) * (g * w * 2 * w + 2 * g * w + _norm(cfg, w))
    return params + _linear(w, n_outputs), cfg.depth * steps * w * (g + 1)


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs, by part."""

    parameters: int
    activations: int
    data: int
    statistics: int

    @property
    def total(self) -> int:
        """All parts together."""
        return self.parameters + self.activations + self.data + self.statistics


def n_parameters(cfg: RunConfig) -> int:
    """The trained network's parameter count (the generator's for a GAN), from the config alone."""
    return _network(cfg)[0]


def _network(cfg: RunConfig) -> tuple[int, int]:
    data = DATA_SHAPES[cfg.dataset](cfg.seq_len)
    n_outputs = cfg.embed_dim if cfg.task == "metric" else data.n_outputs
    if cfg.task == "adversarial":  # the generator: latent noise in, points out (the discriminator is small)
        return ESTIMATORS[cfg.model](cfg, (cfg.latent_dim,), "vector", n_outputs)
    return ESTIMATORS[cfg.model](cfg, data.in_shape, DATASETS[cfg.dataset].layout, n_outputs)


def estimate(cfg: RunConfig) -> Estimate:
    """The bytes `cfg` needs to train, from its fields alone (nothing is built)."""
    data = DATA_SHAPES[cfg.dataset](cfg.seq_len)
    params, acts = _network(cfg)
    batch = min(cfg.batch_size, data.n_train)  # larger than the training set: full batch
    per_layer = len(K.GRAD_STATS) + len(K.ACT_STATS) + 2  # + backprop l2 and the update ratio
    if cfg.model in GATES:  # per time step BPTT norms, their summary, the gates
        per_layer += max(data.in_shape) + len(K.BPTT_SUMMARY) + 2 * len(K.GATE_STATS)
    if cfg.histograms == "on":  # a count per log10|g| bin, under/over, zeros and non-finite
        per_layer += len(K.HIST_STATS)
    records = math.ceil(cfg.max_steps / cfg.log_every) + 1
    return Estimate(
        parameters=params * FLOAT * (2 + OPTIMIZER_STATE[cfg.optimizer]),  # weights, gradients, state
        activations=batch * acts * FLOAT * SAVED_PER_LAYER,
        data=(data.n_train + data.n_val + data.n_test) * (math.prod(data.in_shape) + data.target_size) * DATA_BYTES,
        statistics=records * (cfg.depth + 1) * per_layer * BYTES_PER_STAT,
    )


def memory_limit() -> tuple[int, str]:
    """(bytes a run may use, how that was found): a share of physical memory, or of the cgroup's limit."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    source = "this machine's memory"
    try:  # a container's cgroup v2 limit, when it is below the machine's
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit() and int(text) < physical:
            physical, source = int(text), "the cgroup's memory limit"
    except OSError:
        pass
    return int(physical * LIMIT_SHARE), f"{LIMIT_SHARE:.0%} of {source}"


def gib(n: int) -> str:
    """Bytes as GiB with 3 significant digits, for any size (a 10**300-byte estimate included)."""
    return f"{Decimal(n) / 2**30:.3g} GiB"


def _blame(cfg: RunConfig) -> str:
    """The sizing field whose default would shrink the estimate most."""
    defaults = RunConfig()
    smaller = {}
    for name in SIZING:
        if getattr(cfg, name) > getattr(defaults, name):
            try:
                smaller[name] = estimate(cfg.replace(**{name: getattr(defaults, name)})).total
            except ConfigError:  # the default does not fit the other fields (e.g. batch_size for a metric task)
                continue
    return min(smaller, key=smaller.__getitem__) if smaller else "batch_size"


def check_fits(cfg: RunConfig) -> None:
    """ConfigError naming the field to blame, the estimate and the limit, if `cfg` would not fit in memory."""
    need, (limit, source) = estimate(cfg), memory_limit()
    if need.total <= limit:
        return
    name = _blame(cfg)
    parts = ", ".join(
        f"{part} {gib(getattr(need, part))}" for part in ("parameters", "activations", "data", "statistics")
    )
    raise ConfigError(
        name,
        getattr(cfg, name),
        f"a run that fits in memory: this one needs about {gib(need.total)} "
        f"({parts}), the limit is {gib(limit)} ({source})",
    )
