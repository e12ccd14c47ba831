"""Synthetic but realistic studies, written through the real Recorder into real MLflow runs, without training.

A study is a parent run tagged like the runner's (study, role=parent, objective param) and nested trial runs
(study, trial, role=trial, outcome, every RunConfig field as a param). Each trial's statistics follow the
metric contract: back-propagated norms shrink or grow by the mean-field gain of its configuration (with
finite-width noise), weight gradients and losses decay over training, stalled and diverged runs behave
like real ones, recurrent runs carry per-time-step BPTT norms. The benchmark and the tests use it to get
many runs in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from analysis import summary
from common import liveness
from gradprobe import keys as K
from gradprobe.recorder import Recorder
from pipelines.config import RunConfig

ARCHS = {
    "plain": {"model": "mlp", "norm": "none"},
    "batchnorm": {"model": "mlp", "norm": "batch"},
    "residual": {"model": "resmlp", "norm": "none", "res_scale": 0.177},
}
OPTIMS = {
    "sgd": {"optimizer": "sgd", "lr": 0.1},
    "momentum": {"optimizer": "momentum", "lr": 0.02},
    "adam": {"optimizer": "adam", "lr": 0.002},
}
CLIPS = ({"clip": "none"}, {"clip": "norm", "clip_threshold": 0.5}, {"clip": "norm", "clip_threshold": 5.0})
RECURRENT = (
    {"model": "rnn", "activation": "tanh"},
    {"model": "lstm", "activation": "tanh"},
    {"model": "gru", "activation": "tanh"},
)
# Like the mean-field statistics of a layer's output: (mean, std) at initialization.
ACT_MOMENTS = {"sigmoid": (0.5, 0.15), "tanh": (0.0, 0.55), "relu": (0.56, 0.82)}
VAL_POINTS = 5


@dataclass(frozen=True)
class Shape:
    """How big each synthetic run is: the default spec's sizes by default."""

    width: int = 64
    max_steps: int = 150
    log_every: int = 5
    metric_points: int = 4  # few MLflow points: the report reads parquet, and SQLite ingestion is the slow part
    seq_len: int = 30
    depths: tuple[int, ...] = (2, 8, 32)


