"""Shift invariance and equivariance of the pipeline's networks, and the invariances that shape gradients.

    python -m pipelines.invariance                       # the zoo on mnist1d and digits; reuses trained runs
    python -m pipelines.invariance --retrain true --max-steps 300
    mlflow run . -e invariance --env-manager local

A model f is invariant to a transformation T when f(T x) = f(x) and equivariant when f(T x) = T f(x).
T is a shift by k along every spatial axis (1-D signals: k samples; 2-D images: k rows and k columns,
a diagonal shift), either circular (`torch.roll`) or non-circular: the content moves, what leaves the
frame is lost and the vacated border is filled with the background (the median of the inputs' border
values, ≈ 0 for mnist1d, the blank paper of digits).

The functions below are pure (they never change the network they are given); `main` is the entry point:
it builds the zoo, trains what MLflow does not hold yet (one nested run per model, its weights logged as
`model/state_dict.pt`), tests every model at initialization and trained, and logs the numbers to the
model's run (keys in gradprobe/keys.py and the README) and as `invariance/metrics.parquet`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from torch import Tensor, nn

from gradprobe import keys as K
from pipelines import liveness, train
from pipelines.cli import OneLineParser
from pipelines.config import ConfigError, RunConfig
from pipelines.memory import check_fits
from pipelines.preflight import check_tracking, sigterm_interrupts

STUDY, ZOO_TAG, ZOO_ARTIFACT = K.INVARIANCE, K.INVARIANCE_ZOO_TAG, K.INVARIANCE_ZOO_ARTIFACT
MODEL_ARTIFACT = "model/state_dict.pt"  # torch.save(net.state_dict()): loading needs RunConfig + train.build only
LossFn = Callable[[Tensor, Tensor], Tensor]

# ------------------------------------------------------------------------------------------- shifts


def spatial_dims(x: Tensor) -> tuple[int, ...]:
    """The spatial axes of a (B, C, L) or (B, C, H, W) batch."""
    return tuple(range(2, x.dim()))


def shift(x: Tensor, k: int | Sequence[int], *, circular: bool = True, fill: float = 0.0) -> Tensor:
    """x shifted by k along every spatial axis (or by k[i] along axis i): circular, or with `fill` entering."""
    dims = spatial_dims(x)
    ks = tuple(k) if isinstance(k, Sequence) else (k,) * len(dims)
    if circular:
        return torch.roll(x, ks, dims)
    out = torch.full_like(x, fill)
    src, dst = [slice(None)] * x.dim(), [slice(None)] * x.dim()
    for d, kd in zip(dims, ks):
        n = x.shape[d]
        if abs(kd) >= n:
            return out
        src[d], dst[d] = (slice(0, n - kd), slice(kd, n)) if kd >= 0 else (slice(-kd, n), slice(0, n + kd))
    out[tuple(dst)] = x[tuple(src)]
    return out


def background(x: Tensor) -> float:
    """The fill value of non-circular shifts: the median of the inputs' border entries (the blank background)."""
    border = torch.zeros(x.shape[2:], dtype=torch.bool)
    for d in range(border.dim()):
        index = [slice(None)] * border.dim()
        for edge in (0, -1):
            index[d] = edge
            border[tuple(index)] = True
    return float(x[..., border].median())


# ------------------------------------------------------------------------------ shift invariance


