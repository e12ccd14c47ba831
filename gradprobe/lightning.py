"""`GradientProbe`: the probe as a Lightning callback, for any LightningModule (imported as pytorch_lightning).

    trainer = pl.Trainer(callbacks=[GradientProbe(log_every=10)], gradient_clip_val=1.0)

The loss is what `training_step` returns (a tensor, or a dict's "loss"; under manual optimization, the
loss last given to backward before the probed optimizer's step). Gradients are read before clipping in
`on_before_optimizer_step`, after clipping (whatever `gradient_clip_val` the Trainer or the module applies)
from the `.grad` the optimizer steps with, in the optimizer's step post-hook: Lightning runs the closure,
the callbacks' hook and its clipping inside `optimizer.step`, so a step pre-hook would fire before backward.
Only the steps of the optimizers holding the probed parameters are recorded (a GAN's generator, with
`model=` its generator). Records go to `sink`, by default the Trainer's loggers (gradprobe.sinks.LoggerSink),
on global rank 0 only; every rank runs the divergence guard, on the all-reduced gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
from torch import Tensor, nn

from gradprobe.layers import Selection
from gradprobe.probe import Probe, Sink


class GradientProbe(pl.Callback):
    """Per-layer gradient statistics of any LightningModule's training, every `log_every` steps.

    `model`: the submodule to probe (a module, or an attribute path of the LightningModule such as "net";
    default the whole LightningModule). `layers`, `names`: gradprobe.layers.discover_layers.
    `stop_on_divergence`: stop training at the first non-finite loss or gradient norm, that step's gradients
    dropped (else it is recorded, a warning given once, and training goes on). `max_steps` defaults to
    the Trainer's. A LightningModule may expose `step_stats: dict[str, Tensor]` of run-wide numbers to record.
    `histograms`: log10|g| histograms of each layer's gradient on logging steps (parquet only). At the end of
    training the probe closes the sink and, if `record_cost`, first sends it its cost (`probe/seconds`,
    `probe/cost_share`, at the last recorded step); by default it does so into the Trainer's loggers (no `sink`
    given), not into a sink of the user's, which gets exactly one call per logging step.
    `diagnose`: at the end of training, the per-layer diagnosis (gradprobe.diagnose) of what was recorded, kept as
    `callback.diagnosis` and written as `diagnosis.md` to every logger: an MLFlowLogger's run as an artifact,
    another logger's `log_dir` as a file (needs pandas: `pip install 'gradprobe[parquet]'`).
    """

    def __init__(
        self,
        log_every: int = 10,
        *,
        model: nn.Module | str | None = None,
        layers: Selection = None,
        names: Mapping[str, str] | None = None,
        sink: Sink | None = None,
        stop_on_divergence: bool = False,
        max_steps: int | None = None,
        histograms: bool = False,
        record_cost: bool | None = None,
        diagnose: bool = True,
    ) -> None:
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every={log_every!r}: a positive integer")
        self.log_every, self.model, self.layers, self.names = log_every, model, layers, names
        self.sink, self.stop_on_divergence, self.max_steps = sink, stop_on_divergence, max_steps
        self.histograms, self.record_cost, self.diagnose = histograms, record_cost, diagnose
        self.diagnosis = None  # gradprobe.diagnose.Diagnosis of the last fit, when `diagnose`
        self.probe: Probe | None = None
        self._loss: Tensor | None = None

    @property
    def diverged_step(self) -> int | None:
        """The first step whose loss or gradient norm was not finite, or None."""
        return None if self.probe is None else self.probe.diverged_step

    @property
    def history(self) -> list[tuple[int, list[str], list[float]]]:
        """Every (step, keys, values) recorded so far."""
        return [] if self.probe is None else self.probe.history

    def cost(self) -> dict[str, float]:
        """The probe's own seconds and the training's wall seconds (Probe.cost)."""
        return {"probe_seconds": 0.0, "train_seconds": 0.0} if self.probe is None else self.probe.cost()

    # -- set-up ---------------------------------------------------------------------------------
    def _probed_module(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model is None:
            return pl_module
        if isinstance(self.model, str):
            return pl_module.get_submodule(self.model.replace("/", "."))
        return self.model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_steps = (
            self.max_steps if self.max_steps is not None else trainer.max_steps if trainer.max_steps > 0 else None
        )
        sink = self.sink if self.sink is not None or not trainer.is_global_zero else _logger_sink(trainer)
        self.probe = Probe(
            self._probed_module(pl_module),
            log_every=self.log_every,
            max_steps=max_steps,
            layers=self.layers,
            names=self.names,
            sink=sink,
            stop_on_divergence=self.stop_on_divergence,
            record=trainer.is_global_zero,
            histograms=self.histograms,
            record_cost=self.sink is None if self.record_cost is None else self.record_cost,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.probe.watch(getattr(optimizer, "optimizer", optimizer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.probe.close()
        if self.diagnose and trainer.is_global_zero and self.probe.history:
            self.diagnosis = _diagnose_and_log(self.probe.history, trainer.loggers)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.probe is not None:
            self.probe.close(finish=False)  # an interrupted step is not a result

    # -- one step ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._loss = None
        self.probe.begin(trainer.global_step)

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        self._loss = loss  # the probed optimizer's loss is the last one before its step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.probe.holds(getattr(optimizer, "optimizer", optimizer)):
            return  # not the probed network's step (a GAN's discriminator)
        if self.probe.gradients(self._loss):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        extra = getattr(pl_module, "step_stats", None) or {}
        self.probe.end(_returned_loss(outputs), extra=extra)


def _returned_loss(outputs) -> Tensor | None:
    """The loss `training_step` returned: a tensor, or a mapping's "loss"; None if it returned neither."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), Tensor):
        return outputs["loss"]
    return None


def _diagnose_and_log(history: list[tuple[int, list[str], list[float]]], loggers: list) -> object | None:
    """The diagnosis of a fit's records, written as diagnosis.md to every logger; a failure is a warning only."""
    try:
        from gradprobe.diagnose import DIAGNOSIS_ARTIFACT, diagnose
        from gradprobe.sinks import long_table

        steps, keys, values = zip(*history)
        result = diagnose(long_table(steps, keys, values))
        for logger in loggers:
            if hasattr(logger, "experiment") and hasattr(logger, "run_id") and hasattr(logger.experiment, "log_text"):
                logger.experiment.log_text(logger.run_id, result.markdown(), DIAGNOSIS_ARTIFACT)  # MLFlowLogger
            elif getattr(logger, "log_dir", None):
                path = Path(logger.log_dir) / Path(DIAGNOSIS_ARTIFACT).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(result.markdown(), encoding="utf-8")
        return result
    except Exception as exc:  # the diagnosis reports on the fit; it never fails it
        warnings.warn(f"gradprobe: no diagnosis: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


def _logger_sink(trainer: pl.Trainer) -> Sink:
    """The Trainer's loggers as the sink (imported here: the sinks are optional parts of the package)."""
    from gradprobe.sinks import LoggerSink

    return LoggerSink(trainer.loggers)


__all__ = ["GradientProbe"]
