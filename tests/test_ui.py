"""The MLflow UI in headless Chromium: a study's own experiment, its parent run naming the best trial, nested trials
with their gradient figures, a per-layer gradient chart, the report with its figures inline.

A tiny real study (two trials and the report) goes into a SQLite store, a real `mlflow server` serves it,
and Playwright drives Debian's `chromium` (no browser download). Screenshots land in each test's tmp_path.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import copy_store, pointed_at
from mlflow.tracking import MlflowClient
from servers import mlflow_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing (Debian package `chromium`; `make test` installs it as root)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
expect = sync_api.expect

pytestmark = pytest.mark.slow

# No sandbox: tests may run as root in a container; the rest keeps Chromium off the network but for 127.0.0.1.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT = 30_000  # ms: the UI fetches everything through the server's REST API after the page loads
STUDY = "ui_study"
KEY = "grad/l2/L000"
SPEC = f"""
name: {STUDY}
fixed: {{dataset: digits, model: mlp, depth: 3, width: 16, batch_size: 32, \
max_steps: 12, log_every: 2, metric_points: 0}}
space:
  activation: [relu, tanh]
sampler: {{type: grid}}
objective: {{metric: val/acc}}
n_trials: 2
"""


@dataclass(frozen=True)
class Served:
    """The study as the UI sees it: server URL, ids from MLflow, and the link the study printed."""

    url: str
    experiment_id: str
    parent: str
    trials: dict[str, str]  # run id -> run name
    report: list[str]  # the parent's report/ artifacts
    printed_link: str
    client: MlflowClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[Served]:
    """Run the study (with its report) into a SQLite store and serve that store with `mlflow server`."""
    from studies.runner import run_study

    folder = tmp_path_factory.mktemp("ui")
    uri = copy_store(empty_store, folder)
    (folder / "ui.yaml").write_text(SPEC)
    (folder / "served-artifacts").mkdir()
    stderr = io.StringIO()
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        # The server takes ~20 s to import and start on a busy 2-core box: start it while the study trains.
        # Starting, it only reads the store (schema check), which SQLite allows beside the study's writes.
        starting = pool.submit(stack.enter_context, mlflow_server(uri, folder / "served-artifacts"))
        with pointed_at(uri), pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
            patch.chdir(folder)  # the report is written to ./reports before it is logged
            run_study(str(folder / "ui.yaml"), storage=str(folder / "optuna.journal"))
        url = starting.result()
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id], f"tags.study = '{STUDY}'")
        parent = next(r for r in runs if r.data.tags.get("role") == "parent")
        trials = {r.info.run_id: r.info.run_name for r in runs if r.data.tags.get("role") == "trial"}
        link = re.search(r"http://127\.0\.0\.1:5000/(#/\S+)", stderr.getvalue())
        assert link, f"the study printed no UI link:\n{stderr.getvalue()[-2000:]}"
        yield Served(
            url,
            parent.info.experiment_id,
            parent.info.run_id,
            trials,
            sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report")),
            link.group(1),
            client,
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright."""
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    """A fresh page; its last state is saved as last.png, and where is printed (pytest shows it on failure)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT)
    yield page
    with contextlib.suppress(Exception):
        page.screenshot(path=tmp_path / "last.png", full_page=True)
    print(f"screenshots: {tmp_path}")
    context.close()


def shot(page: Page, tmp_path: Path, name: str) -> None:
    """Save a screenshot of what a check just saw."""
    page.screenshot(path=tmp_path / f"{name}.png")


def test_runs_table_shows_the_study_parent_with_its_trials_nested(served: Served, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs")
    expect(page.get_by_text("Training runs", exact=True)).to_be_visible(timeout=WAIT)
    # ag-grid renders a row once per pinned/unpinned column block: pick the one with the name cell.
    parent = page.locator(f'[role=row][row-id="{served.parent}"]', has_text=STUDY)
    expect(parent).to_be_visible(timeout=WAIT)
    rows = {
        run_id: page.locator(f'[role=row][row-id="{run_id}"]', has_text=name) for run_id, name in served.trials.items()
    }
    for row in rows.values():  # nested: hidden while the parent is collapsed
        expect(row).to_have_count(0)
    shot(page, tmp_path, "collapsed")
    parent.locator("button[data-component-id*=runnamecellrenderer]").click()  # the expand (+) button
    for row in rows.values():
        expect(row).to_be_visible(timeout=WAIT)
    expect(page.get_by_text("3 matching runs")).to_be_visible()
    shot(page, tmp_path, "expanded")


def test_the_printed_link_opens_the_parent_run_listing_its_trials(served: Served, page: Page, tmp_path: Path) -> None:
    assert served.printed_link.startswith(f"#/experiments/{served.experiment_id}/runs"), served.printed_link
    page.goto(f"{served.url}/{served.printed_link}")
    expect(page.get_by_role("heading", name=STUDY, exact=True)).to_be_visible(timeout=WAIT)
    expect(page.get_by_text("Child runs", exact=True)).to_be_visible(timeout=WAIT)
    children = page.get_by_test_id("key-value-Child runs")  # the description links the best trial too
    for name in served.trials.values():
        expect(children.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=WAIT)
    shot(page, tmp_path, "parent")


def test_a_trial_page_charts_a_per_layer_gradient_metric(served: Served, page: Page, tmp_path: Path) -> None:
    run_id, name = sorted(served.trials.items())[0]
    history = served.client.get_metric_history(run_id, KEY)
    assert len(history) == 7  # steps 0, 2, …, 10 and the last, 11 (metric_points: 0 sends all)
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{run_id}/model-metrics")
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible(timeout=WAIT)
    page.get_by_placeholder("Search metric charts").fill(KEY)
    expect(page.get_by_text("grad/l2", exact=True)).to_be_visible(timeout=WAIT)  # the statistic's section of charts
    chart = page.locator(".js-plotly-plot")
    expect(chart).to_have_count(1, timeout=WAIT)
    expect(chart).to_contain_text("Step")  # the x axis
    expect(page.get_by_text(f"{name} ({KEY})")).to_be_visible()  # the legend names the run and the key
    # One marker per logged point: the chart plots the run's data, not an empty frame.
    expect(chart.locator(".scatterlayer .trace .points path")).to_have_count(len(history), timeout=WAIT)
    shot(page, tmp_path, "chart")


def section_headers(page: Page) -> list[tuple[str, int]]:
    """The chart sections of a run's Model metrics tab, top to bottom: (name, number of charts)."""
    headers = page.get_by_test_id("experiment-view-compare-runs-section-header")
    expect(headers.first).to_be_visible(timeout=WAIT)
    texts = headers.evaluate_all("els => els.map(e => e.innerText)")
    found = [re.match(r"\s*(.+?)\s*\((\d+)\)", text, re.S) for text in texts]
    assert all(found), texts
    return [(m.group(1), int(m.group(2))) for m in found]


