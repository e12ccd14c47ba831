"""Every loss of every task against its formula on hand-checked values, its gradient against finite
differences (gradcheck, float64) and closed forms, the in-batch mining, and a few training steps of each
loss/task pairing through the whole pipeline with a falling loss and independently recomputed metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from gradprobe.recorder import STATS_ARTIFACT
from models.losses import KL_SMOOTHING, LOSSES, MARGIN, SMOOTHING, TASKS, mine_triplets, tasks_for
from pipelines import train
from pipelines.config import RunConfig
from pipelines.data import TaskData

# Losses of a model's outputs against targets. The adversarial task's generator losses take a
# discriminator instead (models/gan.py) and are tested with the GAN.
GAN_TASK = "adversarial"
PAIRS = sorted((name, task) for name in LOSSES for task in tasks_for(name) if task != GAN_TASK)


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- hand-checked values ------------------------------------------------------------------------------
# Small inputs per task; every expected value below is written out in plain Python from the loss's formula.

Z_CLS, Y_CLS = [[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]], [1, 0]
Z_REG, Y_REG = [[0.5], [-1.0], [3.0]], [[0.0], [1.0], [0.5]]  # errors 0.5, −2, 2.5
Z_BIN, Y_BIN = [[2.0], [-0.5], [0.3]], [[1.0], [1.0], [0.0]]  # t = +1, +1, −1
Z_SEG, Y_SEG = [[[2.0, -1.0, 0.0]], [[0.5, 0.5, -2.0]]], [[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]
# Four 2-D embeddings, labels 0 1 0 1. Mining (next of the same class, next of another, cyclic):
# anchor 0 → (2, 1), 1 → (3, 2), 2 → (0, 3), 3 → (1, 0).
Z_MET, Y_MET = [[0.0, 0.0], [0.6, 0.0], [0.0, 1.0], [0.6, 0.8]], [0, 1, 0, 1]
TRIPLETS = [(0, 2, 1), (1, 3, 2), (2, 0, 3), (3, 1, 0)]


def _dist(i: int, j: int) -> float:
    return math.dist(Z_MET[i], Z_MET[j])


def _onehot_cls() -> list[list[float]]:
    return [[1.0 if c == y else 0.0 for c in range(3)] for y in Y_CLS]


def _kl() -> float:
    q = [[(1 - KL_SMOOTHING) * t + KL_SMOOTHING / 3 for t in row] for row in _onehot_cls()]
    p = [_softmax(row) for row in Z_CLS]
    return _mean([sum(qi * math.log(qi / pi) for qi, pi in zip(qr, pr)) for qr, pr in zip(q, p)])


def _bce(z: float, t: float) -> float:
    return -(t * math.log(_sig(z)) + (1 - t) * math.log(1 - _sig(z)))


def _seg_overlaps() -> list[tuple[float, float, float]]:
    """Per example: Σp·t, Σp, Σt with p = σ(z)."""
    out = []
    for zs, ts in zip(Z_SEG, Y_SEG):
        p = [_sig(v) for v in zs[0]]
        out.append((sum(a * b for a, b in zip(p, ts[0])), sum(p), sum(ts[0])))
    return out


def _huber(d: float) -> float:
    return 0.5 * d * d if abs(d) <= 1 else abs(d) - 0.5


flat_cls = [(p, t) for zr, tr in zip(Z_CLS, _onehot_cls()) for p, t in zip(_softmax(zr), tr)]
errors = [z[0] - y[0] for z, y in zip(Z_REG, Y_REG)]
HAND: dict[tuple[str, str], tuple[list, list, float]] = {
    ("ce", "classification"): (Z_CLS, Y_CLS, _mean([-math.log(_softmax(z)[y]) for z, y in zip(Z_CLS, Y_CLS)])),
    ("mse", "classification"): (Z_CLS, Y_CLS, _mean([(p - t) ** 2 for p, t in flat_cls])),
    ("mae", "classification"): (Z_CLS, Y_CLS, _mean([abs(p - t) for p, t in flat_cls])),
    ("bce", "classification"): (
        Z_CLS,
        Y_CLS,
        _mean([_bce(z, t) for zr, tr in zip(Z_CLS, _onehot_cls()) for z, t in zip(zr, tr)]),
    ),
    # Σ_{i≠y} max(0, 1 − z_y + z_i) / C: example 1 has no violation, example 2 only 1 − 0.5 + 0 = 0.5.
    ("hinge", "classification"): (Z_CLS, Y_CLS, (0 + 0.5 / 3) / 2),
    ("kl", "classification"): (Z_CLS, Y_CLS, _kl()),
    ("mse", "regression"): (Z_REG, Y_REG, (0.25 + 4 + 6.25) / 3),
    ("mae", "regression"): (Z_REG, Y_REG, (0.5 + 2 + 2.5) / 3),
    ("huber", "regression"): (Z_REG, Y_REG, (0.125 + 1.5 + 2.0) / 3),
    ("bce", "binary"): (Z_BIN, Y_BIN, _mean([_bce(z[0], y[0]) for z, y in zip(Z_BIN, Y_BIN)])),
    ("hinge", "binary"): (Z_BIN, Y_BIN, (0 + 1.5 + 1.3) / 3),  # max(0, 1 − t·z): 1 − 2, 1 + 0.5, 1 + 0.3
    ("mse", "binary"): (Z_BIN, Y_BIN, _mean([(_sig(z[0]) - y[0]) ** 2 for z, y in zip(Z_BIN, Y_BIN)])),
    ("bce", "segmentation"): (
        Z_SEG,
        Y_SEG,
        _mean([_bce(z, t) for zs, ts in zip(Z_SEG, Y_SEG) for z, t in zip(zs[0], ts[0])]),
    ),
    ("dice", "segmentation"): (
        Z_SEG,
        Y_SEG,
        _mean([1 - (2 * i + SMOOTHING) / (p + t + SMOOTHING) for i, p, t in _seg_overlaps()]),
    ),
    ("iou", "segmentation"): (
        Z_SEG,
        Y_SEG,
        _mean([1 - (i + SMOOTHING) / (p + t - i + SMOOTHING) for i, p, t in _seg_overlaps()]),
    ),
    ("triplet", "metric"): (
        Z_MET,
        Y_MET,
        _mean([max(0.0, _dist(a, p) - _dist(a, n) + MARGIN) for a, p, n in TRIPLETS]),
    ),
    ("contrastive", "metric"): (
        Z_MET,
        Y_MET,
        _mean(
            [0.5 * _dist(a, p) ** 2 for a, p, _ in TRIPLETS]
            + [0.5 * max(0.0, MARGIN - _dist(a, n)) ** 2 for a, _, n in TRIPLETS]
        ),
    ),
}


def _tensors(task: str, z: list, y: list, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    integer = task in ("classification", "metric")
    return torch.tensor(z, dtype=dtype), torch.tensor(y, dtype=torch.long if integer else dtype)


def test_every_pairing_has_a_hand_checked_case() -> None:
    assert set(HAND) == set(PAIRS)
    assert set(TASKS) - {GAN_TASK} == {t for _, t in PAIRS}  # every task has a loss


def test_the_hand_cases_are_not_trivial() -> None:
    """The cases exercise both sides of every kink: some terms active, some not."""
    assert HAND[("hinge", "binary")][2] > 0 and max(0, 1 - 2.0) == 0  # one hinge term inactive
    active = [MARGIN - _dist(a, n) > 0 for a, _, n in TRIPLETS]
    assert any(active) and not all(active)  # contrastive: negatives inside and outside the margin
    assert any(abs(e) <= 1 for e in errors) and any(abs(e) > 1 for e in errors)  # both Huber branches


@pytest.mark.parametrize("name, task", PAIRS)
def test_loss_matches_the_hand_computed_value(name: str, task: str) -> None:
    z, y, expected = HAND[(name, task)]
    got = LOSSES[name].for_task(task)(*_tensors(task, z, y))
    # TripletMarginLoss adds eps = 1e-6 to the difference inside its distance; everything else is exact.
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_binary_hinge_is_not_torchs_soft_margin() -> None:
    """torch's SoftMarginLoss is the logistic loss, not the hinge: the binary hinge must not equal it."""
    z, y = _tensors("binary", Z_BIN, Y_BIN)
    soft_margin = torch.nn.SoftMarginLoss()(z, 2 * y - 1).item()
    assert soft_margin != pytest.approx(HAND[("hinge", "binary")][2], rel=1e-3)


