"""Optuna storages from one string: a journal file on one machine, any RDB URL beyond it."""

from __future__ import annotations

import re

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

DEFAULT_STORAGE = "optuna.journal"
# RDB storages run a heartbeat: a trial whose worker stopped beating for GRACE seconds is failed (and
# retried if the spec allows) by the next worker that starts or finishes a trial.
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for params, tags, logs and printed output."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def is_rdb(url: str) -> bool:
    """Whether the storage string is an SQLAlchemy URL (sqlite://, postgresql://, …)."""
    return "://" in url


def open_storage(url: str, retries: int = 0) -> optuna.storages.BaseStorage:
    """A journal file (several local processes share it through a file lock) or an RDB storage."""
    if is_rdb(url):
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=retries) if retries else None,
        )
    # The open-lock works on any local file system (the symlink lock needs symlink support).
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
