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
    """The files of the page's figures; each is inline (MLflow's preview resolves no relative src), checked here."""
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" data-file="([^"]+)"', page)
    assert len(found) == page.count("<img ")
    return [name for _, name in found]


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
def test_page_inlines_each_png_and_links_each_run_id_to_its_run(built: Path, synthetic_store: str) -> None:
    import base64

    page = built.read_text(encoding="utf-8")
    for data, name in re.findall(r'<img src="data:image/png;base64,([^"]+)" data-file="([^"]+)"', page):
        assert base64.b64decode(data) == (built.parent / name).read_bytes()
    with pointed_at(synthetic_store):
        client = MlflowClient()
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.study = '{SYNTHETIC_STUDY}' and tags.role = 'trial'",
        )
    links = re.findall(r'<a href="([^"]+)" target="_blank">([0-9a-f]{8})</a>', page)
    expected = {
        (f"{report.DEFAULT_UI}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}", r.info.run_id[:8])
        for r in runs
    }
    assert len(runs) == 6 and set(links) == expected


@pytest.mark.slow
def test_summary_has_config_outcome_verdict_and_gains(built: Path) -> None:
    table = pd.read_csv(built.parent / "summary.csv")
    assert len(table) == 6 and table["run_id"].is_unique and table["trial"].tolist() == list(range(6))
    assert {
        "run_id",
        "trial",
        "model",
        "activation",
        "depth",
        "init",
        "optimizer",
        "clip",
        "outcome",
        "training",
        "measured_gain",
        "predicted_gain",
        "theory",
        "verdict",
        "verdict_tolerance",
    } <= set(table.columns)
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
    unfinished = client.create_run(
        "0",
        tags={"study": "partial", "role": "trial", "trial": "0", "mlflow.parentRunId": parent, "outcome": "completed"},
    ).info.run_id
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
    stale = sorted(figures.TASK_FIGURES)[0]  # a figure an earlier build drew that this study has no data for
    (folder / f"{stale}.png").write_bytes(b"stale")
    (folder / "old_figure.png").write_bytes(b"not the report's")  # not a name the report writes: kept
    with pointed_at(synthetic_store):
        assert report.main(["--study", SYNTHETIC_STUDY, "--out-dir", str(tmp_path / "r")]) == 0
    assert str(folder / "index.html") in capsys.readouterr().out
    page = (folder / "index.html").read_text()
    assert not (folder / f"{stale}.png").exists() and f"{stale}.png" not in page
    assert (folder / "old_figure.png").read_bytes() == b"not the report's" and "old_figure" not in page


@pytest.mark.slow
def test_under_mlflow_run_the_launcher_run_is_tagged_and_points_to_the_report(
    synthetic_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pointed_at(synthetic_store):
        client = MlflowClient()
        own = client.create_run("0").info.run_id  # as `mlflow run . -e report` makes it
        monkeypatch.setenv("MLFLOW_RUN_ID", own)
        assert report.main(["--study", SYNTHETIC_STUDY, "--out-dir", str(tmp_path / "r")]) == 0
        run = client.get_run(own)
        parent = client.search_runs(
            [run.info.experiment_id], f"tags.study = '{SYNTHETIC_STUDY}' and tags.role = 'parent'"
        )
    assert run.data.tags["study"] == SYNTHETIC_STUDY and run.data.tags["role"] == "report"
    assert run.info.status == "FINISHED" and run.info.run_name == f"report of {SYNTHETIC_STUDY}"
    assert f"runs/{parent[0].info.run_id})" in run.data.tags["mlflow.note.content"]


def test_mlproject_report_entry_point() -> None:
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["report"]
    assert entry["parameters"] == {
        "study": {"type": "string", "default": "default"},
        "out_dir": {"type": "string", "default": "reports"},
    }
    assert entry["command"] == "python -m analysis.report --study {study} --out-dir {out_dir}"


@pytest.mark.slow
def test_command_line_process_exits_2(store_uri: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store_uri}
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--study", "nope"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    client = MlflowClient()  # the study's runs are in its own experiment
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.study = 'reported' and tags.role = 'parent'"
    )[0]
    assert {"index.html", "summary.csv", "backprop_by_layer.png"} <= artifacts(parent.info.run_id)


def test_gan_study_report_states_its_objective_rules_and_why_figures_are_left_out(
    tracking: str, tmp_path: Path
) -> None:
    client = MlflowClient()
    parent = client.create_run("0", tags={"study": "ring", "role": "parent"}).info.run_id
    client.log_param(parent, "study_objective", "maximize val/modes")  # as studies.runner logs it
    for trial, (loss, modes) in enumerate((("gan_saturating", 0.0), ("gan_nonsaturating", 6.0))):
        child = client.create_run(
            "0",
            tags={
                "study": "ring",
                "role": "trial",
                "trial": str(trial),
                "mlflow.parentRunId": parent,
                "outcome": "completed",
            },
        ).info.run_id
        for name, value in {"loss": loss, "dataset": "gmm", "model": "mlp", "depth": "3", "optimizer": "adam"}.items():
            client.log_param(child, name, value)
        client.log_metric(child, "val/modes", modes)
        stats = tmp_path / f"stats{trial}" / "gradient_stats.parquet"  # the recorder's table: one loss row
        stats.parent.mkdir()
        pd.DataFrame({"step": [0], "layer": [""], "family": ["train"], "stat": ["loss"], "value": [1.0]}).to_parquet(
            stats
        )
        client.log_artifact(child, str(stats), artifact_path="stats")
        client.set_terminated(child)  # a run that never finished, or has no statistics, is skipped by the report
    index = report.build("ring", tmp_path / "reports")
    page = index.read_text(encoding="utf-8")
    assert "Objective: maximize <code>val/modes</code>" in page
    assert "val/modes ≥ 1" in page and "D(G(z)) for the saturating loss" in page  # the GAN rules, stated
    table = pd.read_csv(index.parent / "summary.csv")
    assert table["training"].tolist() == ["vanished", "trained"] and set(table["outcome"]) == {"completed"}
    assert "Trainability phase diagram: this study has no supervised feed-forward" in page
    assert (
        "Optimizers: final result and cost: it compares optimizer setting, which this study's 2 runs do not "
        "vary (optimizer setting = adam)"
    ) in page


def test_the_runs_table_escapes_what_the_store_holds() -> None:
    """Cells and headers come from runs' params and tags (a shared store): markup in them is shown, not run."""
    table = pd.DataFrame(
        {"run_id": ["a" * 32, "<b>"], "<i>metric": [0.5, 1.0], "activation": ["<script>x</script>", "relu"]}
    )
    links = report.ui_links(pd.DataFrame({"run_id": ["a" * 32, "<b>"], "experiment_id": ["1", "1"]}), "http://h")
    page = report._table_html(table, links)
    assert "<script>" not in page and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and '<a href="http://h/#/experiments/1/runs/' + "a" * 32 + '"' in page
    assert links == {"a" * 32: "http://h/#/experiments/1/runs/" + "a" * 32}  # no link for a malformed id
