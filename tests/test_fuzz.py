"""Fuzzing (hypothesis): a malformed run config or study spec always gives one clear error and writes nothing.

The oracles are the README's rules, not the validators' code: what a valid config may hold, that an error
names its field and what is allowed on one line, and that the command lines exit 2 leaving the working
directory empty.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import copy_store
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from analysis import invariance_report as invariance_report_cli
from analysis import report as report_cli
from experiments.invariance import zoo as invariance_cli
from oracles import gradcheck as gradcheck_cli
from pipelines import train
from pipelines.config import ConfigError, RunConfig, choices
from pipelines.data import MNIST_FILES
from studies import run as study_cli
from studies.spec import TOP_LEVEL, SpecError, StudySpec, load_spec, parse_overrides

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
FLAGS = ["--" + name.replace("_", "-") for name in FIELDS]
# Each test reuses one tmp folder (checked empty after every example), so function-scoped fixtures are fine.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- values --------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(10**300, 10**400),  # beyond the float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
unknown_names = st.text(min_size=1, max_size=12).filter(lambda s: s not in FIELDS and s != "help")  # --help exits 0


def plausible(name: str) -> st.SearchStrategy:
    """Values of the right type, in and out of the field's range."""
    allowed, kind = choices(name), FIELDS[name].type
    if allowed:
        return st.sampled_from(allowed)
    if kind == "int":
        return st.integers(-3, 64)
    return st.floats(-1.0, 4.0) | st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf])


def value_for(name: str) -> st.SearchStrategy:
    """Mostly plausible values (so that some configs are valid), sometimes junk of any type."""
    return st.one_of(plausible(name), plausible(name), junk)


config_dicts = st.lists(st.sampled_from(list(FIELDS)), unique=True, max_size=6).flatmap(
    lambda names: st.fixed_dictionaries({n: value_for(n) for n in names})
)


def as_text(value: Any) -> str:
    """How a value might be typed on a command line."""
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


flag_values = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "2.5", "1_0", " 3 ", "", "٣"]),
    st.integers(-5, 100).map(str),
    st.floats(allow_nan=True).map(repr),
)
flag_pairs = st.lists(
    st.tuples(st.sampled_from(FLAGS) | unknown_names.map(lambda s: "--" + s), flag_values)
    | st.sampled_from(list(FIELDS)).flatmap(
        lambda n: st.tuples(st.just("--" + n.replace("_", "-")), plausible(n).map(as_text))
    ),
    max_size=5,
)


def check_config_error(exc: ConfigError) -> None:
    """One line: `field=value is not allowed; allowed: …`, listing the choices or the fields where there are some."""
    message = str(exc)
    shown = exc.field if str(exc.field).isidentifier() else repr(exc.field)
    assert len(message.splitlines()) == 1 and message.startswith(f"{shown}="), message
    allowed = message.split("; allowed: ", 1)[1]
    assert allowed.strip(), message
    if exc.field not in FIELDS:  # an unknown name: the error lists the real ones (as fields or as flags)
        assert all(name in allowed or flag in allowed for name, flag in zip(FIELDS, FLAGS)), message
    elif choices(exc.field) and exc.value not in choices(exc.field):
        assert all(value in allowed for value in choices(exc.field)), message


