"""Code that must never run (issue 17, items 1-4): values a user or a shared store supplies stay data.

1. MLproject parameters reach the program as one argument each, whatever they hold (MLflow's own command
   building and bash, as `mlflow run` does it);
2. the fused kernels load only a library this user built (another user's folder or file, a wrong digest,
   a truncated file, umask 000);
3. CIFAR-10 batches are unpickled with only the types real batches hold;
4. the report builds paths only from valid study names and removes only its own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from mlflow.projects._project_spec import load_project
from mlflow.tracking import MlflowClient

from analysis import figures, report
from gradprobe import fused
from pipelines import data as D
from pipelines.config import ConfigError, RunConfig
from pipelines.train import check_inputs

OTHER_UID = 65534  # `nobody`: a user that is not the one running the tests


def _hostile(marker: Path, tag: str) -> str:
    """A value that runs `touch marker` if any shell ever reads it as code, with spaces, quotes and a newline."""
    return (
        f"{tag} a  b; touch {marker}; $(touch {marker}) `touch {marker}` && touch {marker} | touch {marker} "
        f"'single' \"double\" \\ * ? > {marker}\nnext line"
    )


# -- 1. MLproject ---------------------------------------------------------------------------------------------

ECHO = "import json, sys; print(json.dumps(sys.argv[1:]))"
ENTRY_POINTS = ["main", "train", "study", "report", "invariance", "invariance_report", "gradcheck"]


def test_every_entry_point_is_covered() -> None:
    assert sorted(yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]) == sorted(ENTRY_POINTS)


def test_no_command_quotes_its_parameters() -> None:
    """MLflow shell-quotes every value itself; a quote around {param} in MLproject would undo that."""
    for name, entry in yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"].items():
        assert not {"'", '"'} & set(entry["command"]), name


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_parameter_reaches_the_program_as_one_argument(entry: str, tmp_path: Path) -> None:
    """The command MLflow builds (EntryPoint.compute_command), run by bash as `mlflow run` runs it, with the
    module replaced by a program that prints its argv: each hostile value arrives whole, nothing runs."""
    point = load_project(str(ROOT)).get_entry_point(entry)
    marker = tmp_path / "injected"
    values = {name: _hostile(marker, name) for name in point.parameters}
    extra = {} if values else {"extra": _hostile(marker, "extra")}  # no parameters: MLflow passes --key value
    command = point.compute_command({**values, **extra}, storage_dir=None)
    program = shlex.split(point.command)[:3]
    assert program[:2] == ["python", "-m"] and command.startswith(" ".join(program) + " ")
    echo = f"{shlex.quote(sys.executable)} -c {shlex.quote(ECHO)}"
    done = subprocess.run(
        ["bash", "-c", echo + command[len(" ".join(program)) :]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "a parameter value ran as shell code"
    expected = [values.get(token[1:-1], token) for token in shlex.split(point.command)[3:]]
    expected += [arg for key, value in extra.items() for arg in (f"--{key}", value)]
    assert json.loads(done.stdout) == expected


# -- 2. the fused kernels' cache ------------------------------------------------------------------------------

PLANTED_C = (
    '#include <stdio.h>\n__attribute__((constructor)) static void planted(void) { fclose(fopen(MARKER, "w")); }\n'
)


def _plant(target: Path, marker: Path) -> None:
    """Replace `target` by a library whose loading creates `marker` (its constructor runs inside dlopen)."""
    source = target.with_name("planted.c")
    source.write_text(PLANTED_C)
    done = subprocess.run(
        [fused.compiler(), "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    source.unlink()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _load_in_a_fresh_process(cache: Path, marker: Path | None = None) -> tuple[str, list[str]]:
    """fused.enabled() in a new process with GPL_CACHE_DIR=cache: its answer and the warnings it gave;
    fails first if a planted library ran (created `marker`)."""
    script = (
        "import warnings\nfrom gradprobe import fused\n"
        "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
        "    print(fused.enabled())\n"
        "for w in caught:\n    print(str(w.message).replace(chr(10), ' '))\n"
    )
    env = {**os.environ, "GPL_CACHE_DIR": str(cache)}
    env.pop(fused.ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert marker is None or not marker.exists(), "a planted library was loaded (its constructor ran)"
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"  # -7 would be SIGBUS
    first, *warned = done.stdout.splitlines()
    return first, warned


@pytest.fixture
def built_cache(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A cache folder holding both builds of the kernels, as a first run leaves it."""
    if not fused.compiler():
        pytest.skip("no C compiler: there is no kernel library to plant or damage")
    cache = tmp_path / "cache"
    return cache, [fused.build(threading, cache) for threading in fused.THREADING]