@torch.no_grad()
def probabilities(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Softmax outputs of `net` in eval mode (its mode is restored), in chunks."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([F.softmax(net(part), dim=-1) for part in x.split(batch)])
    finally:
        net.train(was_training)


def _agreement(p0: Tensor, p1: Tensor) -> float:
    return float((p0.argmax(-1) == p1.argmax(-1)).double().mean())


def _top_prob_change(p0: Tensor, p1: Tensor) -> float:
    top = p0.argmax(-1, keepdim=True)
    return float((p1.gather(-1, top) - p0.gather(-1, top)).abs().double().mean())


def accuracy_vs_shift(net: nn.Module, x: Tensor, y: Tensor, shifts: Iterable[int], *, circular: bool = True,
                      fill: float = 0.0) -> dict[int, float]:  # fmt: skip
    """Accuracy on inputs shifted by each k."""
    return {k: float((probabilities(net, shift(x, k, circular=circular, fill=fill)).argmax(-1) == y).double().mean())
            for k in shifts}  # fmt: skip


def consistency(net: nn.Module, x: Tensor, k: int, *, circular: bool = True, fill: float = 0.0) -> float:
    """Share of inputs whose top-1 class is the same for x and for x shifted by k (Zhang 2019)."""
    return _agreement(probabilities(net, x), probabilities(net, shift(x, k, circular=circular, fill=fill)))


def prob_change(net: nn.Module, x: Tensor, k: int = 1, *, circular: bool = True, fill: float = 0.0) -> float:
    """Mean |p_c(T_k x) − p_c(x)| of the class c predicted for x (Azulay & Weiss 2019 use k = 1)."""
    return _top_prob_change(probabilities(net, x), probabilities(net, shift(x, k, circular=circular, fill=fill)))


def shift_metrics(net: nn.Module, x: Tensor, y: Tensor, max_shift: int, fill: float) -> list[dict[str, Any]]:
    """Accuracy and consistency for every shift in [−max_shift, max_shift] and the one-step probability
    change, circular and non-circular, as rows (metric, mode, shift, value); shift None = the one-step
    summary, the mean over k = ±1 (of consistency and of the probability change)."""
    p0 = probabilities(net, x)
    rows: list[dict[str, Any]] = []
    for mode in K.SHIFT_MODES:
        agree, change = [], []
        for k in range(-max_shift, max_shift + 1):
            pk = p0 if k == 0 else probabilities(net, shift(x, k, circular=mode == "circ", fill=fill))
            rows.append(dict(metric="acc", mode=mode, shift=k, value=float((pk.argmax(-1) == y).double().mean())))
            if k != 0:
                rows.append(dict(metric="consistency", mode=mode, shift=k, value=_agreement(p0, pk)))
            if abs(k) == 1:
                agree.append(rows[-1]["value"])
                change.append(_top_prob_change(p0, pk))
        rows.append(dict(metric="consistency", mode=mode, shift=None, value=sum(agree) / len(agree)))
        rows.append(dict(metric="prob_change", mode=mode, shift=None, value=sum(change) / len(change)))
    return rows


# -------------------------------------------------------------------------------------- equivariance


def layer_strides(net: nn.Module) -> dict[str, int]:
    """Each conv block's name (L000, …) and cumulative stride (strides and pooling up to its output)."""
    from models.base import layer_name

    return {layer_name(i): block.total_stride for i, block in enumerate(net.layers)}


@torch.no_grad()
def equivariance_errors(net: nn.Module, x: Tensor, k: int) -> dict[str, float]:
    """‖f_l(T_k x) − T_{k/s} f_l(x)‖ / ‖f_l(x)‖ of every conv block l (norms over the batch; T circular).

    For a block of total stride s the output grid moves by k/s; when k is not a multiple of s no shift of
    the output matches, and the error is against the nearer of ⌊k/s⌋ and ⌈k/s⌉ per axis (the smaller).
    Needs `net.features` (the CNN family); eval mode, restored afterwards.
    """
    was_training = net.training
    net.eval()
    try:
        plain, moved = net.features(x), net.features(shift(x, k))
    finally:
        net.train(was_training)
    errors = {}
    for (name, s), f, fk in zip(layer_strides(net).items(), plain, moved):
        dims = spatial_dims(f)
        steps = sorted({math.floor(k / s), math.ceil(k / s)})
        best = min(float(torch.linalg.vector_norm(fk - torch.roll(f, js, dims)))
                   for js in itertools.product(steps, repeat=len(dims)))  # fmt: skip
        errors[name] = best / max(float(torch.linalg.vector_norm(f)), 1e-30)
    return errors


def equivariance_rows(net: nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """Rows (metric eqerr, layer, stride, shift, value) for shifts by 1 and by each layer's total stride."""
    strides = layer_strides(net)
    rows = []
    for k in sorted({1, *strides.values()}):
        errors = equivariance_errors(net, x, k)
        for layer, s in strides.items():
            if k in (1, s):
                rows.append(dict(metric="eqerr", layer=layer, stride=s, shift=k, value=errors[layer]))
    return rows


# ----------------------------------------------------------------- invariances that shape gradients


def _rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def _owner(block: nn.Module, weight: nn.Parameter) -> nn.Module:
    """The submodule (Linear or Conv) whose `.weight` is `weight`."""
    return next(m for m in block.modules() if getattr(m, "weight", None) is weight)


def _forward_backward(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn,
                      params: Sequence[nn.Parameter]) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
    net.zero_grad(set_to_none=True)
    out = net(x)
    loss_fn(out, y).backward()
    return out.detach(), [p.grad.detach().clone() for p in params]


def _after_one_step(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, lr: float) -> Tensor:
    """The output on x after one plain SGD step (lr) on the loss at (x, y), on a copy."""
    net = copy.deepcopy(net)
    net.zero_grad(set_to_none=True)
    loss_fn(net(x), y).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad
        return net(x)


def _float64_copies(net: nn.Module, x: Tensor, train_mode: bool) -> tuple[nn.Module, nn.Module, Tensor]:
    base = copy.deepcopy(net).double().train(train_mode)
    return base, copy.deepcopy(base), x.double()


def batchnorm_scale_check(net: nn.Module, x: Tensor, y: Tensor, c: float, *, layer: int = 0,
                          loss_fn: LossFn = F.cross_entropy, lr: float = 0.1) -> dict[str, float]:  # fmt: skip
    """Scale the weight before block `layer`'s batch norm by c and measure what changes.

    Batch norm removes the scale: the output is unchanged and the weight's gradient is scaled by 1/c, so
    SGD's step on that weight is 1/c² smaller relative to it. The identity is exact for eps = 0, so it is
    measured with the batch norms' eps set to 1e-30 (≈ 0 in float64; PyTorch refuses 0); `out_change_eps` is the output change with the network's
    own eps (PyTorch's 1e-5 adds a relative change of order eps/Var, largest for small c). Returns
    out_change = ‖f'−f‖/‖f‖, grad_scale = ‖g'‖/‖g‖ (expect 1/c), grad_err = ‖c·g' − g‖/‖g‖ (expect 0),
    step_change = ‖f'−f‖/‖f‖ after one SGD step (lr) on both, and out_change_eps. Works on float64
    copies in train mode (batch statistics).
    """
    base, scaled, x = _float64_copies(net, x, train_mode=True)
    norms = [m for m in base.layers[layer].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"block {layer} has no batch norm")
    with torch.no_grad():
        scaled.layers[layer].main_weight.mul_(c)
        own_eps = _rel(scaled(x), base(x))
    for model in (base, scaled):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-30
    w0, w1 = base.layers[layer].main_weight, scaled.layers[layer].main_weight
    out0, (g0,) = _forward_backward(base, x, y, loss_fn, [w0])
    out1, (g1,) = _forward_backward(scaled, x, y, loss_fn, [w1])
    after0, after1 = _after_one_step(base, x, y, loss_fn, lr), _after_one_step(scaled, x, y, loss_fn, lr)
    return {
        "out_change": _rel(out1, out0),
        "grad_scale": float(torch.linalg.vector_norm(g1) / torch.linalg.vector_norm(g0)),
        "grad_err": _rel(c * g1, g0),
        "step_change": _rel(after1, after0),
        "out_change_eps": own_eps,
    }


def relu_rescaling_check(net: nn.Module, x: Tensor, y: Tensor, c: float, *, layer: int = 0,
                         loss_fn: LossFn = F.cross_entropy, lr: float = 0.1) -> dict[str, float]:  # fmt: skip
    """Scale block `layer`'s weight and bias by c > 0 and the next layer's weight by 1/c and measure.

    ReLU (and max-pooling, zero padding, averaging) is positively homogeneous, φ(c·z) = c·φ(z), so the
    function is unchanged, but the gradient of block `layer` is scaled by 1/c and the next layer's by c:
    gradient descent is not invariant to this reparametrization. The next layer is block layer+1 or the
    readout. Returns out_change, grad_scale_l (expect 1/c), grad_scale_next (expect c), grad_err (the larger
    of ‖c·g_l' − g_l‖/‖g_l‖ and ‖g_next'/c − g_next‖/‖g_next‖) and step_change (after one SGD step).
    Works on float64 copies in eval mode; the blocks must have no normalization.
    """
    if c <= 0:
        raise ValueError(f"c must be > 0 (positive homogeneity), got {c}")
    base, scaled, x = _float64_copies(net, x, train_mode=False)
    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) for m in base.modules()):
        raise ValueError("the ReLU rescaling identity needs a network without normalization")

    def pair(model: nn.Module) -> tuple[nn.Module, nn.Parameter]:
        block = model.layers[layer]
        after = model.layers[layer + 1].main_weight if layer + 1 < len(model.layers) else model.readout.weight
        return _owner(block, block.main_weight), after

    first, nxt = pair(scaled)
    with torch.no_grad():
        first.weight.mul_(c)
        if first.bias is not None:
            first.bias.mul_(c)
        nxt.div_(c)
    first0, nxt0 = pair(base)
    out0, (gl0, gn0) = _forward_backward(base, x, y, loss_fn, [first0.weight, nxt0])
    out1, (gl1, gn1) = _forward_backward(scaled, x, y, loss_fn, [first.weight, nxt])
    after0, after1 = _after_one_step(base, x, y, loss_fn, lr), _after_one_step(scaled, x, y, loss_fn, lr)
    norm = torch.linalg.vector_norm
    return {
        "out_change": _rel(out1, out0),
        "grad_scale_l": float(norm(gl1) / norm(gl0)),
        "grad_scale_next": float(norm(gn1) / norm(gn0)),
        "grad_err": max(_rel(c * gl1, gl0), _rel(gn1 / c, gn0)),
        "step_change": _rel(after1, after0),
    }


