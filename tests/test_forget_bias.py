"""forget_bias as a study dimension: the recurrent spec sweeps it.

The gradient-through-time figure tells its runs apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import figures
from gradprobe import keys as K
from studies.spec import load_spec


def _bptt_rows(run_id: str, norms: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": run_id,
            "step": 0,
            "family": "bptt",
            "layer": "L000",
            "stat": [K.time_stat(t) for t in range(len(norms))],
            "value": norms,
        }
    )


def test_the_figure_draws_each_forget_bias_in_its_own_line_style() -> None:
    """Three runs: an LSTM at forget_bias 1 and 0 and a GRU; one line each, the two LSTM styles and labels apart."""
    runs = pd.DataFrame(
        {"run_id": ["a", "b", "c"], "model": ["lstm", "lstm", "gru"], "forget_bias": ["1.0", "0.0", "1.0"]}
    )
    t = np.arange(10)
    stats = pd.concat([_bptt_rows("a", 0.9 ** (9 - t)), _bptt_rows("b", 0.5 ** (9 - t)), _bptt_rows("c", np.ones(10))])
    fig = figures.bptt(runs, stats)
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    by_end = {round(float(line.get_ydata()[0]), 12): line.get_linestyle() for line in ax.lines}
    assert by_end[round(0.9**9, 12)] == "-" and by_end[round(0.5**9, 12)] == "--"
    labels = {text.get_text() for legend in fig.legends for text in legend.get_texts()}
    assert labels == {"lstm, forget bias 1", "lstm, forget bias 0", "gru"}


def test_one_forget_bias_keeps_the_plain_cell_names() -> None:
    runs = pd.DataFrame({"run_id": ["a", "c"], "model": ["lstm", "gru"], "forget_bias": ["1.0", "1.0"]})
    stats = pd.concat([_bptt_rows("a", np.ones(4)), _bptt_rows("c", np.ones(4))])
    fig = figures.bptt(runs, stats)
    assert {text.get_text() for legend in fig.legends for text in legend.get_texts()} == {"lstm", "gru"}


def test_the_recurrent_study_sweeps_the_lstm_forget_bias() -> None:
    spec = load_spec("recurrent")
    values = {
        fields.get("forget_bias")
        for param in spec.space
        for fields in param.bundles.values()
        if fields.get("model") == "lstm"
    }
    assert {0.0, 1.0} <= values