def check_valid(cfg: RunConfig) -> None:
    """What the README's table allows, checked independently of pipelines.config.validate."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        assert type(value) in {"str": (str,), "int": (int,), "float": (int, float)}[f.type], (name, value)
        if f.type == "float":
            assert math.isfinite(value), (name, value)
        if choices(name):
            assert value in choices(name), (name, value)
    for name in ("depth", "width", "kernel_size", "stride", "batch_size", "max_steps", "log_every"):
        assert getattr(cfg, name) >= 1, name
    assert cfg.lr > 0 and cfg.init_gain > 0 and cfg.res_scale >= 0 and cfg.weight_decay >= 0
    assert 0 <= cfg.momentum < 1 and cfg.kernel_size % 2 == 1 and cfg.seq_len >= 2
    assert cfg.clip == "none" or cfg.clip_threshold > 0
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


# -- the run config ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values=config_dicts, extra=st.none() | st.tuples(unknown_names, junk))
def test_fuzzed_config_values_give_a_valid_config_or_a_clear_config_error(values: dict, extra) -> None:
    if extra is not None:
        values = {**values, extra[0]: extra[1]}
    try:
        cfg = RunConfig.from_dict(values)
    except ConfigError as exc:
        event("refused")
        check_config_error(exc)
        assert exc.field in FIELDS or (extra is not None and exc.field == extra[0])
    else:
        event("valid")
        assert extra is None  # an unknown field is never accepted
        check_valid(cfg)


@settings(max_examples=200, deadline=None)
@given(pairs=flag_pairs)
def test_fuzzed_flags_give_a_valid_config_or_a_clear_config_error(pairs: list) -> None:
    argv = [token for pair in pairs for token in pair]
    try:
        cfg = train.config_from_args(argv)
    except ConfigError as exc:
        event("refused")
        check_config_error(exc)
    else:
        event("valid")
        check_valid(cfg)


def bad_flag(name: str) -> st.SearchStrategy:
    """A flag value the README's table forbids, whatever the other fields are."""
    allowed, kind = choices(name), FIELDS[name].type
    if allowed:
        return st.text(min_size=1, max_size=10).filter(lambda s: s not in allowed)
    floor = {
        "depth": 1,
        "width": 1,
        "kernel_size": 1,
        "stride": 1,
        "batch_size": 1,
        "max_steps": 1,
        "log_every": 1,
        "seq_len": 2,
        "val_every": 0,
        "seed": 0,
        "metric_points": 0,
    }.get(name)
    not_a_number = st.sampled_from(["x", "1.2.3", "ten", "[1]", "None", ""])
    if kind == "int":
        return (
            not_a_number
            | st.floats(0.5, 9.5).filter(lambda v: v != int(v)).map(repr)
            | (st.integers(-50, floor - 1).map(str) if floor is not None else st.nothing())
        )
    if name in ("lr", "init_gain"):
        return not_a_number | st.sampled_from(["nan", "inf", "0", "-0.5", "1e400"])
    if name in ("weight_decay", "res_scale", "momentum"):
        return not_a_number | st.sampled_from(["nan", "-inf", "-0.001"])
    return not_a_number | st.sampled_from(["nan", "inf"])  # any float field: finite only


bad_argv = st.tuples(
    flag_pairs,
    st.sampled_from([n for n in FIELDS if n != "data_dir"]).flatmap(
        lambda n: st.tuples(st.just("--" + n.replace("_", "-")), bad_flag(n))
    ),
    st.booleans(),
    st.tuples(unknown_names.map(lambda s: "--" + s), flag_values),
)


@FUZZ
@given(parts=bad_argv)
def test_the_train_command_line_exits_2_with_one_line_and_writes_nothing(
    parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pairs, bad, unknown_instead, unknown = parts
    # The bad flag comes last, so no later flag of the same name can override it.
    argv = [token for pair in pairs for token in pair] + list(unknown if unknown_instead else bad)
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)  # MLflow's default store would be ./mlflow.db, here
    capsys.readouterr()
    assert train.main(argv) == 2, argv
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not out, (argv, err)
    assert list(tmp_path.iterdir()) == [], argv


# -- study specs ---------------------------------------------------------------------------------------