def has_batch_norm(net: nn.Module) -> bool:
    """Whether any block normalizes with batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def gradient_rows(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, scales: Iterable[float]) -> list[dict]:
    """The check that fits the network (batch norm: scale invariance; otherwise ReLU rescaling of L000/L001)."""
    check, fn = (K.BN_SCALE, batchnorm_scale_check) if has_batch_norm(net) else (K.RELU_RESCALE, relu_rescaling_check)
    rows = []
    for c in scales:
        for stat, value in fn(net, x, y, c, loss_fn=loss_fn).items():
            rows.append(dict(metric=check, stat=stat, scale=c, layer="L000", value=value))
    return rows


# ------------------------------------------------------------------------------------------ the zoo

BASE = dict(depth=3, width=32, activation="relu", optimizer="adam", lr=0.01, batch_size=64, max_steps=300,
            log_every=10)  # fmt: skip
PER_DATASET = {"mnist1d": dict(kernel_size=5), "digits": dict(kernel_size=3)}  # receptive field 13 of 40, 7 of 8
# One change at a time from the exactly invariant model (circular padding, stride 1, global average pool).
ZOO: dict[str, dict[str, Any]] = {
    "mlp": dict(model="mlp"),
    "mlp_bn": dict(model="mlp", norm="batch"),
    "cnn_circ": dict(model="cnn", padding="circular"),
    "cnn_zeros": dict(model="cnn", padding="zeros"),
    "cnn_circ_stride2": dict(model="cnn", padding="circular", stride=2),
    "cnn_circ_pool": dict(model="cnn", padding="circular", pool="max"),
    "cnn_circ_flatten": dict(model="cnn", padding="circular", head="flatten"),
    "cnn_circ_bn": dict(model="cnn", padding="circular", norm="batch"),
}
DATASETS = ("mnist1d", "digits")  # 1-D and 2-D shifts
MAX_SHIFT = {"mnist1d": 10, "digits": 3}  # accuracy and consistency for shifts in [−K, K]
SCALES = (0.1, 0.3, 3.0, 10.0)  # c of the gradient-invariance checks (not powers of 2, which scale exactly)
EQ_EXAMPLES, GRAD_EXAMPLES = 256, 64


def zoo_config(name: str, dataset: str, **overrides: Any) -> RunConfig:
    """The RunConfig of zoo model `name` on `dataset`."""
    return RunConfig(dataset=dataset, **{**BASE, **PER_DATASET.get(dataset, {}), **ZOO[name], **overrides})


def _trial_number(name: str, dataset: str) -> int:
    return DATASETS.index(dataset) * len(ZOO) + list(ZOO).index(name) if dataset in DATASETS else -1


def find_trained(client: MlflowClient, experiment_id: str, name: str, cfg: RunConfig) -> str | None:
    """The newest FINISHED, completed run of zoo model `name` with exactly cfg's params and a logged model."""
    found = client.search_runs(
        [experiment_id],
        f"tags.{ZOO_TAG} = '{name}' and tags.outcome = 'completed' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    want = {k: str(v) for k, v in cfg.to_dict().items()}
    for run in found:
        if run.data.params == want:
            listed = {a.path for a in client.list_artifacts(run.info.run_id, Path(MODEL_ARTIFACT).parent.as_posix())}
            if MODEL_ARTIFACT in listed:
                return run.info.run_id
    return None


def _log_model(name: str, cfg: RunConfig) -> Callable[[str, Any], None]:
    def log(run_id: str, lit: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(MODEL_ARTIFACT).name
            torch.save(lit.net.state_dict(), path)
            mlflow.log_artifact(str(path), artifact_path=Path(MODEL_ARTIFACT).parent.as_posix())
        mlflow.set_tag("mlflow.runName", f"{cfg.dataset}-{name}")

    return log


def load_net(cfg: RunConfig, run_id: str | None = None) -> tuple[nn.Module, Any, LossFn]:
    """(network in eval mode, data module, loss) of cfg: the weights of run_id's `model/state_dict.pt`, or
    the seeded initialization when run_id is None (train.build: same seed, same init as the trained run)."""
    data, lit = train.build(cfg)
    if run_id is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=tmp)
            lit.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return lit.net.eval(), data, lit.loss_fn


def row_key(row: dict[str, Any]) -> str:
    """The MLflow key of one metrics row."""
    metric, state = row["metric"], row["state"]
    if metric in ("acc", "consistency", "prob_change"):
        return K.shift_key(state, metric, row["mode"], row.get("shift"))
    if metric == "eqerr":
        return K.eqerr_key(state, row["layer"], row["shift"])
    return K.gradcheck_key(state, metric, row["scale"], row["stat"])


COLUMNS = ["key", "state", "metric", "stat", "mode", "shift", "layer", "stride", "scale", "value"]


def measure(cfg: RunConfig, run_id: str) -> pd.DataFrame:
    """Every invariance number of the zoo run `run_id` (config cfg), at initialization and trained: a long table."""
    rows = []
    for state in K.INVARIANCE_STATES:
        net, data, loss_fn = load_net(cfg, run_id if state == "trained" else None)
        x, y = data.val.tensors
        xt, yt = (t[:GRAD_EXAMPLES] for t in data.train.tensors)
        found = shift_metrics(net, x, y, MAX_SHIFT.get(cfg.dataset, max(1, min(x.shape[2:]) // 4)),
                              background(data.train.tensors[0]))  # fmt: skip
        if hasattr(net, "features"):
            found += equivariance_rows(net, x[:EQ_EXAMPLES])
        found += gradient_rows(net, xt, yt, loss_fn, SCALES)
        rows += [{**r, "state": state} for r in found]
    for r in rows:
        r["key"] = row_key(r)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table.astype({"shift": "Int64", "stride": "Int64", "scale": float, "value": float})


def log_measurements(client: MlflowClient, run_id: str, table: pd.DataFrame) -> None:
    """The table's values as MLflow metrics (step 0, log_batch chunks) and as the parquet artifact."""
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in zip(table["key"], table["value"])]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(K.INVARIANCE_ARTIFACT).name
        table.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), artifact_path=Path(K.INVARIANCE_ARTIFACT).parent.as_posix())


