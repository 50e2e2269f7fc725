"""The part of :class:`~aggregator.store.Store` every operation mixin builds on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..errors import StoreError
from .engine import make_engine, migrate, safe_url

# Parameters per IN (...) list; SQLite's default limit is 32766, PostgreSQL's 65535.
CHUNK = 500


def insert_for(dialect_name: str) -> Any:
    """The dialect's INSERT construct, the one with ``on_conflict_do_*``.

    SQLAlchemy's PostgreSQL dialect is imported here, on first use, not with
    the store: its package imports a module per PostgreSQL driver, ~2 MB of
    PSS in every SQLite process (an ingest's main process among them).
    """
    if dialect_name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    return sqlite.insert


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``values`` in slices of at most ``size``: one IN list each."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class StoreBase:
    """One database, opened and migrated; safe to share across threads.

    Operation groups (items, digests, subscribers, deliveries) are mixins that
    subclass this, so each sees ``engine``/``transaction`` with full typing.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(
        cls, url: str, *, migrate_schema: bool = True, isolated_migration: bool = False
    ) -> Self:
        """Open (and by default migrate) the database at ``url``.

        ``isolated_migration``: a migration, if one is needed, runs in a child
        process (see :func:`~aggregator.store.engine.migrate`), for long or
        memory-measured processes: the commands, the scheduler.
        """
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            engine.dispose()
            first = str(exc).splitlines()[0]
            raise StoreError(f"cannot connect to database {safe_url(url)}: {first}") from None
        if migrate_schema:
            migrate(engine, isolated=isolated_migration)
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; database errors become :class:`StoreError`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            first = str(exc.orig or exc).splitlines()[0]
            raise StoreError(f"database error ({safe_url(str(self.engine.url))}): {first}") from exc

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def _insert(self, table: Any) -> Any:
        """A dialect-specific INSERT that supports ``on_conflict_do_*``."""
        return insert_for(self.dialect)(table)
