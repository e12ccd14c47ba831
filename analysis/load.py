"""The only reader of what runs wrote: runs, params and tags from MLflow, statistics from parquet, as tidy frames.

Reads in bulk: one `search_runs` for the runs of a study, then each run's parquet artifact straight
from a local artifact store (or downloaded from a remote one), in a thread pool; never per-key
`get_metric_history` loops.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from gradprobe.keys import INVARIANCE, INVARIANCE_ARTIFACT, INVARIANCE_ZOO_ARTIFACT, time_of
from gradprobe.recorder import STATS_ARTIFACT

READ_THREADS = 8


@dataclass(frozen=True)
class StudyData:
    """A study's trial runs (one row each) and their statistics (long format, with run_id).

    `skipped`: run id → why that trial run is left out (it never finished, or its statistics are missing or
    unreadable); the report names them.
    """

    name: str
    runs: pd.DataFrame
    stats: pd.DataFrame
    parent_run_id: str | None
    skipped: dict[str, str] = field(default_factory=dict)


def _numeric(column: pd.Series) -> pd.Series:
    converted = pd.to_numeric(column, errors="coerce")
    if converted.notna().sum() != column.notna().sum():
        return column
    # Integer params (depth, width, …) stay integers even where a run without them (the study's parent,
    # read in the same search) puts NaN in the column, which would make pandas store them as floats.
    if column.dropna().astype(str).str.fullmatch(r"-?\d+").all():
        return converted.astype("Int64")
    return converted


def runs(study: str | None = None, *, run_ids: list[str] | None = None, role: str | None = "trial") -> pd.DataFrame:
    """One row per run: run_id, status, times, tags (study, trial, role, outcome, …), params and last metrics.

    Select by `study` tag (runs of any experiment) or by `run_ids`; `role` keeps trial runs only
    (None keeps the parent and worker runs too). Param columns are numeric where every value is.
    """
    if study is not None:
        frame = mlflow.search_runs(
            search_all_experiments=True, filter_string=f"tags.study = '{study}'", output_format="pandas"
        )
    else:
        client = MlflowClient()
        rows = [client.get_run(r) for r in run_ids or []]
        frame = pd.DataFrame(
            [
                {
                    "run_id": r.info.run_id,
                    "experiment_id": r.info.experiment_id,
                    "status": r.info.status,
                    "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
                    "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
                    **{f"params.{k}": v for k, v in r.data.params.items()},
                    **{f"tags.{k}": v for k, v in r.data.tags.items()},
                    **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
                }
                for r in rows
            ]
        )
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "status", "role", "trial", "outcome"])
    renamed = {c: c.split(".", 1)[1] for c in frame.columns if c.startswith(("params.", "tags."))}
    renamed["tags.mlflow.parentRunId"] = "parent_run_id"
    frame = frame.rename(columns=renamed)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    for column in [c for c in frame.columns if c in renamed.values() and c not in ("parent_run_id", "study", "role")]:
        frame[column] = _numeric(frame[column])
    if role is not None and "role" in frame:
        frame = frame[frame["role"] == role]
    if "trial" in frame:
        frame["trial"] = frame["trial"].astype("Int64")
        frame = frame.sort_values("trial", kind="stable")
    return frame.reset_index(drop=True)


def _local_path(artifact_uri: str, artifact: str = STATS_ARTIFACT) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path)) / artifact
    return None


def _artifact_file(run_id: str, artifact_uri: str, artifact: str) -> Path | None:
    """A run's artifact as a local file (read in place from a local store), or None when the run lacks it."""
    path = _local_path(artifact_uri, artifact)
    if path is None or not path.exists():
        try:
            path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact))
        except Exception:  # a run that crashed before writing its table contributes no rows
            return None
    return path


STATS_FIELDS = ("step", "layer", "family", "stat", "value")  # the recorder's table (gradprobe/recorder.py)


def _read_one(run_id: str, artifact_uri: str, artifact: str = STATS_ARTIFACT) -> tuple[pd.DataFrame, str | None]:
    """(a run's table with run_id, None), or (an empty frame, why it cannot be read): one bad file spoils no other."""
    path = _artifact_file(run_id, artifact_uri, artifact)
    if path is None:
        return pd.DataFrame(), f"no {artifact}"
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # truncated, corrupt or not parquet at all: pyarrow raises several kinds
        return pd.DataFrame(), " ".join(f"unreadable {artifact}: {type(exc).__name__}: {exc}".split())[:300]
    missing = [c for c in STATS_FIELDS if c not in table] if artifact == STATS_ARTIFACT else []
    if missing:
        return pd.DataFrame(), f"{artifact} lacks the columns {', '.join(missing)}"
    table.insert(0, "run_id", run_id)
    return table, None


def _empty_stats() -> pd.DataFrame:
    # Typed like a loaded table, so numeric code (np.isfinite on value) works on an empty study too.
    return pd.DataFrame(
        {
            "run_id": pd.Series(dtype=str),
            "step": pd.Series(dtype="int64"),
            "layer": pd.Series(dtype=str),
            "family": pd.Series(dtype=str),
            "stat": pd.Series(dtype=str),
            "value": pd.Series(dtype="float64"),
        }
    )