# ----------------------------------------------------------------------------------- the entry point


def _experiment_id(client: MlflowClient, own: str | None) -> str:
    if own is not None:
        return client.get_run(own).info.experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default").experiment_id


def attach(client: MlflowClient) -> tuple[str, str, str]:
    """(parent run id, this invocation's run id, experiment id): one tree per experiment, as studies are.

    The first invocation's run (the one `mlflow run` made, or a new one) becomes the parent (study=invariance,
    role=parent); a later one nests its own run under it with role=worker, and new zoo runs nest under the parent.
    """
    own = os.environ.pop("MLFLOW_RUN_ID", None)  # train.run's start_run must not take it over
    experiment_id = _experiment_id(client, own)
    parents = client.search_runs([experiment_id], f"tags.study = '{STUDY}' and tags.role = 'parent'",
                                 order_by=["attributes.start_time ASC"], max_results=1)  # fmt: skip
    parents = [p for p in parents if p.info.run_id != own]
    if own is None:
        own = client.create_run(experiment_id, run_name=STUDY).info.run_id
    parent = parents[0].info.run_id if parents else own
    tags = {"study": STUDY, "role": "parent" if parent == own else "worker",
            "mlflow.runName": STUDY if parent == own else f"{STUDY}-worker", **liveness.identity()}  # fmt: skip
    if parent != own:
        tags["mlflow.parentRunId"] = parent
    for key, value in tags.items():
        client.set_tag(own, key, value)
    return parent, own, experiment_id


