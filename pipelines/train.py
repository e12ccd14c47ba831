"""Train one configuration as one MLflow run, recording per-layer gradient statistics.

    python -m pipelines.train --model mlp --activation sigmoid --depth 20 --init xavier_normal
    mlflow run . -e train -P activation=sigmoid -P depth=20 --env-manager local

Under `mlflow run` the run MLflow created is taken over; standalone, a run is created in the
experiment named by MLFLOW_EXPERIMENT_NAME (default: Default) of MLFLOW_TRACKING_URI (default: the
SQLite store ./mlflow.db). Bad input exits with code 2 before any run exists; a diverged run is a
result (outcome=diverged, exit code 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from common import liveness
from common.links import run_link, ui_base
from common.preflight import check_tracking, sigterm_interrupts
from common.startup import prepare_exit
from gradprobe import keys as K
from gradprobe.diagnose import log_diagnosis
from gradprobe.lightning import GradientProbe
from gradprobe.recorder import Recorder
from gradprobe.verdict import step0_gain, verdict
from models.base import Family
from models.gan import make_discriminator
from models.init import initialize
from models.lit import LitModel
from models.lit_gan import LitGAN
from models.recurrent import set_forget_bias
from models.registry import create_model
from pipelines.config import ConfigError, RunConfig, choices, field_names
from pipelines.data import GMM_STD, TaskData, gmm_centers, unreadable
from pipelines.memory import check_fits

# Lightning's start-up banners (accelerators, tips) would repeat for every trial of a study.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")

ValidationHook = Callable[[int, dict[str, float]], bool]  # (step, metrics) -> stop (prune) now?


@dataclass(frozen=True)
class RunResult:
    """What one training run ended with."""

    run_id: str
    outcome: str  # completed, diverged, pruned
    steps: int
    metrics: dict[str, float]  # the last train/val metrics
    diverged_step: int | None = None
    seconds: float = 0.0
    probe_share: float = math.nan  # the share of training time the probe took (probe/cost_share)


class ValidationRelay(pl.Callback):
    """Sends validation metrics to the recorder and to an optional hook that may stop (prune) the run."""

    def __init__(self, recorder: Recorder, hook: ValidationHook | None) -> None:
        self.recorder, self.hook = recorder, hook
        self.metrics: dict[str, float] = {}
        self.step = -1
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = trainer.global_step
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in K.VAL_METRICS}
        self.recorder.log_metrics(self.step, self.metrics)
        if self.hook is not None and not trainer.sanity_checking and self.hook(self.step, self.metrics):
            self.pruned = True
            trainer.should_stop = True


def check_inputs(cfg: RunConfig) -> None:
    """Checks that need the file system (local datasets) and the machine (memory), before any run is created."""
    problem = unreadable(cfg.dataset, cfg.data_dir, cfg.seq_len)
    if problem:
        raise ConfigError("data_dir", cfg.data_dir, problem)
    check_fits(cfg)


ADVERSARIAL = "adversarial"  # the task trained by LitGAN (manual optimization) instead of LitModel


def build(cfg: RunConfig) -> tuple[TaskData, LitModel | LitGAN]:
    """The data module and the LightningModule for `cfg`, seeded."""
    data = TaskData(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed)
    pl.seed_everything(cfg.seed, verbose=False)
    # A metric-learning readout is an embedding: its width is the run's choice, not the data's.
    n_outputs = cfg.embed_dim if cfg.task == "metric" else data.n_outputs
    # A GAN's network is its generator: latent noise in, points of the data space out.
    gan = cfg.task == ADVERSARIAL
    in_shape, layout = ((cfg.latent_dim,), "vector") if gan else (data.in_shape, data.info.layout)
    net = create_model(
        cfg.model,
        in_shape=in_shape,
        layout=layout,
        n_outputs=n_outputs,
        depth=cfg.depth,
        width=cfg.width,
        activation=cfg.activation,
        norm=cfg.norm,
        res_scale=cfg.res_scale,
        kernel_size=cfg.kernel_size,
        padding=cfg.padding,
        stride=cfg.stride,
        pool=cfg.pool,
        head=cfg.head,
    )
    initialize(net, cfg.init, cfg.init_gain)
    set_forget_bias(net, cfg.forget_bias)
    if gan:
        return data, build_gan(cfg, net)
    lit = LitModel(
        net,
        task=cfg.task,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        schedule=cfg.schedule,
        max_steps=cfg.max_steps,
    )
    return data, lit


def build_gan(cfg: RunConfig, generator: Family) -> LitGAN:
    """The adversarial task's module: `generator` against the fixed discriminator, scored on the gmm modes."""
    return LitGAN(
        generator,
        make_discriminator(generator.readout.out_features),
        loss=cfg.loss,
        centers=torch.from_numpy(gmm_centers()),
        std=GMM_STD,
        latent_dim=cfg.latent_dim,
        d_steps=cfg.d_steps,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        schedule=cfg.schedule,
        max_steps=cfg.max_steps,
        clip=cfg.clip,
        clip_threshold=cfg.clip_threshold,
    )


