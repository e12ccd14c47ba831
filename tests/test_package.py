"""The issue's "done when": gradprobe installed into a fresh venv outside the repository works on a network of its own.

The wheel is built from a copy of the package's sources in tmp (pip wheel --no-deps --no-build-isolation; no
network); a fresh venv (python -m venv) sees the lab venv's third-party packages (torch, Lightning, MLflow,
TensorBoard) through a .pth file, never the repository: `import gradprobe` fails there until the wheel is
installed. A script written here, in a folder outside the repository, trains a LightningModule of its own with
`GradientProbe` logging to MLflow (MLFlowLogger, SQLite) and TensorBoard (TensorBoardLogger), and a plain
PyTorch loop with the plain API writing a ParquetSink; the test reads each store back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
# The user's layers, by qualified name (a Sequential inside the module, a head beside it).
LAYERS = ("encoder.0", "encoder.2", "head")

USER_SCRIPT = textwrap.dedent(
    """
    import sys
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger
    from torch import nn

    import gradprobe
    from gradprobe import GradientProbe, Probe
    from gradprobe.sinks import ParquetSink

    tracking_uri, tensorboard_dir, parquet_path = sys.argv[1:4]
    print("gradprobe from", gradprobe.__file__)


    def network():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()), nn.Linear(32, 3)


    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = network()

        def forward(self, x):
            return self.head(self.encoder(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)


    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(256, 10, generator=g), torch.randint(0, 3, (256,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=32)

    # 1. Lightning: the callback records through the Trainer's loggers.
    loggers = [MLFlowLogger(experiment_name="mine", tracking_uri=tracking_uri), TensorBoardLogger(tensorboard_dir)]
    trainer = pl.Trainer(max_steps=8, logger=loggers, callbacks=[GradientProbe(log_every=2)], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Classifier(), loader)
    print("mlflow run", loggers[0].run_id)

    # 2. A plain loop: the plain API around backward() and step(), into a parquet file.
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = Probe(model, log_every=2, max_steps=8, sink=ParquetSink(parquet_path), histograms=True,
                  record_cost=True)
    for step, (x, y) in zip(range(8), loader):
        probe.begin(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        probe.gradients(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end()
    probe.close()  # writes the parquet file
    """
)


def _site_packages(python: Path) -> Path:
    """The purelib folder of a venv's interpreter."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _clean_env() -> dict[str, str]:
    """This environment without what would put the repository or a run of this test session on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def _copy_sources(dest: Path) -> Path:
    """What the wheel is built from (pyproject, README, the package), away from the repository's tree."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "gradprobe", dest / "gradprobe", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return dest


def _fresh_venv(folder: Path) -> Path:
    """A venv with no gradprobe that sees this venv's third-party packages through a .pth file; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    lab_site = Path(sysconfig.get_paths()["purelib"])
    # The lab's site-packages (in CI: the checkout's .venv) hold third-party packages only, never gradprobe
    # itself nor an editable install pointing at the repository (checked again by importing it, below).
    assert lab_site != ROOT and not list(lab_site.glob("*gradprobe*")), list(lab_site.glob("*gradprobe*"))
    (_site_packages(python) / "lab_packages.pth").write_text(f"{lab_site}\n")
    return python


def _pip_install(python: Path, what: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", what],
        check=True,
        cwd=cwd,
        env=_clean_env(),
    )


def _imports_gradprobe(python: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", "import gradprobe, torch; print(gradprobe.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python of a fresh venv with the gradprobe wheel installed, a work folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("package")
    sources = _copy_sources(tmp / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(sources),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "wheel"),
        ],
        check=True,
        env=_clean_env(),
    )
    (wheel,) = (tmp / "wheel").glob("gradprobe-*.whl")
    python = _fresh_venv(tmp / "venv")
    work = tmp / "work"
    work.mkdir()
    before = _imports_gradprobe(python, work)
    assert before.returncode != 0 and "No module named 'gradprobe'" in before.stderr, before.stdout
    _pip_install(python, str(wheel), work)
    after = _imports_gradprobe(python, work)
    assert after.returncode == 0, after.stderr
    assert Path(after.stdout.strip()).is_relative_to(_site_packages(python)), after.stdout
    return python, work


@pytest.mark.slow
def test_pip_install_from_the_source_folder(tmp_path: Path) -> None:
    """`pip install <repo>` (not a wheel) into another fresh venv also gives an importable gradprobe."""
    sources = _copy_sources(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, str(sources), tmp_path)
    shutil.rmtree(sources)  # a real install: nothing points back at the sources
    done = _imports_gradprobe(python, tmp_path)
    assert done.returncode == 0 and Path(done.stdout.strip()).is_relative_to(_site_packages(python)), done.stderr


@pytest.mark.slow
def test_own_network_logs_per_layer_statistics_to_mlflow_tensorboard_and_parquet(installed) -> None:
    python, work = installed
    script = work / "user_training.py"
    script.write_text(USER_SCRIPT)
    tracking, tensorboard_dir, parquet = f"sqlite:///{work / 'mlflow.db'}", work / "tb", work / "plain.parquet"
    done = subprocess.run(
        [str(python), str(script), tracking, str(tensorboard_dir), str(parquet)],
        cwd=work,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"gradprobe from {_site_packages(python)}" in done.stdout
    per_layer = {f"grad/l2/{layer}" for layer in LAYERS} | {f"act/mean/{layer}" for layer in LAYERS[:2]}

    run_id = done.stdout.split("mlflow run ")[1].split()[0]
    client = MlflowClient(tracking)
    assert per_layer | {"probe/cost_share"} <= set(client.get_run(run_id).data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "grad/l2/head")] == [0, 2, 4, 6, 7]
    # The end-of-fit diagnosis, as an artifact of the logger's run and as a file in TensorBoard's log_dir.
    diagnosis = Path(client.download_artifacts(run_id, "diagnosis.md", str(work))).read_text()
    assert all(f"`{layer}`" in diagnosis for layer in LAYERS), diagnosis

    (event_file,) = tensorboard_dir.rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    assert per_layer <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("grad/l2/head")] == [0, 2, 4, 6, 7]
    assert (event_file.parent / "diagnosis.md").read_text() == diagnosis

    table = pd.read_parquet(parquet)
    recorded = {(str(f), str(s), str(layer)) for f, s, layer in zip(table["family"], table["stat"], table["layer"])}
    assert {tuple(k.split("/")) for k in per_layer} <= recorded
    assert sorted(table.loc[table["family"] == "grad", "step"].unique()) == [0, 2, 4, 6, 7]
    assert ("hist", "zeros", "head") in recorded and ("probe", "cost_share", "") in recorded