def test_chart_sections_follow_the_statistic_and_open_on_the_headline(
    served: Served, page: Page, tmp_path: Path
) -> None:
    run_id, name = sorted(served.trials.items())[0]
    metrics = served.client.get_run(run_id).data.metrics
    layers = sorted(k.rsplit("/", 1)[1] for k in metrics if k.startswith("grad/l2/"))
    assert layers == ["L000", "L001", "L002", "out"]  # depth 3 and the readout
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{run_id}/model-metrics")
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible(timeout=WAIT)
    sections = section_headers(page)
    shot(page, tmp_path, "sections")
    names = [s for s, _ in sections]
    assert names[0] == "0-headline", names  # loss, accuracy and the global gradient norm first
    headline = dict(sections)["0-headline"]
    assert headline == len([k for k in metrics if k.startswith("0-headline/")]) >= 4  # train/val loss, val/acc, norm
    assert dict(sections).get("grad/l2") == len(layers)  # every layer's l2 in one section
    assert not [s for s in names if re.search(r"(^|/)(L\d{3}|out)$", s)]  # no section per layer


def test_the_parent_run_lists_the_report_artifact_and_shows_it(served: Served, page: Page, tmp_path: Path) -> None:
    assert {"report/index.html", "report/backprop_by_layer.png", "report/summary.csv"} <= set(served.report)
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent}/artifacts")
    page.get_by_text("report", exact=True).click()  # open the folder in the artifact tree
    for path in served.report:
        expect(page.get_by_text(Path(path).name, exact=True)).to_be_visible(timeout=WAIT)
    shot(page, tmp_path, "artifacts")
    page.get_by_text("index.html", exact=True).click()  # the report page, previewed in a sandboxed iframe
    report = page.frame_locator("iframe.mlflow-html-iframe")
    expect(report.get_by_text(f"Gradient report: study {STUDY}")).to_be_visible(timeout=WAIT)
    shot(page, tmp_path, "report")
    page.get_by_text("backprop_by_layer.png", exact=True).click()
    expect(page.get_by_text("report/backprop_by_layer.png", exact=True)).to_be_visible(timeout=WAIT)
    # The figure is fetched from the server and decoded: an <img> with real pixels.
    page.wait_for_function("[...document.images].some(i => i.src.startsWith('blob:') && i.naturalWidth > 300)")
    shot(page, tmp_path, "figure")


