"""Engine creation, SQLite tuning and migrations."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


# How long a SQLite writer waits for another's lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 10.0


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (the web app) run while the one writer ingests;
        # busy_timeout turns "database is locked" into a short wait.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint the WAL every ~40 MB instead of every 4 MB: an ingest
        # writes tens of MB, and each checkpoint is an fsync on the write path
        # (measured: commit time down 60% on 500 feeds).
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        # A 4 MB page cache: the ingest's writes are appends, and a larger
        # cache only grew the main process (32 MB cost ~27 MB of PSS; 8 MB
        # against 4 MB, ~4 MB of a cold ingest's peak PSS and the same
        # store CPU, 500 feeds; the pages the OS caches are read back cheaply).
        cursor.execute("PRAGMA cache_size=-4096")
        # Savepoints (one per source of a batched write, one per insert) keep
        # their undo pages in a sub-journal: in memory instead of a temp file.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    return apply


def make_engine(url: str) -> Engine:
    """Create an engine for a SQLite path URL or a PostgreSQL URL (psycopg 3).

    A SQLite URL may carry ``?timeout=SECONDS``: how long a write waits for a
    lock held by another process (default 10 s).
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        if url.startswith("sqlite"):
            parsed = make_url(url)
            busy = float(parsed.query.get("timeout", SQLITE_BUSY_TIMEOUT))  # type: ignore[arg-type]
            parsed = parsed.difference_update_query(["timeout"])
            path = parsed.database or ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": busy})
            event.listen(engine, "connect", _sqlite_pragmas(busy))
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StoreError(f"cannot open database {safe_url(url)}: {exc}") from None
    return engine


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


# ``revision = "0011"`` / ``down_revision = "0010"`` (or None) in a migration file.
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:"([^"]*)"|None)\s*$', re.M)


def _head_from_files() -> str | None:
    """The newest revision, read from the migration files without importing alembic.

    The one revision no other file names as its ``down_revision``; None when
    that is not a single, plainly written answer (a merge, a branch, a
    revision set some other way), and alembic then decides as before.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        found = dict(_REVISION.findall(path.read_text("utf-8")))
        if "revision" not in found or "down_revision" not in found or not found["revision"]:
            return None
        revisions.add(found["revision"])
        if found["down_revision"]:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """Whether the database already records the newest revision: a query, no alembic.

    Alembic and its templates cost ~8 MB and ~0.1 s to import; a store opened
    on a current database (every ingest after the first) needs neither. Any
    doubt (no version table yet, an unexpected answer) means "not at head",
    and :func:`migrate` asks alembic.
    """
    head = _head_from_files()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
            conn.rollback()
    except SQLAlchemyError:
        return False
    return [tuple(r) for r in rows] == [(head,)]


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine, *, isolated: bool = False) -> None:
    """Bring the schema to the newest revision (a no-op when it is current).

    ``isolated``: run alembic in a child process, so that this one never
    imports it. Alembic, Mako and the Pygments Mako pulls in stay imported
    for good once a migration ran: ~9 MB of PSS for the rest of a cold
    ingest, or of a scheduler's life, for code that ran once at start. The
    commands and the scheduler ask for it; an in-memory SQLite database
    (which no other process can open) is always migrated here.
    """
    if _at_head(engine):
        return
    if isolated and _shareable(engine):
        _migrate_in_child(engine)
        return
    _migrate_here(engine)


def _shareable(engine: Engine) -> bool:
    """Whether another process can open the same database (not an in-memory SQLite)."""
    if engine.dialect.name != "sqlite":
        return True
    return engine.url.database not in (None, "", ":memory:")


def _migrate_in_child(engine: Engine) -> None:
    """:func:`_migrate_here` in a fresh interpreter; its failure raised here as ``StoreError``.

    The URL goes through stdin, never the command line, where any local
    user could read a password in the process list. The child opens the
    database with :func:`make_engine` as this process did (a SQLite
    ``?timeout=`` aside: the child waits the default for a lock).
    """
    url = engine.url.render_as_string(hide_password=False)
    log.info("migrating database %s to %s", safe_url(url), _head_from_files() or "the newest")
    # The child must import this same copy of the package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(
        [sys.executable, "-c", "from aggregator.store.engine import _migrate_from_stdin as m; m()"],
        input=url,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    # Connections opened before the schema changed are not reused.
    engine.dispose()
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if not reason.startswith("cannot migrate database"):
            reason = f"cannot migrate database {safe_url(url)}: {reason}"
        raise StoreError(reason)


def _migrate_from_stdin() -> None:
    """The child of :func:`_migrate_in_child`: migrate the database whose URL is on stdin."""
    engine = make_engine(sys.stdin.read())
    try:
        _migrate_here(engine)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(3) from None
    finally:
        engine.dispose()


def _migrate_here(engine: Engine) -> None:
    """Run alembic's upgrade to head on ``engine``, in this process."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as conn:
            if sqlite:
                # Batch migrations copy a table, drop the original and rename
                # the copy; with enforcement on, dropping ``items`` would
                # fail on (or delete) the rows that reference it. SQLite only
                # honours this pragma outside a transaction, hence before begin.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    current = MigrationContext.configure(conn).get_current_revision()
                    head = ScriptDirectory.from_config(cfg).get_current_head()
                    if current == head:
                        return
                    log.info("migrating database from %s to %s", current or "empty", head)
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite:
                        _check_foreign_keys(conn)
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot migrate database {safe_url(str(engine.url))}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from None


def _check_foreign_keys(conn: Connection) -> None:
    """Fail the migration (rolled back) if it left a dangling reference on SQLite."""
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise StoreError(
            f"migration left {len(broken)} rows with a dangling reference "
            f"(first: table {broken[0][0]}, row {broken[0][1]}); nothing was changed"
        )