@pytest.fixture
def planted_with_digest(built_cache, tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """(cache, libraries, marker): each library replaced by a planted one whose digest file matches it, so only
    who owns it can refuse it; as root, who can give files to another user (CI runs the tests as root)."""
    if os.getuid() != 0:
        pytest.skip("files owned by another user can only be made as root (CI runs the tests as root)")
    cache, libraries = built_cache
    marker = tmp_path / "planted-library-ran"
    for library in libraries:
        _plant(library, marker)
        _digest(library).write_text(_sha256(library))
    return cache, libraries, marker


def test_a_cache_folder_owned_by_another_user_is_not_used(planted_with_digest) -> None:
    """Whoever owns the folder could have put anything there."""
    cache, _, marker = planted_with_digest
    for path in [cache, *cache.iterdir()]:
        os.chown(path, OTHER_UID, OTHER_UID)
    answer, warned = _load_in_a_fresh_process(cache, marker)
    assert answer == "True" and any("not used" in w for w in warned)  # built privately elsewhere instead


def test_a_library_file_owned_by_another_user_is_rebuilt(planted_with_digest) -> None:
    cache, libraries, marker = planted_with_digest
    for library in libraries:
        os.chown(library, OTHER_UID, OTHER_UID)
    answer, warned = _load_in_a_fresh_process(cache, marker)
    assert answer == "True" and warned and all("owned by another user" in w for w in warned)
    rebuilt = [p for p in libraries if p.stat().st_uid == os.getuid()]
    assert rebuilt and all(_sha256(p) == _digest(p).read_text() for p in rebuilt)


def test_a_world_writable_cache_folder_is_not_used(built_cache) -> None:
    cache, _ = built_cache
    os.chmod(cache, 0o777)
    with pytest.warns(RuntimeWarning, match="not used"):
        built = fused.build("serial", cache)
    assert built.parent != cache and stat.S_IMODE(built.parent.stat().st_mode) == 0o700


def test_a_planted_library_with_a_wrong_digest_is_not_loaded(built_cache, tmp_path: Path) -> None:
    cache, libraries = built_cache
    marker = tmp_path / "planted-library-ran"
    for library in libraries:
        _plant(library, marker)  # its digest file still holds the built library's SHA-256
    answer, warned = _load_in_a_fresh_process(cache, marker)
    assert answer == "True" and warned and all("SHA-256" in w and "rebuilding" in w for w in warned)
    assert len(warned) == len(set(warned))  # one warning per damaged library


def test_a_truncated_library_is_rebuilt_with_one_warning(built_cache) -> None:
    """Mapping a truncated ELF file can kill the process with SIGBUS: its digest is checked before it is loaded."""
    cache, libraries = built_cache
    for library in libraries:
        os.truncate(library, library.stat().st_size // 2)
    answer, warned = _load_in_a_fresh_process(cache)
    assert answer == "True" and warned and all("SHA-256" in w and "rebuilding" in w for w in warned)
    assert len(warned) == len(set(warned))
    assert any(_sha256(p) == _digest(p).read_text() for p in libraries)  # whole again
    again, warned_again = _load_in_a_fresh_process(cache)
    assert again == "True" and not warned_again


def test_folders_0700_and_files_0600_under_umask_000(tmp_path: Path) -> None:
    if not fused.compiler():
        pytest.skip("no C compiler")
    cache = tmp_path / "home" / ".cache" / "gpl"
    old = os.umask(0)
    try:
        library = fused.build("serial", cache)
    finally:
        os.umask(old)
    assert library.parent == cache
    for folder in (tmp_path / "home", tmp_path / "home" / ".cache", cache):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in (library, _digest(library)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert _sha256(library) == _digest(library).read_text()


# -- 3. CIFAR-10 batches --------------------------------------------------------------------------------------


class _RunsCode:
    """What a malicious pickle holds: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _batch(n: int, seed: int) -> tuple[dict, np.ndarray, list[int]]:
    """A batch as the real files hold it: b'data' (n, 3072) uint8, b'labels' a list of ints, bytes elsewhere."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return (
        {
            b"batch_label": b"training batch",
            b"labels": labels,
            b"data": images,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        },
        images,
        labels,
    )


def _write_batches(root: Path, first: bytes | None = None, numpy1_names: bool = False) -> list[tuple]:
    """The six python batches under root/cifar-10-batches-py/ (`first` replaces data_batch_1's bytes)."""
    folder = D.cifar_dir(str(root))
    folder.mkdir(parents=True)
    written = []
    for i, name in enumerate(D.CIFAR_FILES):
        batch, images, labels = _batch(3, i)
        raw = pickle.dumps(batch, protocol=2)
        if numpy1_names:  # what the published files (NumPy 1) name: numpy.core, not numpy._core
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(first if (first is not None and i == 0) else raw)
        written.append((images, labels))
    return written


@pytest.mark.parametrize("numpy1_names", [False, True])
def test_real_format_batches_still_load(tmp_path: Path, numpy1_names: bool) -> None:
    written = _write_batches(tmp_path, numpy1_names=numpy1_names)
    if numpy1_names:
        assert b"numpy.core.multiarray" in (D.cifar_dir(str(tmp_path)) / "test_batch").read_bytes()
    assert D.missing_files("cifar10", str(tmp_path)) is None
    for name, (images, labels) in zip(D.CIFAR_FILES, written):
        got_images, got_labels = D._cifar_batch(D.cifar_dir(str(tmp_path)) / name)
        assert np.array_equal(got_images, images.reshape(-1, 3, 32, 32)) and got_labels.tolist() == labels


def test_a_pickle_that_runs_code_is_refused_before_any_run(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    _write_batches(tmp_path, first=pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(ConfigError) as err:
        check_inputs(RunConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert not marker.exists(), "unpickling a data file ran code"
    message = str(err.value)
    assert err.value.field == "data_dir" and "\n" not in message
    assert "data_batch_1" in message and "system" in message  # names the file and what it refers to
    with pytest.raises(D.BadBatch):  # and the loader itself, whatever checked before it
        D.load_cifar10.__wrapped__(str(tmp_path))
    assert not marker.exists()


def test_train_exits_2_with_one_line_for_a_malicious_batch(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    data = tmp_path / "data"
    _write_batches(data, first=pickle.dumps(_RunsCode(marker), protocol=2))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.train",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(data),
            "--model",
            "cnn",
            "--max-steps",
            "1",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "data_dir=" in done.stderr and "data_batch_1" in done.stderr
    assert not marker.exists() and list(work.iterdir()) == []  # nothing ran, nothing written


# -- 4. the report's paths ------------------------------------------------------------------------------------


def _tagged_study(name: str) -> None:
    """Runs in the shared store that carry `name` as their study tag (anyone can write such a tag)."""
    client = MlflowClient()
    parent = client.create_run("0", tags={"study": name, "role": "parent"}).info.run_id
    client.create_run(
        "0", tags={"study": name, "role": "trial", "trial": "0", "mlflow.parentRunId": parent, "outcome": "completed"}
    )


@pytest.mark.parametrize("kind", ["parent", "absolute", "slash", "dots"])
def test_a_study_name_that_is_a_path_is_refused(tracking: str, tmp_path: Path, kind: str, capsys) -> None:
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "keep.png").write_bytes(b"someone else's figure")
    name = {"parent": "../victim", "absolute": str(outside), "slash": "a/b", "dots": ".."}[kind]
    _tagged_study(name)
    before = sorted(p for p in tmp_path.rglob("*") if "mlruns" not in p.parts)
    out = tmp_path / "reports"
    assert report.main(["--study", name, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study=") and "allowed: letters, digits" in err and "\n" not in err
    assert sorted(p for p in tmp_path.rglob("*") if "mlruns" not in p.parts) == before  # nothing written or removed
    assert (outside / "keep.png").read_bytes() == b"someone else's figure"


def test_a_study_folder_that_links_elsewhere_is_refused(tracking: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "linked").symlink_to(elsewhere)
    _tagged_study("linked")
    assert report.main(["--study", "linked", "--out-dir", str(tmp_path / "reports")]) == 2
    assert list(elsewhere.iterdir()) == []


def test_regenerating_keeps_files_the_report_did_not_write(tracking: str, tmp_path: Path) -> None:
    _tagged_study("mine")
    folder = tmp_path / "reports" / "mine"
    folder.mkdir(parents=True)
    foreign = {"holiday.png": b"not a figure", "notes.txt": b"my notes"}
    for name, content in foreign.items():
        (folder / name).write_bytes(content)
    stale = folder / f"{next(iter(figures.FIGURES))}.png"  # a figure an earlier build drew, no data for it now
    stale.write_bytes(b"old figure")
    (folder / "summary.csv").symlink_to(tmp_path / "target.csv")  # a link in place of an output: replaced
    (tmp_path / "target.csv").write_text("keep")
    for _ in range(2):
        index = report.build("mine", tmp_path / "reports")
    assert index.parent == folder and {p.name for p in folder.iterdir()} == {*foreign, "index.html", "summary.csv"}
    assert all((folder / name).read_bytes() == content for name, content in foreign.items())
    assert not stale.exists() and (tmp_path / "target.csv").read_text() == "keep"


def test_the_report_and_the_runner_share_one_name_rule() -> None:
    from studies import spec

    assert report.valid_study_name is spec.valid_study_name and report.STUDY_NAME_RULE == spec.STUDY_NAME_RULE


def test_the_invariance_report_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    import pandas as pd
    from test_invariance import _measured_zoo

    from analysis import invariance_report

    folder = tmp_path / "invariance"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"not a figure")
    zoo, metrics = _measured_zoo(["mlp", "cnn_circ", "cnn_circ_stride2", "cnn_circ_bn"])
    index = invariance_report.write_report(pd.Series({"run_id": "invocation", "role": "parent"}), zoo, metrics, folder)
    assert (folder / "holiday.png").read_bytes() == b"not a figure" and "holiday" not in index.read_text()


# -- a model artifact from the store (the invariance tests reload trained weights) ----------------------------


class _RunsCode:
    """What a hostile state_dict.pt holds: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_model_artifact_that_runs_code_is_refused_unrun(tracking: str, tmp_path: Path) -> None:
    import torch

    from experiments.invariance import zoo as invariance

    marker = tmp_path / "ran"
    planted = tmp_path / "planted" / "state_dict.pt"
    planted.parent.mkdir()
    torch.save({"net.0.weight": _RunsCode(marker)}, planted)
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    client.log_artifact(run_id, str(planted), artifact_path=Path(invariance.MODEL_ARTIFACT).parent.as_posix())
    cfg = RunConfig(model="mlp", depth=2, width=4, max_steps=1)
    with pytest.raises(pickle.UnpicklingError):  # torch.load(weights_only=True): tensors and containers only
        invariance.load_net(cfg, run_id)
    assert not marker.exists()
