"""The invariance experiment: a zoo of networks, trained or reused from MLflow, measured at initialization and trained.

    python -m experiments.invariance                       # the zoo on mnist1d and digits; reuses trained runs
    python -m experiments.invariance --retrain true --max-steps 300
    mlflow run . -e invariance --env-manager local

`main` is the entry point: it builds the zoo, trains what MLflow does not hold yet (one nested run per
model, its weights logged as `model/state_dict.pt`), tests every model at initialization and trained with
the measures of experiments/invariance/measures.py, and logs the numbers to the model's run (keys in
gradprobe/keys.py and the README) and as `invariance/metrics.parquet`. Its runs form a study's tree
(studies/tree.py): the first invocation's run is the parent, later ones nest under it as workers, zoo
runs as trials.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from torch import nn

from common.cli import OneLineParser
from common.preflight import check_tracking, sigterm_interrupts
from experiments.invariance.measures import LossFn, background, equivariance_rows, gradient_rows, shift_metrics
from gradprobe import keys as K
from pipelines import train
from pipelines.config import ConfigError, RunConfig
from pipelines.memory import check_fits
from studies import tree

STUDY, ZOO_TAG, ZOO_ARTIFACT = K.INVARIANCE, K.INVARIANCE_ZOO_TAG, K.INVARIANCE_ZOO_ARTIFACT
MODEL_ARTIFACT = "model/state_dict.pt"  # torch.save(net.state_dict()): loading needs RunConfig + train.build only

# ------------------------------------------------------------------------------------------ the zoo

BASE = dict(depth=3, width=32, activation="relu", optimizer="adam", lr=0.01, batch_size=64, max_steps=300, log_every=10)
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
        found = shift_metrics(
            net, x, y, MAX_SHIFT.get(cfg.dataset, max(1, min(x.shape[2:]) // 4)), background(data.train.tensors[0])
        )
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
    """(parent run id, this invocation's run id, experiment id): the study tree of studies/tree.py.

    The first invocation's run (the one `mlflow run` made, or a new one) becomes the parent (study=invariance,
    role=parent); a later one nests its own run under it with role=worker, and new zoo runs nest under the parent.
    Runs of the tree left RUNNING by a process that died are closed first.
    """
    own = os.environ.pop("MLFLOW_RUN_ID", None)  # train.run's start_run must not take it over
    experiment_id = _experiment_id(client, own)
    tree.close_dead_runs(client, experiment_id, STUDY)
    parents = client.search_runs(
        [experiment_id],
        f"tags.study = '{STUDY}' and tags.role = '{tree.PARENT}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    parents = [p for p in parents if p.info.run_id != own]
    if own is None:
        own = client.create_run(experiment_id, run_name=STUDY).info.run_id
    if not parents:
        tree.tag_parent(client, own, STUDY)
        return own, own, experiment_id
    tree.tag_worker(client, own, parents[0].info.run_id, STUDY)
    return parents[0].info.run_id, own, experiment_id


def _zoo_run(
    client: MlflowClient, experiment_id: str, parent: str, name: str, cfg: RunConfig, retrain: bool
) -> dict[str, Any]:
    """Train (or reuse) zoo model `name`, measure it and log the numbers to its run; its zoo row."""
    t0 = time.perf_counter()
    run_id = None if retrain else find_trained(client, experiment_id, name, cfg)
    reused = run_id is not None
    if not reused:
        tags = {**tree.trial_tags(STUDY, _trial_number(name, cfg.dataset)), ZOO_TAG: name}
        result = train.run(cfg, parent_run_id=parent, tags=tags, on_trained=_log_model(name, cfg), progress_bar=False)
        run_id = result.run_id
    table = measure(cfg, run_id)
    log_measurements(client, run_id, table)
    return _summary_row(name, cfg, run_id, reused, table, time.perf_counter() - t0)


def _log_zoo(client: MlflowClient, own: str, frame: pd.DataFrame, seconds: float) -> None:
    """The zoo table (one row per run) and the invocation's counts, on the invocation's run."""
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(Path(tmp) / Path(ZOO_ARTIFACT).name, index=False)
        client.log_artifact(own, str(Path(tmp) / Path(ZOO_ARTIFACT).name), Path(ZOO_ARTIFACT).parent.as_posix())
    client.log_batch(
        own,
        metrics=[
            Metric(k, float(v), int(time.time() * 1000), 0)
            for k, v in {
                "invariance/trained_runs": int((~frame["reused"]).sum()),
                "invariance/reused_runs": int(frame["reused"].sum()),
                "invariance/seconds": seconds,
            }.items()
        ],
    )


def run_zoo(
    names: Sequence[str], datasets: Sequence[str], *, retrain: bool = False, report: bool = True, **overrides: Any
) -> pd.DataFrame:
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
    started, zoo = time.perf_counter(), []
    try:
        for name, cfg in configs:
            zoo.append(_zoo_run(client, experiment_id, parent, name, cfg, retrain))
            print(_describe(zoo[-1]), file=sys.stderr, flush=True)
        frame = pd.DataFrame(zoo)
        _log_zoo(client, own, frame, time.perf_counter() - started)
        if report and importlib.util.find_spec("analysis.invariance_report") is not None:
            from analysis import invariance_report  # heavy (figures): imported only when the report is built

            print(f"report: {invariance_report.build(run_id=own)}", file=sys.stderr)
    except KeyboardInterrupt:
        client.set_terminated(own, "KILLED")
        raise
    except BaseException as exc:  # the runs measured so far are kept; the invocation's run says why it ended
        tree.fail_after_trials(client, own, None, exc)
        raise
    client.set_terminated(own, "FINISHED")
    return frame


def _summary_row(name: str, cfg: RunConfig, run_id: str, reused: bool, table: pd.DataFrame, seconds: float) -> dict:
    def pick(state: str, metric: str, mode: str | None = None) -> float:
        rows = table[(table["state"] == state) & (table["metric"] == metric)]
        if mode is not None:
            rows = rows[(rows["mode"] == mode) & rows["shift"].isna()]
        return float(rows["value"].max()) if len(rows) else math.nan

    acc = table[(table["state"] == "trained") & (table["metric"] == "acc") & (table["shift"] == 0)]
    return {
        "dataset": cfg.dataset,
        "model": name,
        "run_id": run_id,
        "reused": reused,
        "accuracy": float(acc["value"].iloc[0]),
        **{f"consistency_{m}_{s}": pick(s, "consistency", m) for s in K.INVARIANCE_STATES for m in K.SHIFT_MODES},
        **{f"eqerr_max_{s}": pick(s, "eqerr") for s in K.INVARIANCE_STATES},
        "seconds": round(seconds, 1),
    }


def _describe(row: dict) -> str:
    return (
        f"{row['dataset']:>8} {row['model']:<17} {'reused ' if row['reused'] else 'trained'} acc {row['accuracy']:.3f}"
        f"  consistency circ/zero: init {row['consistency_circ_init']:.3f}/{row['consistency_zero_init']:.3f}"
        f" trained {row['consistency_circ_trained']:.3f}/{row['consistency_zero_trained']:.3f}"
        f"  max eqerr init {row['eqerr_max_init']:.2g} trained {row['eqerr_max_trained']:.2g}  {row['seconds']} s"
    )


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
        raise argparse.ArgumentTypeError(
            f"{what}={text!r} is not allowed; allowed: all or a comma list of {', '.join(allowed)}"
        )
    return names


def make_parser() -> argparse.ArgumentParser:
    """Flags mirroring the MLproject `invariance` parameters."""
    parser = OneLineParser(
        prog="python -m experiments.invariance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
