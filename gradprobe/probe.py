"""The gradient probe: a Lightning callback that records per-layer statistics on a schedule.

On a logging step it hooks every hidden block (activations, and ∂loss/∂output through a tensor hook),
replays recurrent layers (for ∂loss/∂h_t: models/recurrent.py), reads the weight gradients before clipping
(`on_before_optimizer_step`) and after (`LitModel.after_clipping`), and the update after the step. It
probes `pl_module.net` and the optimizer step that updates it; another optimizer's steps (a GAN's
discriminator) are not recorded. Run-wide numbers a module adds in `step_stats` join the record. All
statistics stay on the device until the end of the step, where they are concatenated and copied to the
host once. Between logging steps no hook is registered; only the divergence guard runs (one sync).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from gradprobe import keys as K
from gradprobe import stats
from models.base import READOUT
from models.recurrent import GATE_NAME, RecurrentLayer


def is_logging_step(step: int, log_every: int, max_steps: int) -> bool:
    """The schedule: step 0, every `log_every`-th step, and the last step."""
    return step % log_every == 0 or step == max_steps - 1


class GradientProbe(pl.Callback):
    """Records the metric contract's per-layer statistics into a recorder; stops on divergence."""

    def __init__(self, record: Callable[[int, list[str], list[float]], None], *, activation: str,
                 log_every: int, max_steps: int) -> None:  # fmt: skip
        self.record = record
        self.activation = activation
        self.log_every, self.max_steps = log_every, max_steps
        self.diverged_step: int | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._active = self._recording = False

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # noqa: D102
        blocks = pl_module.net.named_blocks()
        self.names = [name for name, _ in blocks]
        self.hidden = [module for name, module in blocks if name != READOUT]
        self.weights = [module.main_weight for module in self.hidden] + [pl_module.net.readout.weight]
        self.params = [p for p in pl_module.net.parameters() if p.requires_grad]
        self._param_ids = {id(p) for p in self.params}
        self._probed_optimizers: dict[int, bool] = {}  # id(optimizer) → whether it steps these parameters
        index = {id(p): i for i, p in enumerate(self.params)}
        self._weight_index = torch.tensor([index[id(w)] for w in self.weights])
        self._names: dict[tuple, list[str]] = {}  # a logging step's keys, by what it records
        self._workspace: dict = {}  # the activation statistics' scratch copy, reused at every logging step
        self._missing = (torch.full((), math.nan), torch.full((3,), math.nan))  # shared placeholders, never written
        self._no_nonfinite = torch.zeros(len(self.weights))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self.started = time.perf_counter()
        # The weights before a logged step, stacked by shape; made here, where the weights are on their device.
        self.before = stats.Stacked(self.weights)
        # The weights' version counters when `before` was last refreshed with them: while they are unchanged,
        # `before` is still their copy (every in-place change bumps a tensor's version; nothing here
        # replaces a weight through `.data`, which would not).
        self._before_versions: list[int] | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._detach(pl_module)

    # -- one step ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self.step = trainer.global_step
        self._active = is_logging_step(self.step, self.log_every, self.max_steps)
        pl_module.after_clipping = self._after_clipping if self._active else None
        if self._active:
            self._reset()
            if not self._hooks:
                self._attach(pl_module)
        self._recording = self._active

    def _reset(self) -> None:
        """Empty the per-step slots that the hooks fill."""
        n = len(self.names)
        self.backprop: list[Tensor] = [self._missing[0]] * n  # ‖∂loss/∂(each block's output)‖
        self.act: list[Tensor] = [self._missing[1]] * (n - 1)
        self.act_io: dict[int, tuple[Tensor, Tensor]] = {}  # layer → (a, z): statistics batched at the step's end
        self.bptt: list[Tensor | None] = [None] * (n - 1)  # ‖∂loss/∂h_t‖ for every t of a recurrent layer
        self.gates: list[Tensor | None] = [None] * (n - 1)
        self.global_clipped: Tensor | None = None

    def _attach(self, pl_module: pl.LightningModule) -> None:
        """Hook every block; the hooks stay while logging steps follow each other (`log_every=1`)."""

        # Between a training step's start and end only: never in a validation pass run between two steps.
        def on_output(i: int) -> Callable:
            def hook(module: nn.Module, inputs, output: Tensor) -> None:
                if not self._recording:
                    if isinstance(module, RecurrentLayer):
                        module.kept = None  # a validation pass: nothing to replay
                    return
                if output.requires_grad:  # its norm at once, so backward frees ∂loss/∂output as usual
                    output.register_hook(lambda g: self.backprop.__setitem__(i, stats.norm(g.detach())))
                if isinstance(module, RecurrentLayer):
                    self._on_recurrent(i, module)

            return hook

        def on_act(i: int) -> Callable:
            def hook(module: nn.Module, inputs, output: Tensor) -> None:
                if self._recording:
                    self.act_io[i] = (output, inputs[0])

            return hook

        modules = self.hidden + [pl_module.net.readout]
        for i, module in enumerate(modules):
            self._hooks.append(module.register_forward_hook(on_output(i)))
            if getattr(module, "act", None) is not None:
                self._hooks.append(module.act.register_forward_hook(on_act(i)))
            if isinstance(module, RecurrentLayer):
                module.keep_sequence = True

    def _on_recurrent(self, i: int, layer: RecurrentLayer) -> None:
        x, seq = layer.kept
        layer.kept = None
        replay = layer.replay(x, seq)
        self.act[i] = stats.activation_stats(layer.activation, replay.h)
        if replay.gate is not None:
            self.gates[i] = stats.gate_stats(replay.gate)
        self.bptt[i] = torch.full((seq.shape[1],), math.nan)
        if seq.requires_grad:
            # ∂loss/∂(the outputs) from the consumers, then the cell's own recursion back through time;
            # run during backward, before the optimizer changes W_hh.
            seq.register_hook(lambda g: self.bptt.__setitem__(i, stats.state_norms(replay.state_gradients(g))))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: D102
        probed = self._probed_optimizers.get(id(optimizer))
        if probed is None:
            probed = any(id(p) in self._param_ids for group in optimizer.param_groups for p in group["params"])
            self._probed_optimizers[id(optimizer)] = probed
        if not probed:
            return  # not the probed network's step (a GAN's discriminator)
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        # On a logging step the guard's pass over the gradients also takes the weights' statistics.
        rows = stats.grad_rows(present) if self._active and len(present) == len(grads) else None
        per_param = stats.norms(present) if rows is None else rows[:, 0]
        loss = pl_module.last_loss
        # A step is taken while every norm is at most `stats.LARGEST_NORM` (float32 clipping could not use a
        # larger one: its sum of squares overflows) and the loss is finite: a max and two host reads on the
        # steps that record nothing (NaN fails the comparison).
        largest = per_param.max().item() if per_param.numel() else 0.0
        finite = largest <= stats.LARGEST_NORM and (loss is None or math.isfinite(loss.item()))
        if self._active or not finite:
            self.global_l2 = stats.norm(per_param)
            weight_rows = None if rows is None else rows[self._weight_index]
            self.grad = stats.tensor_stats([w.grad for w in self.weights], weight_rows)
            if [w._version for w in self.weights] != self._before_versions:
                self.before.copy_(self.weights)
            self._before_versions = None  # the step will change them
        self.nonfinite = self._no_nonfinite
        if not finite:
            # Divergence is a result: record what this step produced, take no step, stop training.
            self.nonfinite = stats.nonfinite_counts([w.grad for w in self.weights])
            self.diverged_step = self.step
            self._active = True
            # Nothing is clipped: record this step's norm, not an earlier step's nor that of no gradients.
            self.global_clipped, pl_module.after_clipping = None, None
            for p in self.params:
                p.grad = None
            trainer.should_stop = True

    def _after_clipping(self) -> None:
        self.global_clipped = stats.global_norm([p.grad for p in self.params if p.grad is not None])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if not self._active:
            return
        self._recording = False
        pl_module.after_clipping = None
        if self.diverged_step is not None or not is_logging_step(self.step + 1, self.log_every, self.max_steps):
            self._detach(pl_module)
        names, parts = self._collect(pl_module)
        values = torch.cat([p.reshape(-1).float() for p in parts]).tolist()  # the one host copy
        self.record(self.step, [*names, K.ELAPSED], [*values, time.perf_counter() - self.started])

    def _collect(self, pl_module: pl.LightningModule) -> tuple[list[str], list[Tensor]]:
        """Keys and the matching device tensors of one logging step, in one fixed order."""
        clipped = self.global_clipped if self.global_clipped is not None else self.global_l2
        loss = pl_module.last_loss if pl_module.last_loss is not None else torch.full((), math.nan)
        parts = [loss.reshape(1), self.global_l2.reshape(1), clipped.reshape(1)]
        extra = getattr(pl_module, "step_stats", None) or {}
        if extra:
            parts.append(torch.stack([v.reshape(()).float() for v in extra.values()]))
        parts += [self.grad[stat] for stat in K.GRAD_STATS[:-1]] + [self.nonfinite]
        diverged = self.diverged_step is not None
        if not diverged:
            parts.append(torch.stack(self.backprop))
            acts = self.act
            if self.act_io:
                layers = sorted(self.act_io)
                outputs, inputs = zip(*(self.act_io[i] for i in layers))
                values = stats.layer_activation_stats(self.activation, list(outputs), list(inputs), self._workspace)
                self.act_io.clear()
                if len(layers) == len(self.act):  # every hidden layer (none recurrent): the rows as they are
                    acts = [values]
                else:
                    for i, row in zip(layers, values):
                        self.act[i] = row
            parts += acts
            # A logging step next (log_every=1): the pass that compares the weights also copies them for it.
            refresh = is_logging_step(self.step + 1, self.log_every, self.max_steps)
            parts.append(stats.update_ratios(self.before, self.weights, refresh))
            if refresh:
                self._before_versions = [w._version for w in self.weights]
            for per_t, gate in zip(self.bptt, self.gates):
                parts += [per_t, stats.bptt_summary(per_t)] if per_t is not None else []
                parts += [gate] if gate is not None else []
        shape = (diverged, tuple(extra), tuple(None if t is None else len(t) for t in self.bptt),
                 tuple(g is not None for g in self.gates))  # fmt: skip
        if shape not in self._names:
            self._names[shape] = self._keys(diverged, list(extra))
        return self._names[shape], parts

    def _keys(self, diverged: bool, extra: list[str]) -> list[str]:
        """The keys of `_collect`'s values, in its order (built once per kind of step, not every step)."""
        names = [K.TRAIN_LOSS, K.GLOBAL_NORM, K.GLOBAL_NORM_CLIPPED, *extra]
        for stat in K.GRAD_STATS:
            names += [K.key("grad", layer, stat) for layer in self.names]
        if diverged:
            return names
        names += [K.key("backprop", layer, "l2") for layer in self.names]
        for layer in self.names[:-1]:
            names += [K.key("act", layer, stat) for stat in K.ACT_STATS]
        names += [K.key("update", layer, "ratio") for layer in self.names]
        for i, layer in enumerate(self.names[:-1]):
            if (per_t := self.bptt[i]) is not None:
                names += [K.key("bptt", layer, K.time_stat(t)) for t in range(len(per_t))]
                names += [K.key("bptt", layer, stat) for stat in K.BPTT_SUMMARY]
            if self.gates[i] is not None:
                gate = GATE_NAME[self.hidden[i].cell]
                names += [K.key("gate", layer, f"{gate}_{stat}") for stat in K.GATE_STATS]
        return names

    def _detach(self, pl_module: pl.LightningModule) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        pl_module.after_clipping = None
        for module in self.hidden:
            if isinstance(module, RecurrentLayer):
                module.keep_sequence, module.kept = False, None
