"""The interleaved overhead measurement: the probe runs in the "on" blocks only, exactly as its ratio assumes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmarks import train_overhead as bench
from gradprobe.recorder import STATS_ARTIFACT
from pipelines.config import RunConfig

# Seven whole blocks and one step: block 4 is the first "on" block with two timed neighbours.
STEPS = 7 * bench.BLOCK + 1


@pytest.mark.parametrize("log_every", [1, 10])
def test_interleaved_probes_the_on_blocks_only(tracking: str, tiny_cfg: RunConfig, tmp_path: Path,
                                                log_every: int) -> None:  # fmt: skip
    out = bench.interleaved(tiny_cfg.replace(max_steps=STEPS, log_every=log_every))

    assert out["outcome"] == "completed" and out["steps"] == STEPS
    assert out["blocks"] == 1 and math.isfinite(out["ratio"]) and out["ratio"] > 0
    path = MlflowClient().download_artifacts(out["run_id"], STATS_ARTIFACT, str(tmp_path))
    table = pd.read_parquet(path)
    recorded = sorted(table.loc[table.family == "grad", "step"].unique().tolist())
    # The second step of every "on" block and then every log_every-th; never a block's first step or an "off" block.
    expected = [s for s in range(STEPS) if (s // bench.BLOCK) % 2 == 0 and s % bench.BLOCK in range(1, bench.BLOCK, log_every)]
    assert recorded == expected
    # Each recorded step got its whole record: the weights' copy before the step for ΔW, the hooks for ∂loss/∂output.
    update = table[(table.family == "update") & (table.stat == "ratio")]
    backprop = table[table.family == "backprop"]
    assert sorted(update.step.unique().tolist()) == expected == sorted(backprop.step.unique().tolist())
    assert np.isfinite(update.value).all() and (update.value > 0).all()
    assert np.isfinite(backprop.value).all()
