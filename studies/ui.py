"""What MLflow's UI shows of a study: its own experiment, the parent run's answer, a picture per trial, Optuna's plots.

* Experiment: a study's runs go to an experiment named after the study, unless MLFLOW_EXPERIMENT_NAME or
  `mlflow run --experiment-name/--experiment-id` chose one. `mlflow run` makes its run before the entry
  point starts, in the Default experiment when none was chosen; that run cannot move, so the study takes
  a run of its own in the study's experiment, and the launcher run is named after the study, tagged with
  where it went (`launched_study`, `study_experiment_id`, a link in its description) and ended. It cannot
  be deleted: `mlflow run` ends its run again after the entry point exits, which fails on a deleted run.
* Parent run: tags and a description naming the best trial (number, run id, value, a link), what the
  study swept, and figures (Optuna's plots under `optuna/`, the report's under `report/`).
* Trials: `figures/gradient_profile.png`, drawn from the recorder's table when training ends.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from common.links import run_link
from studies.spec import StudySpec

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_ID = "0"
MOVED_TAG = "study_experiment_id"  # on a deleted launcher run: the experiment its study went to
# MLflow 3's UI shows an experiment of this kind as model training (runs table, charts), not GenAI evaluations.
EXPERIMENT_KIND = "mlflow.experimentKind"
NOTE = "mlflow.note.content"  # the run's description in the UI (markdown)
LAUNCH_TAGS = ("mlflow.source.", "mlflow.project.", "mlflow.gitRepoURL", "mlflow.user")  # what mlflow run recorded
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id; anything else read from the storage is not linked
OPTUNA_DIR = "optuna"
DESCRIPTION_FIGURES = (
    ("optuna", "optimization_history"),
    ("report", "backprop_by_layer"),
    ("report", "gradient_heatmaps"),
)


# ------------------------------------------------------------------------------------------ experiment


def study_experiment(client: MlflowClient, study_name: str, launcher: Run | None) -> str:
    """The experiment of a new study: MLFLOW_EXPERIMENT_NAME's, else the one `mlflow run` was given, else its own."""
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return experiment_named(client, os.environ["MLFLOW_EXPERIMENT_NAME"])
    given = launcher.info.experiment_id if launcher is not None else os.environ.get("MLFLOW_EXPERIMENT_ID")
    if given and given != DEFAULT_EXPERIMENT_ID:  # mlflow run --experiment-name/--experiment-id, or the env
        return given
    return experiment_named(client, study_name)


def experiment_named(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, made if missing (through the client: mlflow.set_experiment's global stays)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND: "custom_model_development"})
        except mlflow.exceptions.MlflowException:  # made meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise SystemExit(
            f"error: experiment {name!r} is deleted; restore it (mlflow experiments restore) or "
            "set MLFLOW_EXPERIMENT_NAME"
        )
    return found.experiment_id


def own_run(client: MlflowClient, launcher: Run | None, experiment_id: str, run_name: str) -> str:
    """This invocation's run in `experiment_id`: the launcher run of `mlflow run` if it is there, else a new one.

    A launcher run elsewhere is tagged with the study's experiment and a link, and ended (see module doc).
    """
    if launcher is not None and launcher.info.experiment_id == experiment_id:
        return launcher.info.run_id
    tags = {} if launcher is None else {k: v for k, v in launcher.data.tags.items() if k.startswith(LAUNCH_TAGS)}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    if launcher is not None:
        old = launcher.info.run_id
        tags = {
            "mlflow.runName": f"{run_name} (launcher)",
            "launched_study": run_name.removesuffix("-worker"),
            MOVED_TAG: experiment_id,
            NOTE: f"This `mlflow run` started a study whose runs are in experiment "
            f"{experiment_id}: [its run there]({run_link(experiment_id, run_id)}).",
        }
        for key, value in tags.items():
            client.set_tag(old, key, value)
        client.set_terminated(old, "FINISHED")
        log.info("the study's runs go to experiment %s; mlflow run's own run %s points there", experiment_id, old)
    return run_id


# ------------------------------------------------------------------------------------------ trial figure


def log_trial_figure(client: MlflowClient, run_id: str, table: Any, title: str) -> None:
    """Log the trial's gradient profile (analysis.trial_figure) and, if recorded, its log10|g| histograms
    (analysis.histogram_figure) as PNG artifacts; a drawing problem only warns."""
    from analysis import histogram_figure, trial_figure

    for figure in (trial_figure, histogram_figure):  # each draws None when the run lacks its statistics
        try:
            fig = figure.draw(table, title)
            if fig is not None:
                client.log_figure(run_id, fig, figure.ARTIFACT, save_kwargs=figure.SAVE)
        except Exception as exc:  # a figure is a view: it never fails a trial
            log.warning("no %s for run %s: %s", figure.ARTIFACT, run_id, exc)


# ------------------------------------------------------------------------------------------ optuna plots


def _plotters(study: optuna.Study) -> dict[str, Any]:
    from optuna.visualization import matplotlib as plots

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    varying = {
        name
        for name in {k for t in complete for k in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    }
    chosen = {"timeline": plots.plot_timeline} if trials else {}
    if complete:
        chosen |= {
            "optimization_history": plots.plot_optimization_history,
            "parallel_coordinate": plots.plot_parallel_coordinate,
            "slice": plots.plot_slice,
        }
    if len(complete) >= 2 and varying:  # importances need two values of a parameter to compare
        chosen["param_importances"] = plots.plot_param_importances
    if any(t.intermediate_values for t in trials):
        chosen["intermediate_values"] = plots.plot_intermediate_values
    return chosen


def log_optuna_plots(client: MlflowClient, study: optuna.Study, run_id: str) -> list[str]:
    """Optuna's own study plots (optuna.visualization.matplotlib) as PNGs under `optuna/` of `run_id`; their names."""
    import matplotlib.pyplot as plt
    import numpy as np

    logged = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # the plots are "experimental"; their warnings would tear the output
        for name, plot in _plotters(study).items():
            try:
                axes = plot(study)
            except Exception as exc:  # a plot Optuna cannot draw for this study is left out
                log.info("optuna plot %s not drawn: %s", name, exc)
                continue
            fig = np.ravel(axes)[0].figure
            fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 5))
            fig.savefig(Path(tmp) / f"{name}.png", dpi=90, bbox_inches="tight")
            plt.close(fig)  # pyplot keeps every figure alive until closed
            logged.append(name)
        if logged:
            client.log_artifacts(run_id, tmp, artifact_path=OPTUNA_DIR)
    return logged