def loaded_images(frame) -> list[int]:
    """naturalWidth of every <img> in a page or frame, once each has finished loading (0 = broken)."""
    frame.locator("img").first.wait_for(timeout=WAIT)
    return frame.locator("img").evaluate_all(
        "els => Promise.all(els.map(e => e.complete ? e.naturalWidth : new Promise(ok => "
        "{ e.onload = e.onerror = () => ok(e.naturalWidth); })))"
    )


def test_the_study_has_its_own_experiment_holding_only_its_runs(served: Served) -> None:
    experiment = served.client.get_experiment(served.experiment_id)
    assert experiment.name == STUDY and served.experiment_id != "0"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training views
    runs = served.client.search_runs([served.experiment_id])
    assert {r.info.run_id for r in runs} == {served.parent, *served.trials}
    assert len(set(served.trials.values())) == len(served.trials) == 2  # names tell the trials apart


def test_the_parent_names_the_best_trial_and_links_to_it(served: Served, page: Page, tmp_path: Path) -> None:
    tags = served.client.get_run(served.parent).data.tags
    trials = [served.client.get_run(r) for r in served.trials]
    best = max(sorted(trials, key=lambda t: int(t.data.tags["trial"])), key=lambda t: t.data.metrics["val/acc"])
    assert tags["best_run_id"] == best.info.run_id
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent}")
    expect(page.get_by_text(f"Best trial #{best.data.tags['trial']}")).to_be_visible(timeout=WAIT)
    expect(page.get_by_text(best.info.run_id).first).to_be_visible(timeout=WAIT)
    link = page.get_by_role("link", name=best.info.run_name, exact=True).first
    assert link.get_attribute("href").endswith(f"#/experiments/{served.experiment_id}/runs/{best.info.run_id}")
    # The description's figures (Optuna's history, the report's) load from the server's artifact route.
    described = page.locator("img[src*='get-artifact']")
    expect(described.first).to_be_visible(timeout=WAIT)
    widths = described.evaluate_all("els => els.map(e => e.naturalWidth)")
    assert widths and all(w > 0 for w in widths), widths
    shot(page, tmp_path, "best")
    with page.context.expect_page() as opened:  # markdown links open in a new tab
        link.click()
    trial = opened.value
    expect(trial.get_by_role("heading", name=best.info.run_name, exact=True)).to_be_visible(timeout=WAIT)
    assert best.info.run_id in trial.url


def test_a_trial_shows_its_gradient_figure(served: Served, page: Page, tmp_path: Path) -> None:
    run_id = sorted(served.trials)[0]
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{run_id}/artifacts")
    page.get_by_text("figures", exact=True).click()
    page.get_by_text("gradient_profile.png", exact=True).click()
    page.wait_for_function("[...document.images].some(i => i.src.startsWith('blob:') && i.naturalWidth > 300)")
    shot(page, tmp_path, "trial-figure")


def test_the_report_preview_shows_its_figures(served: Served, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent}/artifacts")
    page.get_by_text("report", exact=True).click()
    page.get_by_text("index.html", exact=True).click()
    report = page.frame_locator("iframe.mlflow-html-iframe")
    expect(report.get_by_text(f"Gradient report: study {STUDY}")).to_be_visible(timeout=WAIT)
    widths = loaded_images(report)
    assert len(widths) >= 2 and all(w > 0 for w in widths), widths
    hrefs = report.locator("table.runs a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert sorted(h.rsplit("/", 1)[-1] for h in hrefs) == sorted(served.trials)
    shot(page, tmp_path, "report-figures")


def test_optuna_plots_are_on_the_parent(served: Served) -> None:
    plots = {Path(a.path).name for a in served.client.list_artifacts(served.parent, "optuna")}
    # Two completed trials of one varying parameter: every plot can be drawn (intermediate values: the reports).
    assert {
        "optimization_history.png",
        "param_importances.png",
        "slice.png",
        "parallel_coordinate.png",
        "timeline.png",
        "intermediate_values.png",
    } <= plots
