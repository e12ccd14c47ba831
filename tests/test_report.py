"""The report end to end: index.html with every PNG it wrote, summary.csv with verdicts, artifacts on the parent run."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, SYNTHETIC_STUDY, pointed_at
from mlflow.tracking import MlflowClient

from analysis import figures, report, theory

VERDICTS = {"vanishing", "exploding", "healthy", "unknown"}


@pytest.fixture(scope="module")
def built(synthetic_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html of the synthetic study's report, built once for the module (a full build takes seconds)."""
    with pointed_at(synthetic_store):
        return report.build(SYNTHETIC_STUDY, tmp_path_factory.mktemp("reports"))


def images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def artifacts(run_id: str, path: str = report.ARTIFACT_PATH) -> set[str]:
    return {Path(a.path).name for a in MlflowClient().list_artifacts(run_id, path)}


@pytest.mark.slow
def test_page_shows_every_png_it_wrote_with_captions_and_rules(built: Path) -> None:
    assert built.name == "index.html" and built.parent.name == SYNTHETIC_STUDY
    page = built.read_text(encoding="utf-8")
    pngs = {p.name for p in built.parent.glob("*.png")}
    general = {f"{name}.png" for name in figures.FIGURES if name not in figures.TASK_FIGURES}
    assert set(images(page)) == pngs == general  # this study has every general case
    assert len(images(page)) == len(pngs) == page.count('<section class="fig">')  # each beside its caption
    assert f"<code>{SYNTHETIC_STUDY}</code>" in page and "Generated " in page
    assert "vanishing if g &lt; 0.95, exploding if g &gt; 1.05" in page  # the verdict threshold, stated
    assert "stayed at chance" in page  # the training-outcome rule of the phase diagram
    assert page.count("<tr") == 1 + 6  # the table of runs: header and one row per trial


@pytest.mark.slow
def test_summary_has_config_outcome_verdict_and_gains(built: Path) -> None:
    table = pd.read_csv(built.parent / "summary.csv")
    assert len(table) == 6 and table["run_id"].is_unique and table["trial"].tolist() == list(range(6))
    assert {"run_id", "trial", "model", "activation", "depth", "init", "optimizer", "clip", "outcome", "training",
            "measured_gain", "predicted_gain", "theory", "verdict", "verdict_tolerance"} <= set(table.columns)  # fmt: skip
    assert set(table["verdict"]) <= VERDICTS and (table["verdict_tolerance"] == 0.05).all()
    for row in table.itertuples():
        if math.isfinite(row.measured_gain):
            assert row.verdict == theory.verdict(row.measured_gain, row.verdict_tolerance)
    assert table.loc[table["model"] == "rnn", "verdict"].eq("unknown").all()  # one layer: no gain
    assert table.loc[table["outcome"] == "diverged", "training"].eq("diverged").all()


@pytest.mark.slow
def test_report_folder_is_logged_to_the_parent_run(built: Path, synthetic_store: str) -> None:
    with pointed_at(synthetic_store):
        client = MlflowClient()
        parent = client.search_runs(["0"], f"tags.study = '{SYNTHETIC_STUDY}' and tags.role = 'parent'")
        assert {p.name for p in built.parent.iterdir()} <= artifacts(parent[0].info.run_id)


def test_partial_study_still_makes_a_report(tracking: str, tmp_path: Path) -> None:
    client = MlflowClient()
    parent = client.create_run("0", tags={"study": "partial", "role": "parent"}).info.run_id
    unfinished = client.create_run("0", tags={"study": "partial", "role": "trial", "trial": "0",
                                              "mlflow.parentRunId": parent, "outcome": "completed"}).info.run_id  # fmt: skip
    index = report.build("partial", tmp_path / "reports")
    page = index.read_text(encoding="utf-8")
    assert images(page) == [] and "Not drawn" in page
    assert "Skipped runs" in page and unfinished in page  # it never finished (RUNNING): named, not drawn
    assert len(pd.read_csv(index.parent / "summary.csv")) == 0
    assert {"index.html", "summary.csv"} <= artifacts(parent)


def test_cli_exits_2_with_one_line_for_an_unknown_study(tracking: str, tmp_path: Path, capsys) -> None:
    assert report.main(["--study", "no-such-study", "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "study='no-such-study'" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_rebuilds_into_out_dir_without_stale_figures(synthetic_store: str, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "r" / SYNTHETIC_STUDY
    folder.mkdir(parents=True)
    (folder / "old_figure.png").write_bytes(b"stale")
    with pointed_at(synthetic_store):
        assert report.main(["--study", SYNTHETIC_STUDY, "--out-dir", str(tmp_path / "r")]) == 0
    assert str(folder / "index.html") in capsys.readouterr().out
    assert not (folder / "old_figure.png").exists() and "old_figure" not in (folder / "index.html").read_text()


def test_mlproject_report_entry_point() -> None:
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["report"]
    assert entry["parameters"] == {"study": {"type": "string", "default": "default"},
                                   "out_dir": {"type": "string", "default": "reports"}}  # fmt: skip
    assert entry["command"] == "python -m analysis.report --study {study} --out-dir {out_dir}"


@pytest.mark.slow
def test_command_line_process_exits_2(store_uri: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store_uri}
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--study", "nope"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no MLflow runs")


@pytest.mark.slow
def test_the_runner_builds_and_logs_the_report_at_the_end_of_a_study(tracking: str, tmp_path: Path) -> None:
    from studies.runner import run_study

    spec = tmp_path / "spec.yaml"
    spec.write_text("""
name: reported
fixed: {depth: 3, width: 8, max_steps: 4, log_every: 1, batch_size: 32}
space:
  activation: [relu, tanh]
sampler: {type: grid}
objective: {metric: val/acc}
n_trials: 2
""")
    run_study(str(spec), storage=str(tmp_path / "optuna.journal"))
    index = tmp_path / "reports" / "reported" / "index.html"  # the runner's default out_dir, in its cwd
    assert index.exists() and "backprop_by_layer.png" in images(index.read_text(encoding="utf-8"))
    parent = MlflowClient().search_runs(["0"], "tags.study = 'reported' and tags.role = 'parent'")[0]
    assert {"index.html", "summary.csv", "backprop_by_layer.png"} <= artifacts(parent.info.run_id)
