"""The study report: every figure that has data, a per-run summary table and an HTML page, \
logged to the study's parent run.

    python -m analysis.report --study vanishing [--out-dir reports]
    mlflow run . -e report -P study=vanishing --env-manager local

Writes reports/<study>/index.html, the PNGs beside it and summary.csv, then logs the folder as the
artifacts `report/` of the study's parent MLflow run. Reads MLflow only through analysis.load.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import html
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import figures, load, summary
from analysis.figures.style import PAGE_STYLE
from analysis.load import StudyData
from common import liveness
from common.cli import OneLineParser
from common.errors import ConfigError
from common.links import DEFAULT_UI, run_link, ui_base  # noqa: F401 (DEFAULT_UI: part of this module's API)
from common.names import STUDY_NAME_RULE, valid_study_name
from common.preflight import check_tracking

ARTIFACT_PATH = "report"
T = summary.VERDICT_TOLERANCE
VERDICT_RULE = (
    f"verdict from the measured per-layer gain g at step 0 (theory.verdict): vanishing if g < {1 - T:g}, "
    f"exploding if g > {1 + T:g}, healthy otherwise (tolerance {T:g}); unknown when fewer than two hidden "
    f"layers were measured. A GAN's verdict is about its loss instead: the generator loss's gradient "
    f"factor ∂L_G/∂logit, D(G(z)) for the saturating loss and 1 − D(G(z)) for the non-saturating one "
    f"(gan/d_fake, median over logged steps), is vanishing below {summary.GAN_VANISHING:g} (an order of "
    f"magnitude below its maximum 1), healthy otherwise"
)


class NoRuns(LookupError):
    """No MLflow run carries the tag study=<name>."""


class BadStudyName(ValueError):
    """A study name (command line or a run's tag) that the study runner would not accept: never a path."""


def objective_of(data: StudyData) -> tuple[str, str]:
    """(metric, direction) of the study's objective, from its parent run's `objective` param ('maximize val/acc')."""
    if data.parent_run_id is not None:
        parent = load.runs(run_ids=[data.parent_run_id], role=None)
        # studies.runner logs it as `study_objective`; `objective` is what older parent runs carry.
        column = next((c for c in ("study_objective", "objective") if c in parent), None)
        text = str(parent[column].iloc[0]) if column else ""
        direction, _, metric = text.partition(" ")
        if direction in ("maximize", "minimize") and metric:
            return metric, direction
    if "metrics.val/acc" in data.runs:
        return "val/acc", "maximize"
    return "val/loss", "minimize"


def summary_table(runs: pd.DataFrame, stats: pd.DataFrame, objective: str = "val/acc") -> pd.DataFrame:
    """One row per run: ids, config, outcome, training result, objective, measured/predicted gain, verdict."""
    runs = summary.annotate(runs, stats)
    ids = [c for c in ("run_id", "trial") if c in runs]
    config = [c for c in summary.CONFIG_COLUMNS if c in runs]
    tags = [c for c in ("outcome", "diverged_step") if c in runs]
    metric = f"metrics.{objective}"
    table = runs[[*ids, *config, *tags, "training"]].copy()
    table[objective] = runs[metric].to_numpy() if metric in runs else float("nan")
    return table.join(runs[list(summary.SUMMARY_COLUMNS[:-1])])


def draw_one(name: str, data: StudyData, folder: Path, objective: tuple[str, str]) -> Path | str:
    """Draw one registered figure into folder/<name>.png; or why not (its needs unmet, or no data)."""
    entry = figures.REGISTRY[name]
    reason = figures.unmet(entry.needs, data.runs)
    if reason is not None:
        return reason
    extra = {"objective": objective[0], "direction": objective[1]} if entry.takes_objective else {}
    fig = entry.draw(data.runs, data.stats, **extra)
    return figures.lacks(entry.needs) if fig is None else figures.save_figure(fig, folder / f"{name}.png")


def render_figures(data: StudyData, folder: Path, objective: tuple[str, str]) -> dict[str, Path | str]:
    """Draw every figure that can say something into `folder`; name → PNG path, or the reason it is not drawn."""
    return {name: draw_one(name, data, folder, objective) for name in figures.REGISTRY}


def _table_html(table: pd.DataFrame, links: dict[str, str] | None = None) -> str:
    shown = table.drop(columns=["verdict_tolerance"], errors="ignore")
    links = links or {}
    # The short id links to the run in the MLflow UI; every other cell and header is escaped (a store is untrusted).
    cells = {c: shown[c].map(_escaped) for c in shown.columns if c != "run_id"}
    cells["run_id"] = [
        f'<a href="{html.escape(links[i])}" target="_blank">{html.escape(i[:8])}</a>'
        if i in links
        else html.escape(str(i)[:8])
        for i in shown["run_id"]
    ]
    escaped = pd.DataFrame({html.escape(str(c)): cells[c] for c in shown.columns})
    return escaped.to_html(index=False, classes="runs", border=0, escape=False)


def _escaped(value: object) -> str:
    return "" if pd.isna(value) else html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))


