"""Which runs and values a figure draws, shared by the themes: non-recurrent runs, architecture order, the objective."""

from __future__ import annotations

import pandas as pd

from analysis.summary import RECURRENT, arch, select


def non_recurrent(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of feed-forward models."""
    return runs[~runs["model"].isin(RECURRENT)]


def arch_order(runs: pd.DataFrame) -> list[str]:
    """Architectures present, plain first, then batch norm, then residual ones, then the rest."""
    names = {arch(r) for r in runs.to_dict("records")}
    rank = {"plain": 0, "batch norm": 1, "layer norm": 2}
    return sorted(names, key=lambda a: (rank.get(a, 3 if a.startswith("residual") else 4), a))


def objective_values(runs: pd.DataFrame, stats: pd.DataFrame, objective: str) -> pd.Series:
    """The objective's last value by run_id (the run's MLflow metric, else the parquet table's last row)."""
    column = f"metrics.{objective}"
    if column in runs:
        return pd.Series(runs[column].to_numpy(float), index=runs["run_id"])
    family, _, stat = objective.partition("/")
    last = select(stats, family, stat).sort_values("step").groupby("run_id")["value"].last()
    return last.reindex(runs["run_id"])
