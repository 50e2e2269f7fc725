"""The ingest's main process does not carry modules it never runs.

Imported code is most of the main process's memory, and some of it came in
only because it is installed (httpx's command-line client with rich,
pygments and click; trio, which httpcore imports when it finds it) or ran
once (alembic and Mako, for the migration a fresh database needs). Each
check runs in a fresh interpreter, since this test process has imported
much more.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.child import INGEST_PASS, run_python
from tests.support.http import FixtureServer
from tests.test_ingest import rss

# What an asyncio ingest never runs: httpx's CLI and what only it imports, trio;
# httpcore and what it runs on (the fetcher has its own transport); what a
# migration ran before the pass began; and, on SQLite, SQLAlchemy's
# PostgreSQL dialect (a module per PG driver, ~2 MB).
NOT_NEEDED = (
    *("httpx._main", "trio", "pygments", "rich.progress", "rich.syntax"),
    *("httpcore", "anyio", "h11", "alembic", "mako"),
    "sqlalchemy.dialects.postgresql",
)

PASS = (
    INGEST_PASS
    + """
print(sorted((s.source_id, s.outcome.value, s.new) for s in stats))
print(sorted(name for name in sys.argv[3:] if name in sys.modules))
"""
)


def _installed(name: str) -> bool:
    return (
        subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.mark.parametrize("sources", [1, 3])
def test_a_cold_ingest_pass_imports_neither_httpx_cli_nor_trio_nor_alembic(
    http_server: FixtureServer, tmp_path: Path, sources: int
) -> None:
    if not (_installed("trio") or _installed("httpx._main")):
        pytest.skip("neither trio nor httpx's CLI dependencies are installed here")
    yaml = ""
    for n in range(sources):
        http_server.add(f"/lean{n}.xml", rss([(f"g{n}", f"title {n}", "본문 text")]))
        yaml += f"  - {{id: s{n}, url: '{http_server.url(f'/lean{n}.xml')}'}}\n"

    stats, loaded = run_python("-c", PASS, str(tmp_path), yaml, *NOT_NEEDED)

    # The pass migrated a fresh database, fetched and stored, without those modules.
    assert stats == str(sorted((f"s{n}", "ok", 1) for n in range(sources)))
    assert loaded == "[]"


def test_hidden_modules_only_hides_for_the_block() -> None:
    script = (
        "import sys\n"
        "from aggregator.lean import hidden_modules\n"
        "import json\n"
        "with hidden_modules('csv', 'json'):\n"
        "    try:\n"
        "        import csv\n"
        "    except ImportError:\n"
        "        print('csv hidden')\n"
        "    import json  # already imported: left as it is\n"
        "    print('json', json.dumps(1))\n"
        "import csv\n"
        "print('csv after', csv.QUOTE_ALL)\n"
    )
    assert run_python("-c", script) == ["csv hidden", "json 1", "csv after 1"]


OPEN = """
import sys
from aggregator.store import Store
store = Store.open(sys.argv[1], isolated_migration=True)
print(store.engine.connect().exec_driver_sql("SELECT version_num FROM alembic_version").all())
print([name for name in ("alembic", "mako") if name in sys.modules])
"""


@pytest.mark.parametrize("fresh", [True, False])
def test_an_isolated_migration_brings_the_schema_to_head_without_importing_alembic(
    tmp_path: Path, fresh: bool
) -> None:
    from aggregator.store.engine import _head_from_files

    url = f"sqlite:///{tmp_path}/db.sqlite"
    if not fresh:  # an older schema, as an upgrade finds it
        from alembic import command

        from aggregator.store.engine import _alembic_config, make_engine

        engine = make_engine(url)
        cfg = _alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        engine.dispose()

    version, loaded = run_python("-c", OPEN, url)

    assert version == str([(_head_from_files(),)])
    assert loaded == "[]"


def test_an_isolated_migration_that_fails_raises_store_error_with_alembic_s_reason(
    tmp_path: Path,
) -> None:
    from aggregator.errors import StoreError
    from aggregator.store import Store
    from aggregator.store.engine import make_engine

    url = f"sqlite:///{tmp_path}/db.sqlite"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('9999')")
    engine.dispose()

    with pytest.raises(StoreError) as raised:
        Store.open(url, isolated_migration=True)

    message = str(raised.value)
    assert message.startswith(f"cannot migrate database {url}: ")
    assert "9999" in message  # alembic's own words: no such revision


@pytest.mark.postgres
def test_an_isolated_migration_of_an_empty_postgres_database(pg_url: str) -> None:
    """The URL (with its password, if any) reaches the child through stdin."""
    import sqlalchemy as sa

    from aggregator.store.engine import _head_from_files

    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # back to an empty database, as a first start finds it
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()

    version, loaded = run_python("-c", OPEN, pg_url)

    assert version == str([(_head_from_files(),)])
    assert loaded == "[]"