def ui_links(runs: pd.DataFrame, ui_base: str) -> dict[str, str]:
    """run id → its page in the MLflow UI at `ui_base` (hex run and experiment ids only: they come from a store)."""
    ok = runs["run_id"].astype(str).str.fullmatch(r"[0-9a-f]{32}") & runs["experiment_id"].astype(str).str.fullmatch(
        r"\d+"
    )
    return {r: f"{ui_base}/{run_link(e, r)}" for r, e in zip(runs.loc[ok, "run_id"], runs.loc[ok, "experiment_id"])}


def _data_uri(png: Path) -> str:
    """The PNG inline: MLflow previews index.html from a blob: URL in a sandbox, where no relative src resolves."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _counts(table: pd.DataFrame, column: str) -> str:
    if column not in table or table.empty:
        return "none"
    return ", ".join(f"{k}: {v}" for k, v in table[column].value_counts().items())


def _gain_notes(table: pd.DataFrame) -> str:
    """The sentence saying how many runs' gains leave layers out (theory.measure_gain), or ''."""
    notes = table.get("gain_note", pd.Series(dtype=object)).fillna("")
    count = int((notes != "").sum())
    if not count:
        return ""
    runs = "run's gain leaves" if count == 1 else "runs' gains leave"
    return (
        f"Gains span the hidden layers whose step-0 norm is positive and finite: {count} {runs} layers out "
        f"(column gain_note, e.g. {notes[notes != ''].iloc[0]}). "
    )