def make_probe(
    cfg: RunConfig, lit: pl.LightningModule, sink: Callable[[int, list[str], list[float]], None]
) -> GradientProbe:
    """The lab's probe: the zoo network's blocks under their contract ids (L000…, out), stopping on divergence."""
    names = lit.net.probe_names()
    return GradientProbe(
        cfg.log_every,
        model="net",
        layers=list(names),
        names=names,
        sink=sink,
        stop_on_divergence=True,
        max_steps=cfg.max_steps,
        diagnose=False,
        histograms=cfg.histograms == "on",
    )


def make_trainer(cfg: RunConfig, callbacks: list[pl.Callback], progress_bar: bool) -> pl.Trainer:
    """Lightning's Trainer for `cfg`: step-based, validation every `val_every` steps, clipping as configured."""
    val_every = cfg.val_every or max(1, math.ceil(cfg.max_steps / 5))
    # LitGAN clips in its own hook: Lightning refuses gradient_clip_val under manual optimization.
    clip = "none" if cfg.task == ADVERSARIAL else cfg.clip
    return pl.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator="auto",
        devices=1,
        logger=False,  # the recorder logs; Lightning's MLFlowLogger would open a run of its own
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        num_sanity_val_steps=0,
        val_check_interval=min(val_every, cfg.max_steps),
        check_val_every_n_epoch=None,
        gradient_clip_val=None if clip == "none" else cfg.clip_threshold,
        gradient_clip_algorithm=None if clip == "none" else clip,
        callbacks=callbacks,
    )


def test_metrics(trainer: pl.Trainer, lit: LitModel, data: TaskData) -> dict[str, float]:
    """test/loss and test/acc on the official test split: once, after training, never seen by a study."""
    (results,) = trainer.test(lit, dataloaders=data.test_loader(), verbose=False)
    return {name: float(value) for name, value in results.items() if name in (K.TEST_LOSS, K.TEST_ACC)}


def run_name(cfg: RunConfig) -> str:
    """A readable name for the MLflow UI."""
    extra = f"-{cfg.norm}" if cfg.norm != "none" else ""
    return f"{cfg.model}-{cfg.activation}-d{cfg.depth}{extra}-{cfg.init}-{cfg.optimizer}"


def run(
    cfg: RunConfig,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    on_validation: ValidationHook | None = None,
    on_start: Callable[[str], None] | None = None,
    on_trained: Callable[[str, LitModel], None] | None = None,
    on_recorded: Callable[[str, Any], None] | None = None,
    progress_bar: bool | None = None,
) -> RunResult:
    """Train `cfg` as one MLflow run (nested under `parent_run_id` if given) and return how it ended.

    `on_trained(run_id, lit)` is called after training, while the run is still active (e.g. to log the
    model), so a run never ends FINISHED without what the hook adds. `on_recorded(run_id, table)` gets the
    recorder's full-resolution table (Recorder.table) once training ends, while the run is active.
    """
    check_inputs(cfg)
    started = time.perf_counter()
    data, lit = build(cfg)
    client = MlflowClient()
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    # The training-set size tells full-batch gradient descent from mini-batch SGD in the optimizer figures.
    tags = {**(tags or {}), "n_train": str(len(data.train)), **liveness.identity(), **liveness.beat()}
    # A nested run belongs to its parent's experiment, whatever experiment this process has active.
    experiment_id = client.get_run(parent_run_id).info.experiment_id if parent_run_id else None
    with mlflow.start_run(
        run_name=run_name(cfg), parent_run_id=parent_run_id, tags=tags, experiment_id=experiment_id
    ) as active:
        run_id = active.info.run_id
        liveness.close_dead_runs(client, [active.info.experiment_id])  # runs of killed processes end KILLED
        if on_start is not None:
            on_start(run_id)
        mlflow.log_params(cfg.to_dict())
        expected = math.ceil(cfg.max_steps / cfg.log_every) + 1
        recorder = Recorder(
            client,
            run_id,
            expected_records=expected,
            metric_points=cfg.metric_points,
            heartbeat=liveness.heartbeat(client, run_id),
            heartbeat_seconds=liveness.HEARTBEAT_SECONDS,
        )
        probe = make_probe(cfg, lit, recorder.record)
        relay = ValidationRelay(recorder, on_validation)
        trainer = make_trainer(cfg, [probe, relay], progress_bar)
        interrupted, probe_share = False, math.nan
        try:
            trainer.fit(lit, datamodule=data)
            # The probe's price (probe/seconds, probe/cost_share) as a run-level record: not a logging step's.
            if (cost := probe.probe.cost_record()) is not None:
                recorder.log_metrics(cost[0], dict(zip(cost[1], cost[2])))
                probe_share = dict(zip(cost[1], cost[2]))[K.PROBE_COST_SHARE]
            if probe.diverged_step is None and not relay.pruned and relay.step != trainer.global_step:
                trainer.validate(lit, datamodule=data, verbose=False)
        except (KeyboardInterrupt, SystemExit):
            # Lightning turns Ctrl-C into SystemExit(1) after its own clean-up.
            interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
        finally:
            recorder.close()
        if not interrupted:
            table = recorder.table()
            if on_recorded is not None:
                on_recorded(run_id, table)
            log_diagnosis(table, client, run_id, params=cfg.to_dict())  # diagnosis.md; a failure only warns
        outcome = "diverged" if probe.diverged_step is not None else "pruned" if relay.pruned else "completed"
        end_tags = {"outcome": outcome if not interrupted else "interrupted"}
        if probe.diverged_step is not None:
            end_tags["diverged_step"] = str(probe.diverged_step)
        if outcome == "completed" and not interrupted and data.test is not None:
            mlflow.log_metrics(test_metrics(trainer, lit, data), step=trainer.global_step)
        mlflow.set_tags(end_tags)
        last = {K.TRAIN_LOSS: float(lit.last_loss)} if lit.last_loss is not None else {}
        if interrupted:
            mlflow.end_run(status="KILLED")
            raise KeyboardInterrupt
        if on_trained is not None:
            on_trained(run_id, lit)
    return RunResult(
        run_id=run_id,
        outcome=outcome,
        steps=trainer.global_step,
        metrics={**last, **relay.metrics},
        diverged_step=probe.diverged_step,
        seconds=time.perf_counter() - started,
        probe_share=probe_share,
    )


