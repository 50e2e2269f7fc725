"""Opening a store on a database already at the newest revision skips alembic.

An ingest pass opens the store each time; alembic and its templates cost
~8 MB of the main process and ~0.1 s. The cheap check (migration files read
as text, one query) must agree with alembic about the head, and a database
at any older revision must still be migrated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from aggregator.store import Store
from aggregator.store.engine import _alembic_config, _at_head, _head_from_files, make_engine

ROOT = Path(__file__).resolve().parent.parent
SET_VERSION = sa.text("UPDATE alembic_version SET version_num = :v")


def _opens_without_alembic(url: str) -> bool:
    code = (
        "import sys\nfrom aggregator.store import Store\n"
        f"Store.open({url!r}).close()\nprint('alembic' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True
    )
    return out.stdout.strip() == "False"


def test_head_read_from_the_files_is_alembics_head() -> None:
    assert _head_from_files() == ScriptDirectory.from_config(_alembic_config()).get_current_head()


def test_a_current_database_opens_without_importing_alembic(db_url: str) -> None:
    Store.open(db_url).close()  # empty: migrated with alembic
    assert _opens_without_alembic(db_url)


def test_an_empty_database_goes_to_alembic(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert not _at_head(engine)  # no version table yet
    finally:
        engine.dispose()


def test_any_other_recorded_revision_goes_to_alembic(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        Store.open(db_url).close()
        assert _at_head(engine)
        script = ScriptDirectory.from_config(_alembic_config())
        older = [r.revision for r in script.walk_revisions()][1:]
        for recorded in [*older, "", "9999"]:
            with engine.begin() as conn:
                conn.execute(SET_VERSION, {"v": recorded})
            assert not _at_head(engine), recorded
        with engine.begin() as conn:  # two rows (alembic's branches): not "at head" either
            head = script.get_current_head()
            conn.execute(SET_VERSION, {"v": head})
            conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0001')"))
        assert not _at_head(engine)
    finally:
        engine.dispose()