# -- gradients ------------------------------------------------------------------------------------------


def _random_inputs(task: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 outputs and fitting targets of a small batch (kinks have probability 0)."""
    if task == "classification":
        return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 2])
    if task == "regression":
        return torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    if task == "binary":
        return torch.randn(6, 1, generator=g, dtype=torch.float64), torch.tensor(
            [[1.0], [0], [1], [1], [0], [0]], dtype=torch.float64
        )
    if task == "segmentation":
        return torch.randn(3, 1, 7, generator=g, dtype=torch.float64), (torch.rand(3, 1, 7, generator=g) > 0.5).double()
    # metric: spread-out embeddings, so some negatives fall inside the margin and some outside
    return torch.randn(8, 3, generator=g, dtype=torch.float64) * 0.6, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("name, task", PAIRS)
def test_gradient_matches_finite_differences(name: str, task: str) -> None:
    z, y = _random_inputs(task, torch.Generator().manual_seed(7))
    fn = LOSSES[name].for_task(task)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda out: fn(out, y), (z,), eps=1e-6, atol=1e-6, rtol=1e-4)
    fn(z, y).backward()
    assert z.grad.abs().sum() > 0  # not trivially zero


def _grad(name: str, task: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    LOSSES[name].for_task(task)(z, y).backward()
    return z.grad


def test_binary_gradients_are_the_textbook_formulas() -> None:
    """∂L/∂z per example: BCE (σ − y)/N; sigmoid + MSE 2(σ − y)σ(1 − σ)/N, which vanishes on saturated
    outputs (the learning slowdown); hinge −t/N where 1 − t·z > 0, else 0."""
    z = torch.tensor([[4.0], [-0.5], [0.3], [-6.0], [1.5]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0]], dtype=torch.float64)
    s, t, n = torch.sigmoid(z), 2 * y - 1, len(z)
    torch.testing.assert_close(_grad("bce", "binary", z, y), (s - y) / n)
    torch.testing.assert_close(_grad("mse", "binary", z, y), 2 * (s - y) * s * (1 - s) / n)
    torch.testing.assert_close(_grad("hinge", "binary", z, y), torch.where(1 - t * z > 0, -t / n, 0.0))
    # Confidently wrong (z = −6, y = 1): cross-entropy pushes with almost full force, MSE barely at all.
    assert abs(_grad("bce", "binary", z, y)[3]) > 100 * abs(_grad("mse", "binary", z, y)[3])


def test_soft_dice_gradient_is_the_quotient_rule() -> None:
    """D = 1 − (2I + ε)/(S + ε), I = Σp·t, S = Σp + Σt: ∂D/∂z_k = −[2t_k(S + ε) − (2I + ε)]/(S + ε)² · σ′(z_k) / B."""
    z, y = _random_inputs("segmentation", torch.Generator().manual_seed(3))
    p = torch.sigmoid(z)
    inter = (p * y).sum(dim=(1, 2), keepdim=True)
    total = (p + y).sum(dim=(1, 2), keepdim=True)
    expected = (
        -(2 * y * (total + SMOOTHING) - (2 * inter + SMOOTHING)) / (total + SMOOTHING) ** 2 * p * (1 - p) / len(z)
    )
    torch.testing.assert_close(_grad("dice", "segmentation", z, y), expected)


def test_contrastive_gradient_pulls_positives_and_pushes_close_negatives() -> None:
    """On the hand case: ∂/∂z of ½d² is the difference itself; of ½max(0, m − d)² it is −(m − d)(a − n)/d."""
    z, y = _tensors("metric", Z_MET, Y_MET)
    expected = torch.zeros_like(z)
    pairs = 2 * len(TRIPLETS)
    for a, p, n in TRIPLETS:
        expected[a] += (z[a] - z[p]) / pairs
        expected[p] -= (z[a] - z[p]) / pairs
        d = _dist(a, n)
        if d < MARGIN:
            push = -(MARGIN - d) * (z[a] - z[n]) / d / pairs
            expected[a] += push
            expected[n] -= push
    torch.testing.assert_close(_grad("contrastive", "metric", z, y), expected)


# -- in-batch mining --------------------------------------------------------------------------------------


def test_mining_takes_the_next_same_and_next_other_example() -> None:
    a, p, n = mine_triplets(torch.tensor(Y_MET))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == TRIPLETS
    # Anchors without a positive in the batch (0 and 3, single members of their class) are skipped.
    a, p, n = mine_triplets(torch.tensor([5, 7, 7, 9, 7]))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == [(1, 2, 3), (2, 4, 3), (4, 1, 0)]


@pytest.mark.parametrize("labels", [[3, 3, 3], [4], [1, 2]])
def test_a_batch_without_triplets_gives_zero_loss_and_zero_gradient(labels: list[int]) -> None:
    assert len(mine_triplets(torch.tensor(labels))[0]) == 0
    for name in ("contrastive", "triplet"):
        z = torch.randn(len(labels), 3, requires_grad=True)
        loss = LOSSES[name].for_task("metric")(z, torch.tensor(labels))
        loss.backward()
        assert loss.item() == 0 and torch.equal(z.grad, torch.zeros_like(z))


def test_contrastive_is_finite_on_identical_embeddings() -> None:
    """A collapsed embedding (d = 0) must not give a NaN gradient through the norm."""
    z = torch.zeros(4, 2, requires_grad=True)
    loss = LOSSES["contrastive"].for_task("metric")(z, torch.tensor(Y_MET))
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * MARGIN**2 / 2) and torch.isfinite(z.grad).all()


# -- every pairing through the pipeline --------------------------------------------------------------------

TINY = dict(depth=2, width=16, max_steps=10, batch_size=100_000, optimizer="adam", lr=0.01, metric_points=0)
# A dataset (and model options) for each task; regression runs on both the teacher and the diabetes data.
TASK_RUNS: dict[str, list[dict]] = {
    "classification": [{"dataset": "digits"}],
    "regression": [{"dataset": "teacher"}, {"dataset": "diabetes"}],
    "binary": [{"dataset": "breast_cancer"}],
    # Soft IoU moves slowly from a random start (gradients ∝ σ′ and divided by the union): a larger step.
    "segmentation": [{"dataset": "segment1d", "model": "cnn", "head": "dense", "seq_len": 16, "width": 8, "lr": 0.03}],
    "metric": [{"dataset": "digits_metric", "embed_dim": 4}],
}
VAL_KEYS = {
    "classification": {"val/loss", "val/acc"},
    "regression": {"val/loss"},
    "binary": {"val/loss", "val/acc"},
    "segmentation": {"val/loss", "val/dice", "val/iou"},
    "metric": {"val/loss", "val/knn_acc"},
}
RUNS = [(name, task, opts) for name, task in PAIRS for opts in TASK_RUNS[task]]


def _independent_metrics(task: str, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The task's validation metrics recomputed in NumPy from the trained network's outputs."""
    if task == "classification":
        return {"val/acc": float(np.mean(out.argmax(1) == y))}
    if task == "binary":
        return {"val/acc": float(np.mean((1 / (1 + np.exp(-out)) > 0.5) == (y == 1)))}
    if task == "segmentation":
        dice, iou = [], []
        for o, t in zip(out.reshape(len(out), -1), y.reshape(len(y), -1)):
            pred, true = set(np.flatnonzero(o > 0)), set(np.flatnonzero(t == 1))
            union = pred | true
            dice.append(2 * len(pred & true) / (len(pred) + len(true)) if union else 1.0)
            iou.append(len(pred & true) / len(union) if union else 1.0)
        return {"val/dice": float(np.mean(dice)), "val/iou": float(np.mean(iou))}
    if task == "metric":
        hits = []
        for i in range(len(out)):
            d = np.sqrt(((out - out[i]) ** 2).sum(1))
            d[i] = np.inf
            hits.append(y[int(np.argmin(d))] == y[i])
        return {"val/knn_acc": float(np.mean(hits))}
    return {}


@pytest.mark.slow  # twenty short runs, each a Lightning fit and an MLflow run (about 40 s of CPU together)
@pytest.mark.parametrize("name, task, opts", RUNS, ids=[f"{n}-{o['dataset']}" for n, _, o in RUNS])
def test_every_pairing_trains_with_a_falling_loss(tracking, tmp_path: Path, name: str, task: str, opts: dict) -> None:
    cfg = RunConfig(**{**TINY, "loss": name, **opts})
    assert cfg.task == task
    trained = {}
    result = train.run(cfg, progress_bar=False, on_trained=lambda run_id, lit: trained.update(lit=lit))
    assert result.outcome == "completed" and result.steps == cfg.max_steps
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params == {k: str(v) for k, v in cfg.to_dict().items()}  # new fields logged too
    metrics = run.data.metrics
    assert {k for k in metrics if k.startswith("val/")} == VAL_KEYS[task]
    assert {"grad/l2/L000", "grad/l2/L001", "grad/l2/out", "backprop/l2/out", "act/saturation/L000"} <= set(metrics)
    dst = tmp_path / "dl"
    dst.mkdir()
    df = pd.read_parquet(client.download_artifacts(result.run_id, STATS_ARTIFACT, str(dst)))
    losses = df[(df.family == "train") & (df.stat == "loss")].sort_values("step").value.to_numpy()
    assert len(losses) == cfg.max_steps and np.isfinite(losses).all()
    # Full batch: the loss of the last step is well below that of the initial parameters.
    assert losses[-1] < 0.95 * losses[0], losses
    # The recorded validation metrics are what an independent computation gets from the final network.
    data = TaskData(cfg.dataset, seq_len=cfg.seq_len)
    x, y = data.val.tensors
    net = trained["lit"].net.eval()
    with torch.no_grad():
        out = net(x).double().numpy()
    for key, value in _independent_metrics(task, out, y.numpy()).items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
