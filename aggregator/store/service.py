"""What the running service needs from the store beyond the stages' queries.

The one-scheduler lock: at most one ``aggregator run`` works on a database.

Two services on one database would fetch every source twice and race for the
pid file that ``aggregator reload`` reads. The lock is taken before anything
starts and held for the life of the process; the operating system (SQLite:
``flock`` on a file next to the database) or the server (PostgreSQL: a
session advisory lock) drops it when the process dies, so a crash never
leaves a stale lock behind, unlike a pid file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import text, update

from ..errors import ServiceError
from . import schema
from .base import StoreBase

__all__ = ["SERVICE_LOCK_KEY", "ServiceLock", "acquire_service_lock", "cap_next_fetch"]

# An arbitrary constant that names "the aggregator scheduler" among the
# advisory locks other programs on the same PostgreSQL cluster may take.
SERVICE_LOCK_KEY = 0x4B46_4449  # "KFDI"


class ServiceLock:
    """A held lock; :meth:`release` gives it back (also safe to call twice)."""

    def __init__(self, description: str, release: Callable[[], None]) -> None:
        self.description = description
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def acquire_service_lock(store: StoreBase, *, holder: str) -> ServiceLock:
    """Take the database's service lock or raise :class:`ServiceError` at once.

    ``holder`` (e.g. ``pid 1234``) is written into the SQLite lock file so
    that the refusal can say who has the database.
    """
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:":
            return ServiceLock("in-memory database: nothing to share", lambda: None)
        return _file_lock(Path(database), holder)
    return _advisory_lock(store)


def _file_lock(database: Path, holder: str) -> ServiceLock:
    path = database.with_name(database.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError):
            other = os.read(fd, 200).decode("utf-8", "replace").strip()
        os.close(fd)
        raise ServiceError(
            f"another `aggregator run` ({other or 'unknown process'}) is using {database}; "
            "stop it first, or use `aggregator reload` to apply a changed feeds.yaml"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{holder}\n".encode())

    def release() -> None:
        # The file stays: deleting it would let a third process lock a new
        # inode while a second one still waits on the old.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return ServiceLock(f"lock file {path}", release)


def _advisory_lock(store: StoreBase) -> ServiceLock:
    conn = store.engine.connect()
    got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": SERVICE_LOCK_KEY})
    held = bool(got.scalar())
    conn.commit()
    if not held:
        conn.close()
        raise ServiceError(
            "another `aggregator run` holds this database's service lock "
            f"(PostgreSQL advisory lock {SERVICE_LOCK_KEY}); stop it first, or use "
            "`aggregator reload` to apply a changed feeds.yaml"
        )

    def release() -> None:
        with contextlib.suppress(Exception):
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SERVICE_LOCK_KEY})
            conn.commit()
        conn.close()

    return ServiceLock(f"advisory lock {SERVICE_LOCK_KEY}", release)


def cap_next_fetch(store: StoreBase, source_id: str, latest: datetime) -> bool:
    """Move a source's ``next_fetch_at`` back to ``latest`` if it lies later; True if moved.

    A shorter ``interval:`` applied by a reload must not wait out the
    remainder of the old, longer one.
    """
    sources = schema.sources
    with store.transaction() as conn:
        result = conn.execute(
            update(sources)
            .where(sources.c.id == source_id, sources.c.next_fetch_at > latest)
            .values(next_fetch_at=latest)
        )
    return bool(result.rowcount)
