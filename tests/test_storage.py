"""Storage strings: masked credentials, the heartbeat settings, journal vs RDB."""

from __future__ import annotations

import pytest
from optuna.storages import JournalStorage, RDBStorage

from studies.storage import GRACE_SECONDS, HEARTBEAT_SECONDS, heartbeat, is_rdb, mask, open_storage


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://gpl:s3cret@db.lab:5432/optuna", "postgresql://gpl:***@db.lab:5432/optuna"),
        ("postgresql+psycopg://gpl:p%40ss:word@db/optuna", "postgresql+psycopg://gpl:***@db/optuna"),
        ("postgresql://:s3cret@db/optuna", "postgresql://:***@db/optuna"),
        (
            "postgresql://gpl@db/optuna?password=s3cret&sslmode=require",
            "postgresql://gpl@db/optuna?password=***&sslmode=require",
        ),
        ("http://user:s3cret@mlflow.lab:5000", "http://user:***@mlflow.lab:5000"),
        ("postgresql://gpl@db/optuna", "postgresql://gpl@db/optuna"),  # PGPASSWORD / ~/.pgpass: nothing to hide
        ("sqlite:///optuna.db", "sqlite:///optuna.db"),
        ("runs/optuna.journal", "runs/optuna.journal"),
    ],
)
def test_mask_hides_the_password_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask(url) == masked
    assert "s3cret" not in mask(url)


def test_heartbeat_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDY_HEARTBEAT_SECONDS", raising=False)
    monkeypatch.delenv("STUDY_GRACE_SECONDS", raising=False)
    assert heartbeat() == (HEARTBEAT_SECONDS, GRACE_SECONDS) == (10, 30)
    monkeypatch.setenv("STUDY_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("STUDY_GRACE_SECONDS", "4")
    assert heartbeat() == (1, 4)
    monkeypatch.setenv("STUDY_GRACE_SECONDS", "1")
    with pytest.raises(ValueError, match="heartbeat < grace"):
        heartbeat()


def test_journal_file_or_rdb_url(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDY_HEARTBEAT_SECONDS", "2")
    monkeypatch.setenv("STUDY_GRACE_SECONDS", "5")
    assert not is_rdb(str(tmp_path / "optuna.journal"))
    assert isinstance(open_storage(str(tmp_path / "optuna.journal")), JournalStorage)
    rdb = open_storage(f"sqlite:///{tmp_path}/optuna.db", retries=2)
    assert isinstance(rdb, RDBStorage)
    assert (rdb.heartbeat_interval, rdb.grace_period) == (2, 5)
    assert rdb.get_heartbeat_stale_trial_callback()._max_retry == 2
