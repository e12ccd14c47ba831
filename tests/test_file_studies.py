"""The MNIST and CIFAR-10 study specs run end to end on tiny files in the real formats.

They say clearly when the files are absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_data import _write_cifar, _write_mnist

from studies import run as study_cli

TINY = ["--set", "max_steps=3", "--set", "log_every=1", "--set", "width=4", "--set", "batch_size=4"]


@pytest.mark.parametrize(
    ("spec", "write", "dataset"), [("mnist", _write_mnist, "mnist"), ("cifar10", _write_cifar, "cifar10")]
)
def test_file_based_study_trains_on_tiny_files(tracking: str, tmp_path: Path, spec: str, write, dataset: str) -> None:
    data_dir = tmp_path / "files"
    write(data_dir) if dataset == "cifar10" else write(data_dir, compress=True)
    argv = [
        "--spec",
        spec,
        "--n-trials",
        "2",
        "--workers",
        "1",
        "--no-report",
        "--storage",
        str(tmp_path / "optuna.journal"),
        "--set",
        f"data_dir={data_dir}",
        *TINY,
    ]
    assert study_cli.main(argv) == 0
    client = MlflowClient(tracking)
    trials = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.study = '{spec}' and tags.role = 'trial'",
    )
    assert len(trials) == 2
    for run in trials:
        assert run.data.params["dataset"] == dataset and run.data.params["data_dir"] == str(data_dir)
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
        assert "grad/l2/L000" in run.data.metrics and "val/acc" in run.data.metrics


@pytest.mark.parametrize("spec", ["mnist", "cifar10"])
def test_missing_files_stop_the_study_before_anything_is_written(
    tmp_path: Path, monkeypatch, spec: str, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = study_cli.main(["--spec", spec, "--set", f"data_dir={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: dataset") and "README" in err and "nowhere" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
