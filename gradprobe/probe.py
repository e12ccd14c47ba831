"""The probe's engine: per-layer gradient statistics of any PyTorch network, on a schedule, framework-free.

A training loop tells it four moments of a step (gradprobe/lightning.py does it for Lightning):

    probe = Probe(model, log_every=10, sink=my_sink)     # sink(step, keys, values), optional
    for step, (x, y) in enumerate(loader):
        probe.begin(step)                                 # a logging step: hooks go on
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if probe.gradients(loss):                         # before clipping: statistics, divergence guard
            break                                         # diverged (stop_on_divergence=True): no step taken
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end()                                       # after the step: clipped norm, update ratio, record
    probe.close()                                         # records a step left unfinished, removes the hooks

On a logging step it hooks every layer (its output for ‖∂loss/∂output‖ through a tensor hook, the activation
module after it), replays recurrent modules for ∂loss/∂h_t (gradprobe/recurrent.py), reads the weight
gradients before clipping (`gradients`) and after (the `.grad` the optimizer applied: `end`, or the step
hook of an optimizer passed to `watch`), and the update. All statistics stay on the device until the end of
the step, where they are concatenated and copied to the host once. Between logging steps no hook is
registered; only the divergence guard runs (one sync). What a record holds, and its key names, come from
gradprobe/definitions.py.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from functools import wraps

import torch
from torch import Tensor, nn

from gradprobe import definitions as D
from gradprobe import keys as K
from gradprobe import stats
from gradprobe.layers import Layer, Selection, activation_name, discover_layers
from gradprobe.recurrent import cell_kind, replay, state_activation
from gradprobe.sinks import close_sink

Sink = Callable[[int, list[str], list[float]], None]


def is_logging_step(step: int, log_every: int, max_steps: int | None = None) -> bool:
    """The schedule: step 0, every `log_every`-th step, and the last step (when `max_steps` is known)."""
    return step % log_every == 0 or (max_steps is not None and step == max_steps - 1)


def _timed(method: Callable) -> Callable:
    """Count the time spent in `method` as the probe's own cost."""

    @wraps(method)
    def timed(self: Probe, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.probe_seconds += time.perf_counter() - started

    return timed


class Probe:
    """Per-layer statistics of `model`'s training steps, recorded every `log_every` steps into `sink` and `history`.

    `layers`/`names`: gradprobe.layers.discover_layers. `stop_on_divergence`: on a step whose gradient norm
    or loss is not finite, drop its gradients (no step is taken) and report it to the caller (which stops
    training); otherwise the step is recorded, a warning is given once and training goes on. `diverged_step`
    is the first such step. `record=False` (a DDP rank other than 0) runs the divergence guard only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        log_every: int = 10,
        max_steps: int | None = None,
        layers: Selection = None,
        names: Mapping[str, str] | None = None,
        sink: Sink | None = None,
        stop_on_divergence: bool = False,
        record: bool = True,
        histograms: bool = False,
        record_cost: bool = False,
    ) -> None:
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every={log_every!r}: a positive integer")
        self.model, self.log_every, self.max_steps = model, log_every, max_steps
        self.sink, self.stop_on_divergence, self.record = sink, stop_on_divergence, record
        self.histograms = histograms  # log10|g| histograms of the weights' gradients on logging steps (D.HIST)
        self.record_cost = record_cost  # at close, through the sink: probe/seconds, probe/cost_share
        self._closed = False
        self.layers: list[Layer] = discover_layers(model, layers, names)
        if not self.layers:
            raise ValueError("layers: no layer to probe in the model (Linear, Conv, Embedding, norms, attention, RNN)")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._param_ids = {id(p) for p in self.params}
        self.history: list[tuple[int, list[str], list[float]]] = []  # what was recorded (references, no copies)
        self.diverged_step: int | None = None
        self.probe_seconds, self._started, self._stopped = 0.0, None, None
        self.step = -1
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._optimizer_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._holds: dict[int, bool] = {}  # id(optimizer) → whether it steps the probed parameters
        self._ordered = False  # forward order known (after the first logging step's forward pass)
        self._call_order: dict[int, int] = {}
        self._active = self._recording = self._diverged_now = self._stepped = self._read = False
        self._workspace: dict = {}  # the activation statistics' scratch copies, reused at every logging step
        self._arrange()

    # -- layers ---------------------------------------------------------------------------------
    def _arrange(self) -> None:
        """Per-layer state that depends on the layers' order."""
        self.weights = [layer.weight for layer in self.layers]
        index = {id(p): i for i, p in enumerate(self.params)}
        self._weight_index = torch.tensor([index[id(w)] for w in self.weights])
        self.before: stats.Stacked | None = None  # the weights before a logged step, stacked by shape
        # The weights' version counters when `before` was last refreshed with them: while they are unchanged,
        # `before` is still their copy (every in-place change bumps a tensor's version).
        self._before_versions: list[int] | None = None
        last = self.layers[-1]
        # Which layers record `act`: from the activation module after them, the replay of a recurrent module,
        # or their own output (saturation unknown: NaN); not the last layer's output (a network's output).
        self._act_source = {layer.name: self._act_of(layer, layer is last) for layer in self.layers}

    @staticmethod
    def _act_of(layer: Layer, is_last: bool) -> tuple[str, str | None] | None:
        if layer.replayed:
            return ("replay", None)
        if layer.act is not None:
            return ("module", activation_name(layer.act))
        if layer.recurrent is not None and layer.output is not None:
            return ("output", state_activation(layer.recurrent))  # h is bounded by the cell's nonlinearity
        if layer.output is not None and not is_last:
            return ("output", None)
        return None

    def _finish_order(self) -> None:
        """Layers by first forward call; activation modules to the last layer that ran before them."""
        order = self._call_order
        position = {layer.name: order.get(id(layer.runs), math.inf) for layer in self.layers}
        self.layers.sort(key=lambda layer: position[layer.name])  # stable: module order among equals
        ran = [(position[layer.name], layer) for layer in self.layers if position[layer.name] < math.inf]
        taken = {id(layer.act) for layer in self.layers if layer.act is not None}
        called = sorted((m for m in self.model.modules() if id(m) in order), key=lambda m: order[id(m)])
        for module in called:  # in call order: the first activation after a layer is its activation
            if id(module) in taken or activation_name(module) is None:
                continue
            before = [layer for at, layer in ran if at < order[id(module)]]
            if before and before[-1].act is None and not before[-1].replayed and before[-1].output is not None:
                before[-1].act = module
                taken.add(id(module))
        self._ordered = True
        self._call_order = {}
        self._arrange()
        self._detach()  # the discovery hooks go; the next logging step hooks what the layers now need

    # -- the step ---------------------------------------------------------------------------------
    @_timed
    def begin(self, step: int) -> None:
        """Start training step `step` (before the forward pass)."""
        if self._started is None:
            self._started = time.perf_counter()
        self.step, self._loss = step, None
        self._active = self.record and is_logging_step(step, self.log_every, self.max_steps)
        self._diverged_now = self._stepped = self._read = False
        if self._active:
            self._reset()
            if not self._hooks:
                self._attach()
        self._recording = self._active

    def _reset(self) -> None:
        """Empty the per-step slots that the hooks fill (keyed by layer name)."""
        self.backprop: dict[str, Tensor] = {}  # ‖∂loss/∂(each layer's output)‖
        self.outputs: dict[str, Tensor] = {}  # outputs whose statistics are the layer's `act`
        self.act_io: dict[int, tuple[Tensor, Tensor]] = {}  # id(activation module) → (a, z), batched at the end
        self.replayed: dict[str, Tensor] = {}  # act statistics of the replayed recurrent layers
        self.bptt: dict[str, Tensor] = {}  # ‖∂loss/∂h_t‖ for every t of a recurrent layer
        self.gates: dict[str, Tensor] = {}
        self.global_clipped: Tensor | None = None
        self.update: Tensor | None = None
        self.hist: Tensor | None = None

    def _attach(self) -> None:
        """Hook every layer; the hooks stay while logging steps follow each other (`log_every=1`)."""
        for layer in self.layers:
            if layer.output is not None:
                self._hooks.append(layer.output.register_forward_hook(self._on_output(layer)))
            if layer.replayed:
                self._hooks.append(layer.recurrent.register_forward_hook(self._on_recurrent(layer), with_kwargs=True))
        acts = {id(layer.act): layer.act for layer in self.layers if layer.act is not None}
        if not self._ordered:  # the first logging step: every activation module, and the order of the calls
            acts.update({id(m): m for m in self.model.modules() if activation_name(m) is not None})
            for module in self.model.modules():
                self._hooks.append(module.register_forward_pre_hook(self._on_call))
        for module in acts.values():
            self._hooks.append(module.register_forward_hook(self._on_act))

    def _on_call(self, module: nn.Module, args) -> None:
        if self._recording:
            self._call_order.setdefault(id(module), len(self._call_order))

    # Hooks act between a step's begin and end only: never in a validation pass run between two steps.
    def _on_output(self, layer: Layer) -> Callable:
        name = layer.name
        # Before the forward order is known every layer's output may be needed (which layer is last, which
        # activation module follows which layer, is settled after this forward pass).
        source = self._act_source[name]
        wants_output = not layer.replayed and (not self._ordered or (source is not None and source[0] == "output"))

        def hook(module: nn.Module, inputs, output) -> None:
            if not self._recording:
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, Tensor):
                return  # a PackedSequence: no output statistics
            if out.requires_grad:  # its norm at once, so backward frees ∂loss/∂output as usual
                out.register_hook(self._timed_hook(lambda g: self.backprop.__setitem__(name, stats.norm(g.detach()))))
            if wants_output:
                self.outputs[name] = out

        return hook

    def _on_act(self, module: nn.Module, inputs, output: Tensor) -> None:
        if self._recording and isinstance(output, Tensor):
            self.act_io[id(module)] = (output, inputs[0])

    def _on_recurrent(self, layer: Layer) -> Callable:
        def hook(module: nn.RNNBase, args, kwargs, output) -> None:
            if not self._recording:
                return
            started = time.perf_counter()
            x = args[0] if args else kwargs.get("input")
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            seq = output[0]
            if isinstance(x, Tensor) and isinstance(seq, Tensor):
                self._replay(layer, module, x, seq, hx)
            self.probe_seconds += time.perf_counter() - started

        return hook

    def _replay(self, layer: Layer, module: nn.RNNBase, x: Tensor, seq: Tensor, hx) -> None:
        name, played = layer.name, replay(module, x, seq, hx)
        self.replayed[name] = stats.activation_stats(state_activation(module), played.h)
        if played.gate is not None:
            self.gates[name] = stats.gate_stats(played.gate)
        self.bptt[name] = torch.full((played.h.shape[0],), math.nan, device=seq.device)
        if seq.requires_grad:
            # ∂loss/∂(the outputs) from the consumers, then the cell's own recursion back through time;
            # run during backward, before the optimizer changes W_hh.
            seq.register_hook(
                self._timed_hook(lambda g: self.bptt.__setitem__(name, stats.state_norms(played.state_gradients(g))))
            )

    def _timed_hook(self, fn: Callable[[Tensor], None]) -> Callable[[Tensor], None]:
        def hook(g: Tensor) -> None:
            started = time.perf_counter()
            fn(g)
            self.probe_seconds += time.perf_counter() - started

        return hook

    def holds(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether `optimizer` steps the probed parameters (a GAN's discriminator optimizer does not)."""
        held = self._holds.get(id(optimizer))
        if held is None:
            held = any(id(p) in self._param_ids for group in optimizer.param_groups for p in group["params"])
            self._holds[id(optimizer)] = held
        return held

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Read the clipped gradients and the update right after `optimizer.step()` (if it steps the probed weights)."""
        if self.holds(optimizer):
            self._optimizer_hooks.append(optimizer.register_step_post_hook(lambda *_: self._after_step()))

    @_timed
    def gradients(self, loss: Tensor | None = None) -> bool:
        """Read the gradients before clipping; True if the step diverged and must not be taken (`stop_on_divergence`).

        Call it after backward and before clipping and the optimizer step, on every step (the divergence guard).
        """
        if self._active and not self._ordered:
            self._finish_order()
        self._read = True
        self._loss = None if loss is None else loss.detach()
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        # On a logging step the guard's pass over the gradients also takes the weights' statistics.
        rows = stats.grad_rows(present) if self._active and present and len(present) == len(grads) else None
        per_param = stats.norms(present) if rows is None else rows[:, 0]
        # A step is taken while every norm is at most `stats.LARGEST_NORM` (float32 clipping could not use a
        # larger one: its sum of squares overflows) and the loss is finite: a max and two host reads on the
        # steps that record nothing (NaN fails the comparison).
        largest = per_param.max().item() if per_param.numel() else 0.0
        finite = largest <= stats.LARGEST_NORM and (loss is None or math.isfinite(self._loss.item()))
        first_divergence = not finite and self.diverged_step is None
        if first_divergence:
            self.diverged_step, self._diverged_now = self.step, True
            if not self._active and self.record:  # the diverged step is recorded, on schedule or not
                self._reset()
                self._active = True
        if self._active:
            self.global_l2 = stats.norm(per_param)
            weight_rows = None if rows is None else rows[self._weight_index]
            self.grad = stats.grad_table(self._weight_grads(), weight_rows, finite=finite)
            self.hist = stats.compute(D.HIST, self._weight_grads()) if self.histograms else None  # before clipping
            if not self._diverged_now:
                self._keep_weights()
        if not first_divergence:
            return False
        if not self.stop_on_divergence:
            warnings.warn(
                f"gradprobe: non-finite loss or gradient norm at step {self.step}; training goes on",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        for p in self.params:  # divergence is a result: record what this step produced, take no step
            p.grad = None
        return True

    def _weight_grads(self) -> list[Tensor]:
        """Each layer's weight gradient; NaN for a weight that received none this step."""
        return [w.grad if w.grad is not None else torch.full((1,), math.nan, device=w.device) for w in self.weights]

    def _keep_weights(self) -> None:
        """Copy the weights before the step, unless `before` still holds them (no in-place change since)."""
        if self.before is None:
            self.before = stats.Stacked(self.weights)  # made here, where the weights are on their device
        if [w._version for w in self.weights] != self._before_versions:
            self.before.copy_(self.weights)
        self._before_versions = None  # the step will change them

    def _after_step(self) -> None:
        if not self._active or self._stepped:
            return
        started = time.perf_counter()
        self._stepped = True
        if not self._diverged_now or not self.stop_on_divergence:
            present = [p.grad for p in self.params if p.grad is not None]
            self.global_clipped = stats.global_norm(present) if present else None
        if not self._diverged_now:
            # A logging step next (log_every=1): the pass that compares the weights also copies them for it.
            refresh = is_logging_step(self.step + 1, self.log_every, self.max_steps)
            self.update = stats.update_ratios(self.before, self.weights, refresh)
            if refresh:
                self._before_versions = [w._version for w in self.weights]
        self.probe_seconds += time.perf_counter() - started

    @_timed
    def end(self, loss: Tensor | float | None = None, extra: Mapping[str, Tensor] | None = None) -> None:
        """Finish the step after the optimizer step: record it if it is a logging (or diverged) step.

        `loss`: the step's training loss, if not the one given to `gradients`; `extra`: run-wide numbers
        (`{key: scalar tensor}`) that join the record.
        """
        self._stopped = time.perf_counter()
        self._recording = False
        if not self._active or not self._read:
            return  # nothing to record, or no optimizer step yet (gradient accumulation: the step goes on)
        self._after_step()  # without a watched optimizer: the gradients and weights as the step left them
        self._active = self._recording = False
        if self._diverged_now or not is_logging_step(self.step + 1, self.log_every, self.max_steps):
            self._detach()
        loss = self._loss if loss is None else torch.as_tensor(loss).detach()
        keys, parts = self._collect(loss, dict(extra or {}))
        values = torch.cat([p.reshape(-1).float() for p in parts]).tolist()  # the one host copy
        keys, values = [*keys, K.ELAPSED], [*values, self._stopped - self._started]
        self.history.append((self.step, keys, values))
        if self.sink is not None:
            self.sink(self.step, keys, values)

    # -- the record ---------------------------------------------------------------------------------
    def _collect(self, loss: Tensor | None, extra: dict[str, Tensor]) -> tuple[list[str], list[Tensor]]:
        """Keys and the matching device tensors of one logging step: each block's keys from its definition."""
        nan = torch.full((), math.nan, device=self.global_l2.device)
        clipped = self.global_clipped if self.global_clipped is not None else self.global_l2
        run = [loss if loss is not None else nan, self.global_l2, clipped, *extra.values()]
        keys = [K.TRAIN_LOSS, K.GLOBAL_NORM, K.GLOBAL_NORM_CLIPPED, *extra]
        parts = [torch.stack([v.reshape(()).float().to(nan.device) for v in run])]
        ids = tuple(layer.id for layer in self.layers)

        def add(definition: D.Statistic, layers: tuple[str, ...], values: Tensor, names: tuple[str, ...] = ()) -> None:
            keys.extend(K.part_keys(definition.family, names or definition.stats, layers))
            parts.append(values)

        add(D.GRAD, ids, torch.stack([self.grad[stat].float() for stat in D.GRAD.stats]))
        if self.hist is not None:
            add(D.HIST, ids, self.hist.T)
        if self._diverged_now:
            return keys, parts
        if seen := [layer for layer in self.layers if layer.output is not None]:
            norms = torch.stack([self.backprop.get(layer.name, nan).float() for layer in seen])
            add(D.BACKPROP, tuple(layer.id for layer in seen), norms)
        act_layers, act_values = self._activation_rows(nan)
        if act_layers:
            add(D.ACT, act_layers, act_values.T)
        add(D.UPDATE, ids, self.update if self.update is not None else nan.expand(len(ids)))
        for layer in self.layers:
            if (per_t := self.bptt.get(layer.name)) is not None:
                add(
                    D.BPTT,
                    (layer.id,),
                    torch.cat([per_t, stats.bptt_summary(per_t)]),
                    tuple(K.time_stat(t) for t in range(len(per_t))) + D.BPTT.stats,
                )
            if (gate := self.gates.get(layer.name)) is not None:
                add(D.GATE, (layer.id,), gate, D.gate_stat_names(cell_kind(layer.recurrent)))
        return keys, parts

    def _activation_rows(self, nan: Tensor) -> tuple[tuple[str, ...], Tensor | None]:
        """(ids, (layers, 3)) of the layers whose activations were seen this step, batched by activation."""
        groups: dict[str | None, list[tuple[Layer, Tensor, Tensor | None]]] = {}
        rows: dict[str, Tensor] = {}
        for layer in self.layers:
            source = self._act_source[layer.name]
            if source is None:
                continue
            if source[0] == "replay":
                rows[layer.name] = self.replayed.get(layer.name, nan.expand(3))
            elif layer.act is not None and id(layer.act) in self.act_io:
                a, z = self.act_io[id(layer.act)]
                groups.setdefault(activation_name(layer.act), []).append((layer, a, z))
            elif layer.name in self.outputs:
                groups.setdefault(source[1], []).append((layer, self.outputs[layer.name], None))
            else:
                rows[layer.name] = nan.expand(3)
        self.act_io.clear()
        self.outputs.clear()
        for name, members in groups.items():
            outputs, inputs = [m[1] for m in members], [m[2] for m in members]
            known = name is not None
            values = stats.layer_activation_stats(
                name if known else "linear",
                outputs,
                inputs if all(z is not None for z in inputs) else None,
                self._workspace,
            )
            if not known:  # a functional activation (or none): the output's mean and std, saturation unknown
                values = torch.cat([values[:, :2], nan.expand(len(members), 1).to(values.dtype)], dim=1)
            if len(groups) == 1 and not rows and len(members) == len(self._act_source_names()):
                return tuple(m[0].id for m in members), values  # one batch in layer order: the rows as they are
            rows.update({m[0].name: row for m, row in zip(members, values)})
        chosen = [layer for layer in self.layers if layer.name in rows]
        if not chosen:
            return (), None
        return tuple(layer.id for layer in chosen), torch.stack([rows[layer.name].float() for layer in chosen])

    def _act_source_names(self) -> list[str]:
        return [name for name, source in self._act_source.items() if source is not None]

    # -- teardown and cost ------------------------------------------------------------------------
    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def close(self, finish: bool = True) -> None:
        """Record a step left unfinished (a loop that stopped at a diverged step) if `finish`; remove every hook.

        The first close also sends the probe's cost to the sink if `record_cost` (`cost_record`: one call more
        than the logging steps) and closes the sink if it has a `close`.
        """
        if finish and self._active and self._read:
            self.end()
        if not self._closed:
            self._closed = True
            if self.record_cost and self.sink is not None and (cost := self.cost_record()) is not None:
                self.sink(*cost)
            close_sink(self.sink)
        self._detach()
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks.clear()
        self._recording = self._active = False

    def cost(self) -> dict[str, float]:
        """Seconds spent in the probe's own hooks and statistics, and wall seconds of training so far."""
        if self._started is None:
            return {"probe_seconds": 0.0, "train_seconds": 0.0}
        train = (self._stopped or time.perf_counter()) - self._started
        return {"probe_seconds": self.probe_seconds, "train_seconds": train}

    def cost_record(self) -> tuple[int, list[str], list[float]] | None:
        """(last recorded step, keys, values) of what the probe cost the run: its seconds and their share of training's.

        None when nothing was recorded (a DDP rank other than 0, or no logging step yet). Not part of `history`.
        """
        if not self.record or not self.history:
            return None
        cost = self.cost()
        share = cost["probe_seconds"] / cost["train_seconds"] if cost["train_seconds"] > 0 else math.nan
        return self.history[-1][0], [K.PROBE_SECONDS, K.PROBE_COST_SHARE], [cost["probe_seconds"], share]
