"""The LightningModule of the adversarial task: a generator (`net`, any family) against a fixed discriminator.

Manual optimization, per training step: `d_steps` discriminator updates, each on the step's real batch
and fresh generated points, then one generator update on fresh noise. `net` is the generator, so the
gradient probe records the generator's layers from its update, under the same key contract as every
other run (the readout `out` writes the generated points). `max_steps` counts generator updates.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from gradprobe import keys as K
from models.base import Family
from models.gan import coverage, mode_counts
from models.losses import LOSSES
from models.optim import make_optimizer, make_schedule

VAL_NOISE_SEED = 0  # every validation draws the same noise, so its numbers are comparable over a run


def _no_closure() -> None:
    return None


class LitGAN(pl.LightningModule):
    """Generator and discriminator losses, their two optimizers (the run's, both), clipping and metrics."""

    def __init__(
        self,
        net: Family,
        disc: nn.Module,
        *,
        loss: str,
        centers: Tensor,
        std: float,
        latent_dim: int,
        d_steps: int = 1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: str = "none",
        max_steps: int = 1,
        clip: str = "none",
        clip_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net, self.disc = net, disc
        self.gan_loss = LOSSES[loss].for_task("adversarial")
        if self.gan_loss is None:
            raise ValueError(f"loss {loss!r} does not fit the adversarial task")
        self.register_buffer("centers", centers, persistent=False)  # the modes, for the validation metrics
        self.std, self.latent_dim, self.d_steps = std, latent_dim, d_steps
        self.optim_args = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.schedule, self.max_steps = schedule, max_steps
        self.clip_args = (
            None if clip == "none" else dict(gradient_clip_val=clip_threshold, gradient_clip_algorithm=clip)
        )
        self.last_loss: Tensor | None = None  # the generator loss of the current step (the run's final loss)
        self.step_stats: dict[str, Tensor] = {}  # run-wide statistics of the step, recorded by the probe

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n standard normal latent vectors."""
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        d_opt, g_opt = self.optimizers()
        for _ in range(self.d_steps):
            with torch.no_grad():
                fake = self.net(self.noise(len(x)))
            d_loss = self.gan_loss.discriminator(self.disc(x), self.disc(fake))
            d_opt.zero_grad()
            self.manual_backward(d_loss)
            # Through the strategy (precision, hooks, clipping in on_before_optimizer_step) but not through
            # LightningOptimizer.step, which adds every optimizer's steps to global_step (Lightning issue
            # #17958): global_step, max_steps and the probe's schedule count generator updates.
            self.trainer.strategy.optimizer_step(d_opt.optimizer, _no_closure)
        with g_opt.toggle_model():  # the generator's loss leaves no gradient on the discriminator
            fake_logits = self.disc(self.net(self.noise(len(x))))
            g_loss = self.gan_loss.generator(fake_logits)
            self.last_loss = g_loss.detach()
            g_opt.zero_grad()
            self.manual_backward(g_loss)
            g_opt.step()
        with torch.no_grad():
            d_real = torch.sigmoid(self.disc(x)).mean()
        self.step_stats = {
            K.GAN_D_REAL: d_real,
            K.GAN_D_FAKE: torch.sigmoid(fake_logits.detach()).mean(),
            K.GAN_D_LOSS: d_loss.detach(),
            K.GAN_G_LOSS: g_loss.detach(),
        }
        for schedule in self._schedules():
            schedule.step()  # manual optimization steps no schedule by itself

    def _schedules(self) -> list:
        found = self.lr_schedulers()
        return [] if found is None else found if isinstance(found, list) else [found]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip as configured (Lightning clips nothing under manual optimization)."""
        # Lightning calls the callbacks' hook first: the probe has read the gradients before clipping.
        if self.clip_args is not None:
            self.clip_gradients(optimizer, **self.clip_args)

    def on_validation_epoch_start(self) -> None:
        self.val_counts, self.val_seen = torch.zeros(len(self.centers), dtype=torch.long, device=self.device), 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        fake = self.net(self.noise(len(x), torch.Generator().manual_seed(VAL_NOISE_SEED + batch_idx)))
        self.log(K.VAL_LOSS, self.gan_loss.generator(self.disc(fake)), on_epoch=True, batch_size=len(x))
        self.val_counts += mode_counts(fake, self.centers, self.std)
        self.val_seen += len(x)

    def on_validation_epoch_end(self) -> None:
        high_quality, modes = coverage(self.val_counts, self.val_seen)
        self.log(K.VAL_HIGH_QUALITY, high_quality.float())
        self.log(K.VAL_MODES, modes.float())

    def configure_optimizers(self):
        args = dict(self.optim_args)
        name = args.pop("optimizer")
        d_opt = make_optimizer(name, self.disc.parameters(), **args)
        self.generator_optimizer = make_optimizer(name, self.net.parameters(), **args)
        optimizers = [d_opt, self.generator_optimizer]
        schedules = [make_schedule(self.schedule, o, lr=args["lr"], max_steps=self.max_steps) for o in optimizers]
        return optimizers if schedules[0] is None else (optimizers, schedules)
