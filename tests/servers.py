"""Real servers for the scale-out tests: a throwaway PostgreSQL and an `mlflow server`, both on 127.0.0.1.

Each starts in a temporary folder on a free port and is stopped (and its folder removed) on exit. Where
a component is missing, `postgres_missing()` says why, for a pytest skip reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # every server a test starts listens on loopback only
PG_PASSWORD = "s3cret-pw"  # a real password: TCP connections authenticate with scram-sha-256


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL binaries (newest version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    if _pg_bin() is None:
        return "PostgreSQL is not installed (Debian package `postgresql`; `make test` installs it as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: connection URLs for its `postgres` superuser."""

    port: int

    def url(self, database: str = "postgres", password: str = PG_PASSWORD) -> str:
        """SQLAlchemy URL (psycopg 3) of `database`, with the superuser's password in it."""
        return f"postgresql://postgres:{password}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Make an empty database and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start on a free port (password auth over TCP); stopped and removed on exit."""
    reason = postgres_missing()
    if reason:
        raise RuntimeError(reason)
    bin_dir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="gpl-pg-"))  # under /tmp: the postgres user must reach it
    data, pwfile = folder / "data", folder / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    run = dict(check=True, capture_output=True, text=True)
    try:
        try:
            subprocess.run(
                _as_postgres(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "postgres",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        f"--pwfile={pwfile}",
                    ]
                ),
                **run,
            )
            options = f"-p {port} -k {folder} -c listen_addresses={HOST} -c max_connections=200 -c fsync=off"
            subprocess.run(
                _as_postgres(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
                ),
                **run,
            )
        except subprocess.CalledProcessError as exc:  # only the start: the caller's own failures stay theirs
            raise RuntimeError(f"PostgreSQL failed to start: {exc.stderr or exc.stdout}") from exc
        yield Postgres(port)
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 at a free port, serving artifacts from `artifacts`; yields its URL."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = open(artifacts.parent / f"mlflow-server-{port}.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
    ]
    # MLflow 3's job execution (GenAI scorers) starts seven more processes that runs and artifacts never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (artifacts.parent / f"mlflow-server-{port}.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not come up at {url}:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