def run_zoo(names: Sequence[str], datasets: Sequence[str], *, retrain: bool = False, report: bool = True,
            **overrides: Any) -> pd.DataFrame:  # fmt: skip
    """Train (or reuse) and test every zoo model on every dataset; returns the zoo table (one row per run)."""
    for name in names:
        if name not in ZOO:
            raise ConfigError("models", name, ", ".join(ZOO))
    configs = [(name, zoo_config(name, d, **overrides)) for d in datasets for name in names]  # validates first
    client = MlflowClient()
    parent, own, experiment_id = attach(client)
    params = {"retrain": str(retrain).lower(), "models": ",".join(names), "datasets": ",".join(datasets), **overrides}
    logged = client.get_run(own).data.params  # `mlflow run` logs the entry point's parameters as it got them
    client.log_batch(own, params=[Param(k, str(v)) for k, v in params.items() if k not in logged])
    started, status, zoo = time.perf_counter(), "FAILED", []
    try:
        for name, cfg in configs:
            t0 = time.perf_counter()
            run_id = None if retrain else find_trained(client, experiment_id, name, cfg)
            reused = run_id is not None
            if not reused:
                tags = {"study": STUDY, "role": "trial", "trial": str(_trial_number(name, cfg.dataset)), ZOO_TAG: name}
                result = train.run(cfg, parent_run_id=parent, tags=tags, on_trained=_log_model(name, cfg),
                                   progress_bar=False)  # fmt: skip
                run_id = result.run_id
            table = measure(cfg, run_id)
            log_measurements(client, run_id, table)
            zoo.append(_summary_row(name, cfg, run_id, reused, table, time.perf_counter() - t0))
            print(_describe(zoo[-1]), file=sys.stderr, flush=True)
        frame = pd.DataFrame(zoo)
        with tempfile.TemporaryDirectory() as tmp:
            frame.to_csv(Path(tmp) / Path(ZOO_ARTIFACT).name, index=False)
            client.log_artifact(own, str(Path(tmp) / Path(ZOO_ARTIFACT).name), Path(ZOO_ARTIFACT).parent.as_posix())
        client.log_batch(own, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in {
            "invariance/trained_runs": int((~frame["reused"]).sum()), "invariance/reused_runs": int(frame["reused"].sum()),
            "invariance/seconds": time.perf_counter() - started}.items()])  # fmt: skip
        if report and importlib.util.find_spec("analysis.invariance_report") is not None:
            from analysis import invariance_report  # the report is the analysis side's; optional here

            print(f"report: {invariance_report.build(run_id=own)}", file=sys.stderr)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(own, status)
    return frame


