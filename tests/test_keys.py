"""Metric-key contract: per-layer keys `<family>/<stat>/<layer>`, the previous `<family>/<layer>/<stat>` still read."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import load, summary
from gradprobe import keys as K
from gradprobe.recorder import Recorder

LAYERS = ["L000", "L001", "L012", "L1234", "out"]
STATS = [*K.GRAD_STATS, *K.ACT_STATS, *K.BPTT_SUMMARY, "ratio", "t0000", "t0417", "forget_mean", "update_saturation"]
FAMILIES = ["grad", "backprop", "act", "update", "bptt", "gate"]


@pytest.mark.parametrize("family, layer, stat", itertools.product(FAMILIES, LAYERS, STATS))
def test_per_layer_keys_put_the_stat_before_the_layer_and_parse_back(family: str, layer: str, stat: str) -> None:
    built = K.key(family, layer, stat)
    assert built == "/".join([family, stat, layer])  # MLflow's chart section = everything before the last '/'
    assert K.parse(built) == (family, layer, stat)
    assert K.parse("/".join([family, layer, stat])) == (family, layer, stat)  # the previous form, same meaning
    assert K.per_layer(built)


@pytest.mark.parametrize("metric_key", [K.TRAIN_LOSS, K.GLOBAL_NORM, K.GLOBAL_NORM_CLIPPED, K.ELAPSED, *K.VAL_METRICS])
def test_run_wide_keys_have_no_layer(metric_key: str) -> None:
    family, stat = metric_key.split("/")
    assert K.key(family, None, stat) == metric_key
    assert K.parse(metric_key) == (family, "", stat) and not K.per_layer(metric_key)


@pytest.mark.parametrize("bad", ["loss", "grad/L000", "grad/out", "grad/l2/rms", "grad/L000/L001", "a/b/c/d", ""])
def test_keys_outside_the_contract_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a metric key"):
        K.parse(bad)


def test_no_stat_name_looks_like_a_layer() -> None:
    """What tells the two per-layer forms apart: a stat name never has the form of a layer id."""
    assert not any(K.is_layer(s) for s in STATS)
    assert all(K.is_layer(layer) for layer in LAYERS)


def test_headline_keys_form_the_first_chart_section() -> None:
    """The copies sort before every other section both ways the MLflow UI sorts (code units and localeCompare)."""
    copies = [K.headline_key(k) for k in K.HEADLINE_KEYS]
    assert copies[0] == "0-headline/train_loss" and K.headline_key(K.VAL_ACC) == "0-headline/val_acc"
    assert K.headline_key(K.key("grad", "L000", "l2")) is None and K.headline_key(K.ELAPSED) is None
    sections = {
        k.rsplit("/", 1)[0] for k in [K.key(f, "L000", s) for f in FAMILIES for s in STATS] + list(K.VAL_METRICS)
    }
    headline = {c.rsplit("/", 1)[0] for c in copies}
    assert headline == {K.HEADLINE}
    assert all(K.HEADLINE < s for s in sections)  # JavaScript's default sort compares UTF-16 code units
    assert K.HEADLINE[0].isdigit() and all(s[0].isalpha() for s in sections)  # localeCompare: digits before letters


def _table(metric_keys: list[str], tmp_path, run_name: str) -> str:
    """A run whose parquet table the recorder wrote from `metric_keys` (values made from the step and position)."""
    client = MlflowClient()
    run_id = client.create_run("0", run_name=run_name).info.run_id
    recorder = Recorder(client, run_id, expected_records=3, metric_points=0)
    for step in range(3):
        recorder.record(step, metric_keys, [step * 100.0 + i for i in range(len(metric_keys))])
    recorder.close()
    client.set_terminated(run_id)
    return run_id


def test_analysis_reads_a_previous_form_run_like_a_new_one(tracking, tmp_path) -> None:
    """A run recorded with `<family>/<layer>/<stat>` keys gives analysis the same table and summaries."""
    parts = [("grad", layer, stat) for layer in ("L000", "L001", "out") for stat in ("l2", "rms")]
    parts += [("backprop", layer, "l2") for layer in ("L000", "L001", "out")] + [("act", "L000", "std")]
    old_keys = ["train/loss", "grad/global_l2"] + ["/".join(p) for p in parts]
    new_keys = ["train/loss", "grad/global_l2"] + ["/".join((f, s, layer)) for f, layer, s in parts]
    old, new = _table(old_keys, tmp_path, "old"), _table(new_keys, tmp_path, "new")
    runs = load.runs(run_ids=[old, new], role=None)
    table = load.stats(runs)
    by_run = {
        r: t.drop(columns="run_id").sort_values(["step", "family", "layer", "stat"]).reset_index(drop=True)
        for r, t in table.groupby("run_id")
    }
    pd.testing.assert_frame_equal(by_run[old], by_run[new])
    # Hand-written: grad/L001/rms is the 6th key (index 5 of the per-layer part, after the 2 run-wide ones).
    row = by_run[old][
        (by_run[old].step == 2)
        & (by_run[old].family == "grad")
        & (by_run[old].layer == "L001")
        & (by_run[old].stat == "rms")
    ]
    assert row.value.tolist() == [200.0 + 2 + 3]
    profile = {
        r: summary.step0_backprop(table[table.run_id == r]).drop(columns="run_id").reset_index(drop=True)
        for r in (old, new)
    }  # what the report's backprop figure reads
    assert profile[old]["layer"].tolist() == ["L000", "L001"]
    pd.testing.assert_frame_equal(profile[old], profile[new])
