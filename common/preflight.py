"""Pre-flight checks of the tracking store and the MLflow environment, before anything is trained or written.

An unreachable tracking server made MLflow retry for minutes (its default: 7 retries with backoff,
120 s per request) before a long traceback; a corrupt or read-only store, an MLFLOW_RUN_ID of no run
and an empty MLFLOW_EXPERIMENT_NAME failed as tracebacks too. Here each is one ConfigError naming the
variable, asked with a short timeout and no retries; the run itself keeps MLflow's patient defaults.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from common.errors import ConfigError

PREFLIGHT_TIMEOUT = 10  # seconds for the one pre-flight request (a server that answers answers in far less)
TRACKING_ENV, RUN_ENV, EXPERIMENT_ENV = "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"


@contextlib.contextmanager
def _impatient() -> Iterator[None]:
    """MLflow's HTTP client without retries and with a short timeout, for the block only."""
    tight = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PREFLIGHT_TIMEOUT)}
    saved = {name: os.environ.get(name) for name in tight}
    os.environ.update(tight)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for params, tags, logs and printed output."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)  # the password as SQLAlchemy parses it
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)  # libpq also takes ?password=


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def sqlite_problem(uri: str) -> str | None:
    """Why the SQLite file of a `sqlite:///` URI cannot be a tracking store (not a database, read-only), or None."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    path = Path(unquote(parsed.path[1:]))  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    if not path.exists():
        writable = os.access(path.parent, os.W_OK)
        return None if writable else f"a writable folder for a new store; {path.parent} is not writable"
    if not path.is_file():
        return f"an SQLite file; {path} is not a file"
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):  # SQLite writes a journal beside it
        return f"a writable SQLite file in a writable folder; {path} is read-only"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"an SQLite database; {path} is not one ({exc})"
    return None


def check_tracking() -> None:
    """ConfigError (one line, naming the variable) if the tracking store or MLflow's variables cannot serve a run."""
    uri = mlflow.get_tracking_uri()
    experiment = os.environ.get(EXPERIMENT_ENV)
    if experiment is not None and not experiment.strip():
        raise ConfigError(EXPERIMENT_ENV, experiment, "an experiment name, or the variable unset (experiment Default)")
    problem = sqlite_problem(uri)
    if problem:
        raise ConfigError(TRACKING_ENV, mask(uri), problem)
    run_id = os.environ.get(RUN_ENV)
    with _impatient():
        client = MlflowClient(uri)
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # any failure to reach the store is the same one-line refusal
            raise ConfigError(TRACKING_ENV, mask(uri), f"a reachable tracking store ({_one_line(exc)})") from None
        if run_id:
            try:
                client.get_run(run_id)
            except Exception:  # MLflow raises its own or the store's exception for a bad id
                raise ConfigError(RUN_ENV, run_id, f"the id of a run in {mask(uri)}, or the variable unset") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C inside the block (KeyboardInterrupt at once); the previous handler after it.

    Lightning's own handler only sets a flag read between steps (minutes apart on a deep net); it keeps
    calling the handler it finds (it chains them), so this one still interrupts at once.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)  # a caller in the same process (a test) keeps its own
