"""Optuna storages from one string: a journal file on one machine, any RDB URL beyond it."""

from __future__ import annotations

import os
import random
import time
import warnings

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from common.preflight import mask  # noqa: F401 (re-exported: studies mask storage URLs too)
from studies import DEFAULT_STORAGE  # noqa: F401 (re-exported)

# RDB storages run a heartbeat: a trial whose worker stopped beating for GRACE seconds is failed (and
# retried if the spec allows) by the next worker that starts a trial, or by the next invocation.
# The environment can shorten both (the crash tests do); the defaults suit studies on many machines.
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30
HEARTBEAT_ENV, GRACE_ENV = "STUDY_HEARTBEAT_SECONDS", "STUDY_GRACE_SECONDS"


def heartbeat() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: the defaults or STUDY_HEARTBEAT/GRACE_SECONDS."""
    interval = int(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_SECONDS)
    grace = int(os.environ.get(GRACE_ENV) or GRACE_SECONDS)
    if not 0 < interval < grace:
        raise ValueError(f"{HEARTBEAT_ENV}={interval}, {GRACE_ENV}={grace}: need 0 < heartbeat < grace")
    return interval, grace


def retry(max_retry: int | None = None) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a failed trial (its params, as a new trial), at most max_retry times per trial."""
    with warnings.catch_warnings():  # "experimental" in Optuna 5; its older name is deprecated
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def is_rdb(url: str) -> bool:
    """Whether the storage string is an SQLAlchemy URL (sqlite://, postgresql://, …)."""
    return "://" in url


def open_storage(url: str, retries: int = 0) -> optuna.storages.BaseStorage:
    """A journal file (several local processes share it through a file lock) or an RDB storage."""
    if is_rdb(url):
        return _rdb_storage(url, retries)
    # The open-lock works on any local file system (the symlink lock needs symlink support).
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def _rdb_storage(url: str, retries: int, attempts: int = 5) -> RDBStorage:
    """RDBStorage with the heartbeat, retrying the races of workers that create Optuna's tables at once."""
    interval, grace = heartbeat()
    callback = retry(retries) if retries else None

    def make() -> RDBStorage:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna; we rely on it deliberately
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, heartbeat_interval=interval, grace_period=grace, heartbeat_stale_trial_callback=callback
            )

    for _ in range(attempts - 1):
        try:
            return make()
        # On an empty database every worker creates the tables, the schema version row and alembic's
        # stamp; all but one fail on a unique constraint, and find everything in place when they retry.
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, optuna.exceptions.StorageInternalError):
            time.sleep(0.2 + random.random())
    return make()
