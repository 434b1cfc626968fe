"""Study storage: the embedded SQLite file by default, PostgreSQL (or any SQLAlchemy URL) to scale out.

Trials of a dead worker are found by Optuna's heartbeats, marked failed and queued again by
`RetryHeartbeatStaleTrialCallback`; nothing home-made sits between the workers and the storage.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

DEFAULT_RESULTS = Path("results")
HEARTBEAT_SECONDS = 30
MAX_RETRY = 2


class StorageError(RuntimeError):
    """A storage URL that cannot be used; the message says why and how to fix it."""


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir) / 'optuna.db'}"


def resolve_url(url: str | None, results_dir: Path) -> str:
    """The URL given, else $OPTUNA_STORAGE, else results/optuna.db."""
    return url or os.environ.get("OPTUNA_STORAGE") or default_url(results_dir)


def redact(url: str) -> str:
    """The URL with any password replaced, for logs, leaderboards and exported files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str, *, heartbeat: int | None = HEARTBEAT_SECONDS) -> RDBStorage:
    """Connect to a storage with heartbeats on, or raise StorageError naming the URL (redacted)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the folder for {url}: {exc}") from None
        if not os.access(path.parent, os.W_OK):
            raise StorageError(f"cannot write {path}: the folder is not writable; pass --results or --storage")
    if url.startswith(("postgresql", "postgres")) and "+" not in url.split(":", 1)[0]:
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3, installed with fer-search
    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8: say it once, in docs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {}
            if heartbeat:
                kwargs = dict(
                    heartbeat_interval=heartbeat,
                    grace_period=heartbeat * 3,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:
        reason = str(exc).splitlines()[0]
        password = _password(url)
        if password:  # drivers may quote the connection string back
            reason = reason.replace(password, "***")
        raise StorageError(
            f"cannot open the study storage {redact(url)}: {reason}. Check that the server is up and "
            f"the URL is right, or drop --storage to use the embedded SQLite file"
        ) from None


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage=storage, include_best_trial=False)]