BASE = {
    "name": "fuzz",
    "description": "a valid spec that one mutation breaks",
    "fixed": {"depth": 2, "width": 4, "max_steps": 2},
    "space": {"activation": ["relu", "tanh"]},
    "sampler": {"type": "grid", "seed": 0},
    "pruner": {"type": "none"},
    "objective": {"metric": "val/acc", "direction": "maximize"},
    "n_trials": 2,
    "retries": 0,
}
field_values = st.sampled_from(list(FIELDS)).flatmap(lambda n: st.tuples(st.just(n), value_for(n)))
ranges = st.builds(
    lambda kind, bounds, extra: {kind: bounds, **extra},
    st.sampled_from(["int", "float"]),
    st.lists(junk | st.integers(-3, 9) | st.floats(-1, 2), max_size=3),
    st.fixed_dictionaries({}, optional={"log": junk | st.booleans(), "step": junk | st.integers(-2, 3), "bogus": junk}),
)
params = st.one_of(
    junk,
    st.lists(junk | st.sampled_from(["relu", "tanh", 2, 3, 0.1]), max_size=3),
    st.fixed_dictionaries({"choices": junk}),
    ranges,
    st.fixed_dictionaries(
        {
            "bundles": junk
            | st.dictionaries(
                st.text(max_size=5),
                junk | st.dictionaries(st.sampled_from(list(FIELDS)) | st.text(max_size=5), junk, max_size=2),
                max_size=2,
            )
        }
    ),
)
DELETE = object()  # a mutation that removes the field
# One top-level field at a time gets a malformed value: `where` in the error must name that field.
mutations = st.one_of(
    st.tuples(st.just("name"), junk),
    st.tuples(st.just("description"), junk),
    st.tuples(
        st.just("fixed"),
        junk
        | st.builds(lambda fv: {fv[0]: fv[1]}, field_values)
        | st.dictionaries(unknown_names, junk, min_size=1, max_size=2),
    ),
    st.tuples(
        st.just("space"),
        junk
        | st.dictionaries(
            st.sampled_from(["depth", "lr", "activation", "arch", "colour"]), params, min_size=1, max_size=2
        ),
    ),
    st.tuples(
        st.just("sampler"),
        junk
        | st.fixed_dictionaries(
            {"type": junk | st.sampled_from(["grid", "tpe", "random"])},
            optional={"seed": junk | st.integers(-2, 2**33), "n_startup_trials": junk, "bogus": junk},
        ),
    ),
    st.tuples(
        st.just("pruner"),
        junk
        | st.fixed_dictionaries(
            {"type": junk | st.sampled_from(["none", "median", "percentile", "hyperband"])},
            optional={
                "n_warmup_steps": junk | st.integers(-3, 3),
                "percentile": junk,
                "interval_steps": junk,
                "bogus": junk,
            },
        ),
    ),
    st.tuples(
        st.just("objective"),
        junk
        | st.fixed_dictionaries(
            {"metric": junk | st.sampled_from(["val/acc", "val/loss", "train/loss"])},
            optional={"direction": junk | st.sampled_from(["minimize", "maximize"]), "bogus": junk},
        ),
    ),
    st.tuples(st.just("n_trials"), junk),
    st.tuples(st.just("retries"), junk),
    st.tuples(unknown_names.filter(lambda s: s not in TOP_LEVEL), junk),
    st.tuples(st.sampled_from(["name", "space", "objective"]), st.just(DELETE)),
)


def dump(raw: dict) -> str:
    """YAML text of a spec mapping (nan/inf as .nan/.inf, big ints as ints)."""
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)


def check_spec_error(exc: SpecError, path: Path, fields: set[str]) -> None:
    """One line `<file>: <where>: <problem>`, `where` naming the broken field."""
    message = str(exc)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: {exc.where}: ") and exc.problem.strip(), (
        message
    )
    shown = {f if f.isprintable() else repr(f)[1:-1] for f in fields}  # keys with control characters are escaped
    assert any(exc.where == f or exc.where.startswith(f + ".") for f in shown), message


