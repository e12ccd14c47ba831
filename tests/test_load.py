"""The loader on real stores: a study trained by the runner, a partial study, an unknown study."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import REAL_STUDY, pointed_at
from mlflow.tracking import MlflowClient

from analysis import load
from pipelines.config import field_names

STATS_COLUMNS = ["run_id", "step", "layer", "family", "stat", "value"]


@pytest.fixture(scope="module")
def real(real_store: str) -> load.StudyData:
    with pointed_at(real_store):
        return load.study(REAL_STUDY)


@pytest.mark.slow  # the session's real study is trained by the first test that needs it (about 10 s)
def test_one_row_per_trial_with_tags_and_the_parent(real: load.StudyData, real_store: str) -> None:
    runs = real.runs
    assert len(runs) == 6 and runs["run_id"].is_unique
    assert runs["trial"].tolist() == [0, 1, 2, 3, 4, 5]  # sorted by trial, Int64
    assert set(runs["study"]) == {REAL_STUDY} and set(runs["role"]) == {"trial"}
    assert set(runs["outcome"]) == {"completed", "diverged"}
    assert (runs["parent_run_id"] == real.parent_run_id).all()
    parent = MlflowClient(real_store).get_run(real.parent_run_id)
    assert parent.data.tags["role"] == "parent" and parent.data.params["study_objective"] == "minimize val/loss"


@pytest.mark.slow
def test_params_are_columns_typed_by_value(real: load.StudyData) -> None:
    runs = real.runs
    assert set(field_names()) <= set(runs.columns)
    # Integers stay integers although the parent run (read in the same search) has no such params.
    for column in ("depth", "width", "batch_size", "max_steps", "seq_len"):
        assert pd.api.types.is_integer_dtype(runs[column]), column
    for column in ("lr", "clip_threshold", "init_gain"):
        assert pd.api.types.is_float_dtype(runs[column]), column
    assert set(runs["activation"]) <= {"relu", "tanh", "sigmoid"}
    diverged = runs[runs["outcome"] == "diverged"]
    assert pd.api.types.is_integer_dtype(runs["diverged_step"]) and diverged["diverged_step"].notna().all()
    assert "metrics.val/loss" in runs and "metrics.grad/l2/L000" in runs


@pytest.mark.slow
def test_stats_are_long_with_run_ids(real: load.StudyData) -> None:
    stats = real.stats
    assert list(stats.columns) == STATS_COLUMNS
    assert set(stats["run_id"]) == set(real.runs["run_id"])
    assert {"grad", "backprop", "act", "update", "train", "val", "time", "bptt"} <= set(stats["family"])
    assert (stats.groupby("run_id")["step"].min() == 0).all()  # step 0 is at initialization
    row = stats[(stats["family"] == "grad") & (stats["layer"] == "") & (stats["stat"] == "global_l2")]
    assert len(row) == len(row.drop_duplicates(["run_id", "step"]))


@pytest.mark.slow
def test_layer_index_and_bptt_helpers_on_real_rows(real: load.StudyData) -> None:
    indexed = load.with_layer_index(real.stats[real.stats["family"] == "backprop"])
    depth = real.runs.set_index("run_id")["depth"]
    out = indexed[indexed["layer"] == "out"]
    assert (out["layer_index"].to_numpy() == depth.loc[out["run_id"]].to_numpy()).all()
    gru = real.runs.loc[real.runs["model"] == "gru"].iloc[0]
    bptt = load.bptt_by_time(real.stats[real.stats["run_id"] == gru["run_id"]])
    assert sorted(bptt["t"].unique()) == list(range(gru["seq_len"]))
    assert load.layer_index("L007") == 7 and load.layer_index("out", 4) == 4


def test_partial_and_unknown_studies(tracking: str) -> None:
    client = MlflowClient()
    parent = client.create_run("0", tags={"study": "partial", "role": "parent"}).info.run_id
    # A trial that crashed before its parquet table was written: a row in runs, no statistics.
    crashed = client.create_run(
        "0", tags={"study": "partial", "role": "trial", "trial": "0", "mlflow.parentRunId": parent}
    ).info.run_id
    client.log_param(crashed, "depth", "3")
    data = load.study("partial")
    assert data.parent_run_id == parent and data.runs.empty  # it never finished: skipped, and named
    assert list(data.skipped) == [crashed] and data.skipped[crashed] == "status RUNNING"
    assert list(data.stats.columns) == STATS_COLUMNS and data.stats.empty
    nothing = load.study("no-such-study")
    assert nothing.runs.empty and nothing.stats.empty and nothing.parent_run_id is None
    assert list(nothing.stats.columns) == STATS_COLUMNS


def test_families_filter(synthetic_store: str) -> None:
    with pointed_at(synthetic_store):
        data = load.study("synthetic", families=("backprop", "train"))
    assert set(data.stats["family"]) == {"backprop", "train"}
    assert len(data.runs) == 6
