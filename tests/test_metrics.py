"""Validation metrics by task (models/metrics.py) against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from gradprobe import keys as K
from models.metrics import BATCH_METRICS, SET_METRICS, binary_accuracy, knn_accuracy, mask_overlap


def test_binary_accuracy_splits_at_logit_zero() -> None:
    z = torch.tensor([[2.0], [-0.5], [0.3], [0.0]])
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    assert binary_accuracy(z, y).item() == pytest.approx(2 / 4)  # right, wrong, wrong, right (σ(0) = 0.5 is "0")


def test_hard_dice_and_iou_per_example() -> None:
    z = torch.tensor([[[1.0, -1.0, 2.0]], [[-1.0, -2.0, -3.0]], [[-1.0, 0.5, -1.0]]])
    y = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    # P = {0, 2}, T = {0, 1}: Dice 2·1/4, IoU 1/3; both empty: 1, 1; P = {1}, T = {}: 0, 0.
    got = mask_overlap(z, y)
    assert got[K.VAL_DICE].item() == pytest.approx((0.5 + 1 + 0) / 3)
    assert got[K.VAL_IOU].item() == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_knn_accuracy_is_leave_one_out_nearest_neighbour() -> None:
    e = torch.tensor([[0.0], [0.1], [1.0], [1.2], [5.0]])
    y = torch.tensor([0, 1, 1, 1, 0])
    # Nearest other points: 0→0.1 (miss), 0.1→0 (miss), 1→1.2 (hit), 1.2→1 (hit), 5→1.2 (miss).
    assert knn_accuracy(e, y).item() == pytest.approx(2 / 5)


def test_each_task_records_its_keys() -> None:
    assert {task: sorted(fn(*_example(task))) for task, fn in {**BATCH_METRICS, **SET_METRICS}.items()} == {
        "classification": [K.VAL_ACC],
        "binary": [K.VAL_ACC],
        "segmentation": [K.VAL_DICE, K.VAL_IOU],
        "metric": [K.VAL_KNN_ACC],
    }
    assert {K.VAL_ACC, K.VAL_DICE, K.VAL_IOU, K.VAL_KNN_ACC} <= set(K.VAL_METRICS)


def _example(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "classification":
        return torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    if task == "binary":
        return torch.randn(4, 1), torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    if task == "segmentation":
        return torch.randn(2, 1, 5), (torch.rand(2, 1, 5) > 0.5).float()
    return torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