def write_html(
    study: str,
    table: pd.DataFrame,
    written: dict[str, Path | str],
    objective: tuple[str, str],
    path: Path,
    links: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
) -> Path:
    """The self-contained index.html: header, rules, every figure beside its caption, the table of runs."""
    sections, missing = [], []
    for name, png in written.items():
        title = figures.REGISTRY[name].title
        caption = figures.REGISTRY[name].caption.replace("{rule}", html.escape(summary.OUTCOME_RULE))
        if not isinstance(png, Path):
            missing.append(f"<li>{title}: {html.escape(png, quote=False)}.</li>")
            continue
        sections.append(
            f'<section class="fig"><img src="{_data_uri(png)}" data-file="{png.name}" alt="{title}">'
            f"<div><h2>{title}</h2><p>{caption}</p></div></section>"
        )
    not_drawn = f"<h2>Not drawn</h2><ul>{''.join(missing)}</ul>" if missing else ""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(study)}: gradient report</title>
{PAGE_STYLE}</head><body>
<h1>Gradient report: study <code>{html.escape(study)}</code></h1>
<p>Generated {now} from MLflow (runs tagged <code>study={html.escape(study)}</code>). {len(table)} trial runs;
outcome: {_counts(table, "outcome")}; training: {_counts(table, "training")}; verdict:
{_counts(table, "verdict")}. Objective: {objective[1]} <code>{objective[0]}</code>.</p>
<p class="rule"><b>Verdict</b>: {html.escape(VERDICT_RULE)}.<br><b>Training outcome</b>:
{html.escape(summary.OUTCOME_RULE)}.<br>{html.escape(_gain_notes(table))}\
The per-run table is also in <a href="summary.csv">summary.csv</a>.</p>
{_skipped_html(skipped or {})}
{"".join(sections)}
{not_drawn}
<h2>Runs</h2>
{_table_html(table, links)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def remove_own_outputs(folder: Path, figure_names: Iterable[str]) -> None:
    """Remove what an earlier build wrote into `folder` (its figures, summary.csv, index.html), by name only:
    anything else there is someone else's, and a link in place of an output is removed, not followed."""
    for name in [*(f"{figure}.png" for figure in figure_names), "summary.csv", "index.html"]:
        (folder / name).unlink(missing_ok=True)


def _skipped_html(skipped: dict[str, str]) -> str:
    """The "Skipped runs" list: runs left out of the report, each with the reason."""
    if not skipped:
        return ""
    items = "".join(f"<li><code>{html.escape(r)}</code>: {html.escape(why)}</li>" for r, why in skipped.items())
    return f"<h2>Skipped runs</h2><p>Left out of every figure and table below:</p><ul>{items}</ul>"


def write_report(data: StudyData, folder: Path) -> Path:
    """Figures, summary.csv and index.html of one study into `folder` (what an earlier build wrote removed first)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_own_outputs(folder, figures.REGISTRY)  # index.html must list exactly the figures this build drew
    objective = objective_of(data)
    data = dataclasses.replace(data, runs=summary.annotate(data.runs, data.stats))  # gains computed once
    table = summary_table(data.runs, data.stats, objective[0])
    table.to_csv(folder / "summary.csv", index=False)
    written = render_figures(data, folder, objective)
    links = ui_links(data.runs, ui_base()) if "experiment_id" in data.runs else {}
    return write_html(data.name, table, written, objective, folder / "index.html", links, data.skipped)


def log_report(folder: Path, parent_run_id: str | None) -> bool:
    """Log the report folder as artifacts `report/` of the study's parent run; False when there is no parent."""
    if parent_run_id is None:
        print("warning: the study has no parent run; the report is not logged to MLflow", file=sys.stderr)
        return False
    MlflowClient().log_artifacts(parent_run_id, str(folder), artifact_path=ARTIFACT_PATH)
    return True


def report_folder(study: str, out_dir: str | Path) -> Path:
    """out_dir/<study>, for a name the study runner accepts (BadStudyName otherwise) that is no link out of out_dir."""
    if not valid_study_name(study):
        raise BadStudyName(f"study={study!r} is not allowed; allowed: {STUDY_NAME_RULE}")
    folder = Path(out_dir) / study
    if folder.is_symlink():
        raise BadStudyName(f"study={study!r} is not allowed; allowed: a name whose {folder} is a folder, not a link")
    return folder


def build(study: str, out_dir: str | Path = "reports") -> Path:
    """Regenerate the report of `study` into out_dir/<study>/ and log it to the parent run; returns index.html."""
    folder = report_folder(study, out_dir)
    client = MlflowClient()  # runs of the study whose process died end KILLED first, so they are named as skipped
    liveness.close_dead_runs(client, [e.experiment_id for e in client.search_experiments()], f"tags.study = '{study}'")
    data = load.study(study)
    if data.runs.empty and data.parent_run_id is None and not data.skipped:
        raise NoRuns(f"no MLflow runs carry the tag study={study!r} in this tracking store")
    for run_id, why in data.skipped.items():
        print(f"warning: run {run_id} skipped: {why}", file=sys.stderr)
    index = write_report(data, folder)
    log_report(index.parent, data.parent_run_id)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build one study's report; exit code 2 when the study has no runs or a name that is not allowed."""
    parser = OneLineParser(
        prog="python -m analysis.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", required=True, help="the study name (the runs' `study` tag)")
    parser.add_argument("--out-dir", default="reports", help="folder that receives <study>/index.html")
    args = parser.parse_args(argv)
    try:
        check_tracking()  # an unreachable or corrupt store: one line within seconds
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)  # the run `mlflow run . -e report` made before this started
    if launcher:
        for key, value in {"study": args.study, "role": "report"}.items():
            MlflowClient().set_tag(launcher, key, value)
    try:
        index = build(args.study, args.out_dir)
    except (NoRuns, BadStudyName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if launcher:
        retire_launcher(launcher, args.study)
    print(f"report: {index.resolve()}")
    return 0


def retire_launcher(run_id: str, study: str) -> None:
    """End `mlflow run`'s own run (the report went to the study's parent), described with a link there.

    Not deleted: `mlflow run` ends its run again after the entry point exits, which fails on a deleted run.
    """
    client = MlflowClient()
    parents = load.runs(study, role="parent")
    if len(parents):
        where = f"#/experiments/{parents['experiment_id'].iloc[0]}/runs/{parents['run_id'].iloc[0]}"
        client.set_tag(
            run_id,
            "mlflow.note.content",
            f"The report of study `{study}` is in its [parent run]({where}), artifacts `{ARTIFACT_PATH}/`.",
        )
    client.set_tag(run_id, "mlflow.runName", f"report of {study}")
    client.set_terminated(run_id, "FINISHED")


if __name__ == "__main__":
    sys.exit(main())
