"""The LightningModule of every task but the GAN (lit_gan.py): any family with its loss, optimizer and schedule."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from gradprobe import keys as K
from models.base import Family
from models.losses import LOSSES
from models.metrics import BATCH_METRICS, SET_METRICS
from models.optim import make_optimizer, make_schedule


class LitModel(pl.LightningModule):
    """Loss, optimizer and metrics around a plain `Family` network; clipping is the Trainer's."""

    def __init__(
        self,
        net: Family,
        *,
        task: str,
        loss: str = "ce",
        optimizer: str = "sgd",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: str = "none",
        max_steps: int = 1,
    ) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.loss_fn = LOSSES[loss].for_task(task)
        if self.loss_fn is None:
            raise ValueError(f"loss {loss!r} does not fit a {task} task")
        self.optim_args = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.schedule, self.max_steps = schedule, max_steps
        self.last_loss: Tensor | None = None  # the training loss of the current step (the run's final loss)
        self.val_outputs: list[tuple[Tensor, Tensor]] = []  # kept for SET_METRICS until the epoch ends

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.last_loss = loss.detach()
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log(K.VAL_LOSS, self.loss_fn(out, y), on_epoch=True, batch_size=len(x))
        if self.task in BATCH_METRICS:
            for key, value in BATCH_METRICS[self.task](out, y).items():
                self.log(key, value, on_epoch=True, batch_size=len(x))
        if self.task in SET_METRICS:
            self.val_outputs.append((out.detach(), y))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Official test split, once after training (pipelines/train.py): loss, and accuracy where the task has one."""
        x, y = batch
        out = self.net(x)
        self.log(K.TEST_LOSS, self.loss_fn(out, y), on_epoch=True, batch_size=len(x))
        if K.VAL_ACC in (metrics := BATCH_METRICS.get(self.task, lambda *_: {})(out, y)):
            self.log(K.TEST_ACC, metrics[K.VAL_ACC], on_epoch=True, batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        if self.val_outputs:
            out, y = (torch.cat(parts) for parts in zip(*self.val_outputs))
            self.val_outputs.clear()
            for key, value in SET_METRICS[self.task](out, y).items():
                self.log(key, value)

    def configure_optimizers(self):
        args = dict(self.optim_args)
        opt = make_optimizer(args.pop("optimizer"), self.parameters(), **args)
        sched = make_schedule(self.schedule, opt, lr=args["lr"], max_steps=self.max_steps)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def n_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