def empty_cwd_exit_2(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m studies.run` refuses argv with code 2 and one line, and writes nothing in cwd."""
    capsys.readouterr()
    assert study_cli.main(argv) == 2, argv
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not out.strip(), err
    assert list(cwd.iterdir()) == [], argv


@pytest.fixture
def study_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(an empty working directory, a folder for spec files); MLflow's default store would land in the first."""
    cwd, specs = tmp_path / "cwd", tmp_path / "specs"
    cwd.mkdir()
    specs.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return cwd, specs


@FUZZ
@given(mutation=mutations)
def test_a_fuzzed_spec_is_valid_or_a_clear_spec_error_and_the_cli_writes_nothing(
    mutation, study_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    cwd, specs = study_dirs
    key, value = mutation
    raw = {k: v for k, v in BASE.items() if k != key}
    if value is not DELETE:
        raw[key] = value
    path = specs / "spec.yaml"
    path.write_text(dump(raw), encoding="utf-8")
    # A space or fixed fields can change the task, which the objective must fit.
    fields = {str(key), "objective"} if key in ("space", "fixed") else {str(key)}
    try:
        spec = load_spec(str(path))
    except SpecError as exc:
        event(f"refused at {key if key in TOP_LEVEL else 'an unknown key'}")
        if key not in TOP_LEVEL:  # named as YAML reads it back (line breaks folded, 0E0 a float)
            assert exc.problem.startswith("unknown field; allowed: "), str(exc)
            fields = {exc.where}
        check_spec_error(exc, path, fields)
    else:
        event("valid")
        assert isinstance(spec, StudySpec) and spec.n_trials >= 1 and key in TOP_LEVEL  # unknown keys: never
        return  # a harmless mutation (e.g. another description): nothing to refuse
    empty_cwd_exit_2(["--spec", str(path)], cwd, capsys)


yaml_files = st.one_of(
    st.text(max_size=80).map(str.encode),
    st.binary(max_size=60),  # mostly not UTF-8
    st.sampled_from(
        [
            "name: [unclosed\n",
            "{a: 1, a: 2}\n",
            "- a\n- b\n",
            "name: x\n  bad indent: 1\n",
            "&a [*a]\n",
            "!!python/object:os.system x\n",
            "name: !!binary Zm9v\n",
            "\t- tab\n",
            "---\n...\n---\n",
            "",
        ]
    ).map(str.encode),
    st.builds(lambda raw, cut: dump(raw).encode()[:cut], st.just(BASE), st.integers(0, 200)),  # cut anywhere
)


@FUZZ
@given(data=yaml_files)
def test_malformed_yaml_is_a_clear_spec_error_and_the_cli_writes_nothing(
    data: bytes, study_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    cwd, specs = study_dirs
    path = specs / "spec.yaml"
    path.write_bytes(data)
    try:
        load_spec(str(path))
    except SpecError as exc:
        fields = {"yaml", "(top level)", *TOP_LEVEL}
        if exc.problem.startswith("unknown field; allowed: "):  # a key the text happened to define
            fields.add(exc.where)
        check_spec_error(exc, path, fields)
    else:
        return  # a truncated spec can still be whole
    empty_cwd_exit_2(["--spec", str(path)], cwd, capsys)


@FUZZ
@given(
    items=st.lists(
        st.text(max_size=16) | field_values.map(lambda fv: f"{fv[0]}={dump(fv[1]).strip()}"), min_size=1, max_size=3
    )
)
def test_fuzzed_overrides_are_a_clear_spec_error_and_the_cli_writes_nothing(
    items: list[str], study_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    cwd, specs = study_dirs
    path = specs / "spec.yaml"
    path.write_text(dump(BASE), encoding="utf-8")
    try:
        load_spec(str(path), parse_overrides(items))
    except SpecError as exc:
        assert len(str(exc).splitlines()) == 1 and exc.where, str(exc)
    else:
        assume(False)  # valid overrides would start a study
    argv = ["--spec", str(path)] + [token for item in items for token in ("--set", item)]
    assume(not any(item.startswith("-") for item in items))  # argparse would read it as a flag
    empty_cwd_exit_2(argv, cwd, capsys)
    assert os.listdir(specs) == ["spec.yaml"]


# -- every entry point: bad calls write nothing --------------------------------------------------------

ENTRY_POINTS = {
    "train": train.main,
    "study": study_cli.main,
    "report": report_cli.main,
    "invariance": invariance_cli.main,
    "invariance_report": invariance_report_cli.main,
    "gradcheck": gradcheck_cli.main,
}
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)  # 10**9 leaves
SPEC_FILES = {
    "bomb.yaml": ALIAS_BOMB,
    "pruner.yaml": dump({**BASE, "pruner": {"type": "median", "n_warmup_steps": "5"}}),
    "hyperband.yaml": dump({**BASE, "pruner": {"type": "hyperband", "reduction_factor": 1.5}}),
    "huge.yaml": dump({**BASE, "fixed": {**BASE["fixed"], "width": 10_000_000}}),
}
# (entry point, argv, environment): each call is bad input (files under the working directory are made first).
BAD_CALLS = [
    ("train", ["--width", "10000000"], {}),
    ("train", ["--depth", "100000"], {}),
    ("train", ["--model", "cnn", "--kernel-size", "100001"], {}),
    ("train", ["--seq-len", "1e9"], {}),
    ("train", ["--dataset", "adding", "--loss", "mse", "--model", "lstm", "--seq-len", "1000000000"], {}),
    ("train", ["--seed", "4294967296"], {}),
    ("train", ["--lr", "1e39"], {}),
    ("train", ["--dataset", "mnist", "--data-dir", "cut"], {}),  # a truncated MNIST file
    ("train", ["--dataset", "mnist", "--data-dir", "junk"], {}),  # a gzip file that is not gzip
    ("train", ["--dataset", "mnist", "--data-dir", "short"], {}),  # an IDX file shorter than its header says
    ("train", ["--dataset", "mnist", "--data-dir", "magic"], {}),  # not an IDX file
    ("study", ["--set", "dataset=mnist", "--set", "data_dir=cut"], {}),
    ("train", [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),  # nothing listens on the discard port
    ("train", [], {"MLFLOW_TRACKING_URI": "sqlite:///notadb.db"}),
    ("train", [], {"MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef"}),
    ("train", [], {"MLFLOW_EXPERIMENT_NAME": ""}),
    ("study", ["--workers", "100000"], {}),
    ("study", ["--workers", "-1"], {}),
    ("study", ["--n-trials", "x"], {}),
    ("study", ["--spec", "bomb.yaml"], {}),
    ("study", ["--spec", "pruner.yaml"], {}),
    ("study", ["--spec", "hyperband.yaml"], {}),
    ("study", ["--spec", "huge.yaml"], {}),
    ("study", ["--set", "width=10000000"], {}),
    ("study", ["--set", "seed=-1"], {}),
    ("study", ["--study-name", "a b"], {}),
    ("study", ["--set", "max_steps=2"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
    ("study", ["--set", "max_steps=2"], {"MLFLOW_TRACKING_URI": "sqlite:///notadb.db"}),
    ("report", [], {}),
    ("report", ["--study", "never-ran"], {}),
    ("report", ["--study", "x", "--bogus", "1"], {}),
    ("invariance", ["--models", "nothing"], {}),
    ("invariance", ["--max-steps", "x"], {}),
    ("invariance", ["--width", "0"], {}),
    ("invariance", ["--width", "10000000"], {}),
    ("invariance_report", ["--run-id", "0123456789abcdef0123456789abcdef"], {}),
    ("invariance_report", ["--bogus"], {}),
    ("gradcheck", ["--only", "nothing"], {}),
    ("gradcheck", ["--bogus"], {}),
]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: (size, modification time)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _runs(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as con:
        count = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    return count


def _bad_inputs(cwd: Path) -> None:
    """The files the bad calls name: spec files, a truncated and a damaged MNIST folder, a store that is not one."""
    import gzip

    for name, text in SPEC_FILES.items():
        (cwd / name).write_text(text, encoding="utf-8")
    damages = {
        "cut": lambda raw: gzip.compress(raw)[:-9],
        "junk": lambda raw: b"not gzip" + raw,
        "short": lambda raw: gzip.compress(raw[:-1]),
        "magic": lambda raw: gzip.compress(b"\x1f" + raw[1:]),
    }
    for folder, damage in damages.items():
        (cwd / folder / "mnist").mkdir(parents=True)
        for name in MNIST_FILES:
            raw = bytes.fromhex("00000801") + (3).to_bytes(4, "big") + bytes([1, 2, 3])
            (cwd / folder / "mnist" / f"{name}.gz").write_bytes(
                damage(raw) if name == MNIST_FILES[0] else gzip.compress(raw)
            )
    (cwd / "notadb.db").write_bytes(b"SQLite format 2\0 this is not a database" * 10)


@pytest.mark.parametrize(
    "entry, argv, env", BAD_CALLS, ids=[f"{e}:{' '.join(a)}:{','.join(v)}" for e, a, v in BAD_CALLS]
)
def test_a_bad_call_of_any_entry_point_is_one_line_exit_2_and_writes_nothing(
    entry: str,
    argv: list[str],
    env: dict[str, str],
    tmp_path: Path,
    empty_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import mlflow

    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    _bad_inputs(tmp_path)
    uri = copy_store(empty_store, tmp_path)
    for name, value in {"MLFLOW_TRACKING_URI": uri, **env}.items():
        monkeypatch.setenv(name, value)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    before, runs = _files(tmp_path), _runs(tmp_path / "mlflow.db")
    capsys.readouterr()
    try:
        code = ENTRY_POINTS[entry](argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    finally:
        mlflow.set_tracking_uri(previous)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and not out.strip(), err
    assert _runs(tmp_path / "mlflow.db") == runs
    assert _files(tmp_path) == before


@pytest.mark.parametrize("entry", ["train", "study", "report"])
def test_a_read_only_store_is_one_line_exit_2_and_stays_as_it_was(
    entry: str, tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A store this process may not write: an immutable file (`chattr +i`), which even root cannot write."""
    import subprocess

    import mlflow

    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    uri = copy_store(empty_store, tmp_path)
    db = tmp_path / "mlflow.db"
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
    previous = mlflow.get_tracking_uri()
    try:
        before = _files(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # an earlier test's explicit URI would win over the variable
        argv = {"train": ["--max-steps", "1"], "study": ["--set", "max_steps=2"], "report": ["--study", "default"]}[
            entry
        ]
        capsys.readouterr()
        code = ENTRY_POINTS[entry](argv)
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and "is read-only" in err, err
        assert _files(tmp_path) == before
    finally:
        mlflow.set_tracking_uri(previous)
        subprocess.run(["chattr", "-i", str(db)], check=True)