def config(index: int, rng: np.random.Generator, shape: Shape) -> RunConfig:
    """The index-th trial's config: mostly MLPs over activation × init × depth × arch; of every ten, the second
    is an exploding ReLU net, the fourth a recurrent net and the sixth the exploding net clipped (so even a six-run
    study has every case)."""
    common = {
        "width": shape.width,
        "max_steps": shape.max_steps,
        "log_every": shape.log_every,
        "metric_points": shape.metric_points,
        "batch_size": 64,
    }
    common.update(OPTIMS[str(rng.choice(list(OPTIMS)))])
    common.update(CLIPS[int(rng.integers(len(CLIPS)))])
    if index % 10 in (1, 5):  # the exploding study's case: ReLU above the edge of chaos, plain SGD; unclipped,
        clip = {"clip": "none"} if index % 10 == 1 else {"clip": "norm", "clip_threshold": 1.0}  # then clipped
        return RunConfig(
            dataset="digits",
            activation="relu",
            init="kaiming_normal",
            init_gain=1.5,
            depth=max(shape.depths),
            **{**common, **OPTIMS["sgd"], **clip},
        )
    if index % 10 == 3:
        return RunConfig(
            dataset="adding",
            loss="mse",
            depth=1,
            init="orthogonal",
            seq_len=shape.seq_len,
            **RECURRENT[(index // 10) % 3],
            **common,
        )
    return RunConfig(
        dataset="digits",
        activation=str(rng.choice(list(ACT_MOMENTS))),
        init=str(rng.choice(["xavier_normal", "kaiming_normal", "orthogonal"])),
        depth=int(rng.choice(shape.depths)),
        **ARCHS[str(rng.choice(list(ARCHS)))],
        **common,
    )


def _layer_gains(cfg: RunConfig) -> np.ndarray:
    """Per-layer backprop gain of layers 1…depth−1 (theory where it has a closed form, else 1)."""
    mean, std = ACT_MOMENTS.get(cfg.activation, (0.0, 1.0))
    gains, _ = summary.predicted_layer_gains(cfg.to_dict(), mean**2 + std**2)
    return np.where(np.isfinite(gains), gains, 1.0)


def _trajectory(cfg: RunConfig, rng: np.random.Generator) -> tuple[np.ndarray, float, int | None]:
    """Logged steps, the loss floor reached (1 = stalled) and the divergence step (None if it stays finite)."""
    steps = np.unique(np.r_[np.arange(0, cfg.max_steps, cfg.log_every), cfg.max_steps - 1])
    gains = _layer_gains(cfg) if cfg.depth > 1 else np.ones(1)
    total = float(np.prod(gains))
    # Unclipped SGD-type steps on an exploding net overflow within a few steps (Adam rescales, clipping caps).
    if (total > 1e2 or gains.max() > 1.3) and cfg.clip == "none" and cfg.optimizer != "adam":
        return steps[steps <= steps[min(3, len(steps) - 1)]], 1.0, int(steps[min(3, len(steps) - 1)])
    floor = 0.97 if total < 1e-4 else float(rng.uniform(0.05, 0.4))
    return steps, floor, None


def _record_run(recorder: Recorder, cfg: RunConfig, rng: np.random.Generator) -> tuple[str, int | None]:
    """Write one run's statistics step by step; returns its outcome and divergence step."""
    steps, floor, diverged = _trajectory(cfg, rng)
    layers = [f"L{i:03d}" for i in range(cfg.depth)] + ["out"]
    gains = _layer_gains(cfg) if cfg.depth > 1 else np.empty(0)
    # Input side first: norm_l = norm_{D−1}·Π g_k, with ~3 % finite-width noise per layer.
    inward = np.r_[np.cumprod((gains * rng.lognormal(0, 0.03, gains.size))[::-1])[::-1], 1.0]
    backprop0 = np.r_[0.6 * inward, 0.5]
    mean0, std0 = ACT_MOMENTS.get(cfg.activation, (0.0, 0.5))
    sat0 = {"sigmoid": 0.05, "tanh": 0.02, "relu": 0.5}.get(cfg.activation, 0.0)
    loss0 = 2.3 if cfg.loss == "ce" else 0.5
    names = [K.TRAIN_LOSS, K.GLOBAL_NORM, K.GLOBAL_NORM_CLIPPED, K.ELAPSED]
    names += [K.key("grad", layer, stat) for stat in ("l2", "rms", "absmax") for layer in layers]
    names += [K.key("backprop", layer, "l2") for layer in layers]
    names += [K.key("act", layer, stat) for layer in layers[:-1] for stat in K.ACT_STATS]
    names += [K.key("update", layer, "ratio") for layer in layers]
    recurrent = cfg.model in ("rnn", "lstm", "gru")
    if recurrent:
        names += [K.key("bptt", "L000", K.time_stat(t)) for t in range(cfg.seq_len)]
    decay = {"rnn": 0.75, "lstm": 0.93, "gru": 0.95}.get(cfg.model, 1.0)
    val_every = max(1, len(steps) // VAL_POINTS)
    for n, step in enumerate(steps):
        progress = step / cfg.max_steps
        loss = loss0 * (floor + (1 - floor) * math.exp(-4 * progress)) * rng.lognormal(0, 0.05)
        shrink = math.exp(-2 * progress)
        backprop = backprop0 * shrink * (rng.lognormal(0, 0.1, backprop0.size) if step else 1.0)
        grad = backprop * 0.3 * math.sqrt(cfg.width)
        global_l2 = float(np.sqrt((grad**2).sum()))
        clipped = min(global_l2, cfg.clip_threshold) if cfg.clip == "norm" else global_l2
        act = np.column_stack(
            [
                np.full(cfg.depth, mean0),
                np.full(cfg.depth, std0),
                np.clip(np.full(cfg.depth, sat0) + 0.2 * progress * np.linspace(0, 1, cfg.depth), 0, 1),
            ]
        )
        update = 1e-3 * {"sgd": 3.0, "momentum": 5.0, "adam": 1.0}[cfg.optimizer] * grad / grad.max() * shrink
        values = [
            loss,
            global_l2,
            clipped,
            0.004 * step * (1 + cfg.depth / 8),
            *grad,
            *(grad / math.sqrt(cfg.width)),
            *(grad / 10),
            *backprop,
            *act.ravel(),
            *update,
        ]
        if recurrent:
            values += list(backprop0[-1] * decay ** (cfg.seq_len - 1 - np.arange(cfg.seq_len)) * (1 + progress))
        if diverged is not None and step == diverged:
            values = [math.nan if k.startswith(("train", "grad/")) else v for k, v in zip(names, values)]
        recorder.record(int(step), names, values)
        if diverged is None and (n % val_every == 0 or step == steps[-1]) and n:
            val = {K.VAL_LOSS: loss * 1.1}
            if cfg.loss == "ce":
                val[K.VAL_ACC] = float(np.clip(0.1 + 0.85 * (1 - loss / loss0) / (1 - floor * 0.9), 0.05, 0.99))
            recorder.log_metrics(int(step) + 1, val)
    return ("diverged", diverged) if diverged is not None else ("completed", None)


def make_study(
    name: str,
    n_runs: int,
    *,
    client: MlflowClient | None = None,
    experiment_id: str = "0",
    seed: int = 0,
    shape: Shape = Shape(),
) -> str:
    """Create a parent run and `n_runs` nested trial runs with synthetic statistics; returns the parent run id."""
    client = client or MlflowClient()
    rng = np.random.default_rng(seed)
    parent = client.create_run(experiment_id, run_name=name, tags={"study": name, "role": "parent"}).info.run_id
    client.log_batch(
        parent,
        params=[Param("spec", "synthetic"), Param("objective", "maximize val/acc"), Param("n_trials", str(n_runs))],
    )
    for index in range(n_runs):
        cfg = config(index, rng, shape)
        tags = {"mlflow.parentRunId": parent, "study": name, "trial": str(index), "role": "trial"}
        run_id = client.create_run(experiment_id, run_name=f"{name}-{index}", tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()])
        expected = math.ceil(cfg.max_steps / cfg.log_every) + 1
        recorder = Recorder(
            client,
            run_id,
            expected_records=expected,
            metric_points=cfg.metric_points,
            heartbeat=liveness.heartbeat(client, run_id),
            heartbeat_seconds=liveness.HEARTBEAT_SECONDS,
        )
        outcome, diverged = _record_run(recorder, cfg, rng)
        recorder.close()
        end_tags = [RunTag("outcome", outcome)] + (
            [RunTag("diverged_step", str(diverged))] if diverged is not None else []
        )
        client.log_batch(run_id, tags=end_tags)
        client.set_terminated(run_id)
    client.set_terminated(parent)
    return parent