# ------------------------------------------------------------------------------------------ parent run


def _space_text(spec: StudySpec) -> str:
    parts = []
    for p in spec.space:
        if p.kind in ("int", "float"):
            parts.append(f"`{p.name}` in [{p.low:g}, {p.high:g}]" + (" (log)" if p.log else ""))
        else:
            parts.append(f"`{p.name}` ∈ {{{', '.join(str(v) for v in p.grid_values())}}}")
    return "; ".join(parts)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best completed trial, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_tags(study: optuna.Study, client: MlflowClient) -> dict[str, str]:
    """Tags naming the best trial: number, value, MLflow run id and name (run ids from the storage are checked)."""
    best = best_trial(study)
    if best is None:
        return {}
    tags = {"best_trial": str(best.number), "best_value": f"{best.value:.6g}"}
    run_id = str(best.user_attrs.get("mlflow_run_id", ""))
    if RUN_ID.match(run_id):
        try:
            name = client.get_run(run_id).info.run_name
        except mlflow.exceptions.MlflowException:  # a run of another tracking store: not linked
            return tags
        tags |= {"best_run_id": run_id, "best_run_name": name}
    return tags


def description(
    study: optuna.Study,
    spec: StudySpec,
    parent_run_id: str,
    experiment_id: str,
    tags: dict[str, str],
    outcomes: dict[str, int],
    figures: list[tuple[str, str]],
) -> str:
    """The parent run's markdown description: the best trial (linked), what was swept, where the figures are."""
    lines = [f"### Study `{study.study_name}`: {spec.direction} `{spec.metric}`", ""]
    if "best_trial" in tags:
        name = tags.get("best_run_name", f"trial {tags['best_trial']}")
        link = f"[{name}]({run_link(experiment_id, tags['best_run_id'])})" if "best_run_id" in tags else name
        lines += [
            f"**Best trial #{tags['best_trial']}**: {link}, `{spec.metric}` = {tags['best_value']}"
            + (f" (run `{tags['best_run_id']}`)" if "best_run_id" in tags else ""),
            "",
        ]
    else:
        lines += ["**No completed trial yet.**", ""]
    lines += [
        f"**Swept** ({spec.sampler['type']} sampler, pruner {spec.pruner['type']}, {spec.n_trials} trials): "
        f"{_space_text(spec)}.",
        "",
        "**Fixed**: " + ", ".join(f"{k}={v}" for k, v in spec.fixed.items()) + ".",
        "",
        "**Trials**: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + ".",
        "",
        "The report is the artifact `report/index.html`; Optuna's plots are under `optuna/`; each trial "
        "shows its gradient profile under `figures/`.",
        "",
    ]
    if spec.description:
        lines += [" ".join(spec.description.split()), ""]
    for folder, name in figures:
        lines.append(f"![{name}](get-artifact?path={quote(f'{folder}/{name}.png', safe='')}&run_uuid={parent_run_id})")
    return "\n".join(lines)


def describe_parent(
    client: MlflowClient, study: optuna.Study, spec: StudySpec, parent_run_id: str, summary: dict[str, Any]
) -> dict[str, str]:
    """Tag the parent with the best trial, log Optuna's plots to it and write its description; the tags."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    tags = best_tags(study, client)
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    plotted = log_optuna_plots(client, study, parent_run_id)
    have = {("optuna", name) for name in plotted}
    have |= {("report", Path(a.path).stem) for a in client.list_artifacts(parent_run_id, "report")}
    figures = [f for f in DESCRIPTION_FIGURES if f in have]
    note = description(study, spec, parent_run_id, experiment_id, tags, summary.get("outcomes", {}), figures)
    client.set_tag(parent_run_id, NOTE, note)
    return tags
