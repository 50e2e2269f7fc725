"""Database fixtures: a fresh SQLite file and a fresh PostgreSQL database per test.

PostgreSQL comes from the throwaway cluster that ``scripts/test`` starts with
Debian's ``pg_virtualenv`` (it exports PGHOST, PGPORT, PGUSER, PGPASSWORD). A
missing server fails the PostgreSQL tests loudly: they must never be skipped
silently. Each test gets its own database cloned from a migrated template,
which costs tens of milliseconds instead of a full migration.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.store import Store

_counter = itertools.count()


def _pg_admin_url(database: str = "postgres") -> str:
    missing = [v for v in ("PGHOST", "PGUSER") if not os.environ.get(v)]
    if missing:
        pytest.fail(
            "PostgreSQL tests need the throwaway cluster: run them through scripts/test "
            f"(it wraps pytest in pg_virtualenv); {', '.join(missing)} not set",
            pytrace=False,
        )
    user = os.environ["PGUSER"]
    password = os.environ.get("PGPASSWORD", "")
    host = os.environ["PGHOST"]
    port = os.environ.get("PGPORT", "5432")
    auth = f"{user}:{password}@" if password else f"{user}@"
    return f"postgresql+psycopg://{auth}{host}:{port}/{database}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; yields the admin URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    name = f"aggregator_template_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    store = Store.open(_pg_admin_url(name))
    store.close()
    yield name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    import sqlalchemy as sa

    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_admin_url(name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aggregator.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.close()