def _summary_row(name: str, cfg: RunConfig, run_id: str, reused: bool, table: pd.DataFrame, seconds: float) -> dict:
    def pick(state: str, metric: str, mode: str | None = None) -> float:
        rows = table[(table["state"] == state) & (table["metric"] == metric)]
        if mode is not None:
            rows = rows[(rows["mode"] == mode) & rows["shift"].isna()]
        return float(rows["value"].max()) if len(rows) else math.nan

    acc = table[(table["state"] == "trained") & (table["metric"] == "acc") & (table["shift"] == 0)]
    return {"dataset": cfg.dataset, "model": name, "run_id": run_id, "reused": reused,
            "accuracy": float(acc["value"].iloc[0]),
            **{f"consistency_{m}_{s}": pick(s, "consistency", m) for s in K.INVARIANCE_STATES for m in K.SHIFT_MODES},
            **{f"eqerr_max_{s}": pick(s, "eqerr") for s in K.INVARIANCE_STATES}, "seconds": round(seconds, 1)}  # fmt: skip


def _describe(row: dict) -> str:
    return (f"{row['dataset']:>8} {row['model']:<17} {'reused ' if row['reused'] else 'trained'} acc {row['accuracy']:.3f}"
            f"  consistency circ/zero: init {row['consistency_circ_init']:.3f}/{row['consistency_zero_init']:.3f}"
            f" trained {row['consistency_circ_trained']:.3f}/{row['consistency_zero_trained']:.3f}"
            f"  max eqerr init {row['eqerr_max_init']:.2g} trained {row['eqerr_max_trained']:.2g}  {row['seconds']} s")  # fmt: skip


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = list(allowed) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what}={text!r} is not allowed; allowed: all or a comma list of "
                                         f"{', '.join(allowed)}")  # fmt: skip
    return names