# -- command line ----------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    """One `--kebab-case` flag per RunConfig field, with its default and allowed values in --help."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,  # exact flags; config_from_args turns bad ones into ConfigError
    )
    for f in dataclasses.fields(RunConfig):
        allowed = choices(f.name)
        text = f.metadata["help"] + (f" [{', '.join(allowed)}]" if allowed else "") + f" (default: {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=f.default, metavar=f.type.upper(), help=text
        )
    return parser


def _convert(name: str, text: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(RunConfig)}[name]
    if kind == "str" or not isinstance(text, str):
        return text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ConfigError(name, text, f"a value of type {kind}") from None


def config_from_args(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse command-line flags into a validated RunConfig (ConfigError on bad values and on bad flags)."""
    flags = {"--" + name.replace("_", "-"): name for name in field_names()}
    # argparse would print its whole usage and exit; a bad flag is one line naming it, like a bad value.
    try:
        args, extra = make_parser().parse_known_args(argv)
    except argparse.ArgumentError as exc:  # a flag without its value
        name = flags.get(exc.argument_name or "", "argument")
        kind = ", ".join(choices(name) or ()) or {f.name: f.type for f in dataclasses.fields(RunConfig)}.get(name, "")
        raise ConfigError(
            name,
            None,
            f"{exc.argument_name} followed by one value ({kind}; {exc.argument_name}=VALUE if it starts with '-')",
        ) from None
    if extra:
        flag, sep, value = extra[0].partition("=")
        if not sep:
            value = extra[1] if len(extra) > 1 and not extra[1].startswith("-") else ""
        name = flag.lstrip("-").replace("-", "_") if flag.startswith("-") else "argument"
        raise ConfigError(
            name,
            value if flag.startswith("-") else extra[0],
            f"a run-config flag, each followed by one value: {', '.join(flags)}",
        )
    args = vars(args)
    return RunConfig.from_dict({name: _convert(name, args[name]) for name in field_names()})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, train; exit code 2 on bad input."""
    try:
        cfg = config_from_args(argv)
        check_inputs(cfg)
        check_tracking()  # the store and MLflow's variables, answered within seconds, before a run exists
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("MLFLOW_EXPERIMENT_NAME") and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    tables: list[Any] = []
    try:
        with sigterm_interrupts():
            result = run(cfg, on_recorded=lambda _, table: tables.append(table))
    except KeyboardInterrupt:
        print("interrupted: the statistics recorded so far are in the run (status KILLED)", file=sys.stderr)
        return 130
    gain = step0_gain(tables[0]) if tables else math.nan
    print(result_line(result, cfg, gain, MlflowClient().get_run(result.run_id).info.experiment_id))
    return 0


def result_line(result: RunResult, cfg: RunConfig, gain: float, experiment_id: str) -> str:
    """The run's one line: outcome, last metrics, the gradient verdict at initialization, the link to the run."""
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
    if cfg.loss.startswith("gan_"):  # a GAN's verdict is its loss's gradient, not depth (the report's gan figures)
        judged = "verdict: see the report (GAN)"
    elif math.isnan(gain):
        judged = "verdict: none (needs two hidden layers with finite step-0 gradients)"
    else:
        judged = f"per-layer gradient gain at init {gain:.3g}: {verdict(gain)}"
    price = f" (the probe {100 * result.probe_share:.1f} % of training)" if math.isfinite(result.probe_share) else ""
    return (
        f"run {result.run_id}: {result.outcome} after {result.steps} steps in {result.seconds:.1f} s{price}; "
        f"{metrics}; {judged}; {ui_base()}/{run_link(experiment_id, result.run_id)}"
    )


if __name__ == "__main__":
    code = main()
    prepare_exit()  # common/startup.py: a faster exit
    sys.exit(code)