def stats(
    run_frame: pd.DataFrame, families: tuple[str, ...] | None = None, unreadable: dict[str, str] | None = None
) -> pd.DataFrame:
    """Long table of every run's statistics: run_id, step, layer, family, stat, value.

    A run whose table is missing or unreadable contributes no rows; `unreadable` (if given) receives run id → why.
    """
    if run_frame.empty:
        return _empty_stats()
    uris = (
        run_frame["artifact_uri"]
        if "artifact_uri" in run_frame
        else [MlflowClient().get_run(r).info.artifact_uri for r in run_frame["run_id"]]
    )
    with ThreadPoolExecutor(READ_THREADS) as pool:
        read = list(pool.map(_read_one, run_frame["run_id"], uris))
    if unreadable is not None:
        unreadable.update({run_id: why for run_id, (_, why) in zip(run_frame["run_id"], read) if why is not None})
    tables = [t for t, _ in read if not t.empty]
    if not tables:
        return _empty_stats()
    table = pd.concat(tables, ignore_index=True)
    for column in ("layer", "family", "stat"):
        table[column] = table[column].astype(str)
    if families is not None:
        table = table[table["family"].isin(families)].reset_index(drop=True)
    return table


def study(name: str, families: tuple[str, ...] | None = None) -> StudyData:
    """A study's finished trial runs and their statistics, found through the `study` tag (no Optuna storage needed).

    Trial runs that never finished (RUNNING, KILLED, FAILED) and runs whose statistics cannot be read are
    left out and listed in `skipped`, so that one bad run spoils no figure.
    """
    everything = runs(name, role=None)
    parent = everything.loc[everything.get("role", pd.Series(dtype=str)) == "parent", "run_id"]
    trials = everything[everything["role"] == "trial"] if "role" in everything else everything
    unfinished = trials["status"] != "FINISHED" if "status" in trials else pd.Series(False, index=trials.index)
    skipped = {
        row["run_id"]: f"status {row['status']}"
        + (f" (outcome {row['outcome']})" if pd.notna(row.get("outcome")) else "")
        for row in trials[unfinished].to_dict("records")
    }
    trials = trials[~unfinished]
    table = stats(trials.reset_index(drop=True), families, skipped)
    trials = trials[~trials["run_id"].isin(skipped)].reset_index(drop=True)
    return StudyData(name, trials, table, parent.iloc[0] if len(parent) else None, skipped)


def layer_index(layer: str, depth: int | None = None) -> float:
    """Position of a layer from the input side: L007 → 7, out → depth (NaN for run-wide rows)."""
    if layer.startswith("L") and layer[1:].isdigit():
        return float(int(layer[1:]))
    if layer == "out":
        return float(depth) if depth is not None else np.inf
    return np.nan


def with_layer_index(table: pd.DataFrame) -> pd.DataFrame:
    """Add a numeric `layer_index` column (out = one past the last hidden layer of its run)."""
    table = table.copy()
    hidden = table["layer"].str.match(r"^L\d{3}$")
    index = pd.Series(np.nan, index=table.index)
    index[hidden] = table.loc[hidden, "layer"].str[1:].astype(int)
    depth = index.groupby(table["run_id"]).transform("max") + 1
    index[table["layer"] == "out"] = depth[table["layer"] == "out"]
    table["layer_index"] = index
    return table


def bptt_by_time(table: pd.DataFrame) -> pd.DataFrame:
    """The per-time-step rows of the `bptt` family with an integer `t` column."""
    rows = table[table["family"] == "bptt"].copy()
    rows["t"] = rows["stat"].map(time_of)
    return rows.dropna(subset=["t"]).astype({"t": int})


# -- invariance tests (experiments/invariance) ----------------------------------------------------


def invariance_invocation(run_id: str | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """(the invocation run's row, its zoo table) of `python -m experiments.invariance`: run `run_id`, or the newest
    invocation (study=invariance, role parent or worker) that logged a zoo table. LookupError when there is none.

    The zoo table has one row per tested model: dataset, model, run_id, reused, … (INVARIANCE_ZOO_ARTIFACT).
    """
    if run_id is not None:
        candidates = runs(run_ids=[run_id], role=None)
    else:
        candidates = runs(INVARIANCE, role=None)
        if "role" in candidates:
            candidates = candidates[candidates["role"].isin(["parent", "worker"])]
        candidates = candidates.sort_values("start_time", ascending=False) if len(candidates) else candidates
    for row in candidates.to_dict("records"):
        uri = row.get("artifact_uri") or MlflowClient().get_run(row["run_id"]).info.artifact_uri
        path = _artifact_file(row["run_id"], uri, INVARIANCE_ZOO_ARTIFACT)
        if path is not None:
            return pd.Series(row), pd.read_csv(path)
    where = f"run {run_id}" if run_id else f"any run tagged study={INVARIANCE!r}"
    raise LookupError(f"no invariance zoo table ({INVARIANCE_ZOO_ARTIFACT}) in {where} of this tracking store")


def invariance_metrics(run_frame: pd.DataFrame) -> pd.DataFrame:
    """Long table of every run's invariance numbers (INVARIANCE_ARTIFACT) with run_id: key, state, metric,
    stat, mode, shift, layer, stride, scale, value."""
    columns = ["run_id", "key", "state", "metric", "stat", "mode", "shift", "layer", "stride", "scale", "value"]
    if run_frame.empty:
        return pd.DataFrame(columns=columns)
    uris = (
        run_frame["artifact_uri"]
        if "artifact_uri" in run_frame
        else [MlflowClient().get_run(r).info.artifact_uri for r in run_frame["run_id"]]
    )
    with ThreadPoolExecutor(READ_THREADS) as pool:
        tables = [
            t
            for t, _ in pool.map(_read_one, run_frame["run_id"], uris, [INVARIANCE_ARTIFACT] * len(uris))
            if not t.empty
        ]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