def make_parser() -> argparse.ArgumentParser:
    """Flags mirroring the MLproject `invariance` parameters."""
    parser = OneLineParser(prog="python -m pipelines.invariance", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--retrain", type=_bool, default=False, help="train again even when MLflow holds the run")
    parser.add_argument("--max-steps", type=int, default=BASE["max_steps"], help="training steps of every zoo model")
    parser.add_argument("--width", type=int, default=BASE["width"], help="units or channels of every zoo model")
    parser.add_argument("--models", default="all", help=f"all or a comma list of {', '.join(ZOO)}")
    parser.add_argument("--datasets", default="all", help=f"all or a comma list of {', '.join(DATASETS)}")
    parser.add_argument("--report", type=_bool, default=True, help="build the report at the end")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: these nets are so small that a second thread costs more than it gains)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: validate, then train/reuse and test the zoo; exit code 2 on bad input."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        names = _names(args.models, list(ZOO), "models")
        datasets = _names(args.datasets, DATASETS, "datasets")
        overrides = {"max_steps": args.max_steps, "width": args.width}
        for name in names:  # every config is validated before anything is trained or written
            check_fits(zoo_config(name, datasets[0], **overrides))  # and fits in memory
        check_tracking()  # an unreachable or corrupt store: one line within seconds
    except (argparse.ArgumentTypeError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per model download is noise
    try:
        with sigterm_interrupts():
            run_zoo(names, datasets, retrain=args.retrain, report=args.report, **overrides)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
