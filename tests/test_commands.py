"""Every row of the README's command table, through the real entry point.

Each test runs ``python -m aggregator`` (what the console script runs) as a
subprocess, in a folder of its own with a feeds.yaml whose sources live on the
fixture HTTP server, and asserts the effect the README documents: the exit
code, the line printed, the rows stored, the requests the sources received,
the page served. Nothing here assembles a command app in the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.feeds import simple_rss
from tests.support.http import FixtureServer, unused_port
from tests.support.smtp import SmtpFixture

ROOT = Path(__file__).resolve().parent.parent
# The newest migration file's revision, read from the files, not the code.
HEAD = max(
    p.name.split("_", 1)[0] for p in (ROOT / "aggregator/store/migrations/versions").glob("0*.py")
)
SECRET = "c" * 32


@dataclass
class Site:
    """A folder with feeds.yaml, its database and public/, and the sources' server."""

    dir: Path
    server: FixtureServer

    @property
    def config(self) -> Path:
        return self.dir / "feeds.yaml"

    @property
    def db(self) -> Path:
        return self.dir / "data" / "aggregator.db"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
        env.pop("DATABASE_URL", None)
        env.update(
            PYTHONPATH=str(ROOT), COLUMNS="250", AGGREGATOR_SECRET=SECRET, PYTHONUNBUFFERED="1"
        )
        env.update(extra)
        return env

    def cli(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``aggregator ARGS`` run in the site's folder (so ./feeds.yaml is the default)."""
        return subprocess.run(
            [sys.executable, "-m", "aggregator", *args],
            cwd=cwd or self.dir,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", *args],
            cwd=self.dir,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        db = sqlite3.connect(self.db)
        try:
            return list(db.execute(sql))
        finally:
            db.close()


FEEDS_YAML = """\
# The test site's configuration (this comment must survive an OPML import).
site: {{title: Test Digest, url: 'http://127.0.0.1:9/', sender_email: digest@example.org}}
storage: {{url: 'sqlite:///data/aggregator.db'}}
defaults: {{interval: 1h, timeout: 5s}}
sections:
  - {{id: ko-pick, title: Ko-pick columns, match: {{title: "^Ko-pick"}}}}
sources:
  - {{id: alpha, url: '{alpha}'}}
  - {{id: beta, url: '{beta}'}}
"""


@pytest.fixture
def site(tmp_path: Path, http_server: FixtureServer) -> Site:
    http_server.add("/a.xml", simple_rss("alpha", 3, title="{prefix} number {n}"))
    http_server.add("/b.xml", simple_rss("beta", 2, title="Ko-pick: {prefix} column {n}"))
    (tmp_path / "feeds.yaml").write_text(
        FEEDS_YAML.format(alpha=http_server.url("/a.xml"), beta=http_server.url("/b.xml")),
        encoding="utf-8",
    )
    return Site(tmp_path, http_server)


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """A user error: exit 2 (1 for a failed operation), no traceback, one line on stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def wait_until(check: Callable[[], object], *, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Long-running commands a test starts; stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class Output:
    """Collects a running command's output lines as they come, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def wait_for(self, text: str, *, times: int = 1, timeout: float = 30) -> None:
        wait_until(lambda: self.count(text) >= times, timeout=timeout, what=repr(text))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def stop(proc: subprocess.Popen[str], output: Output | None = None) -> str:
    """SIGTERM, then everything it printed; it must exit 0."""
    proc.send_signal(signal.SIGTERM)
    if output is None:
        text, _ = proc.communicate(timeout=30)
    else:
        proc.wait(timeout=30)
        text = output.text()
    assert proc.returncode == 0, text
    return text


# ---------------------------------------------------------------------------- check


def test_check_prints_one_ok_line_for_a_valid_file(site: Site) -> None:
    result = site.cli("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "ok feeds.yaml: 2 sources (2 feeds, 0 HTML listings), 1 sections,"
        " digest mon 09:00 Asia/Seoul"
    )


def test_check_names_file_line_and_key_of_every_error_and_exits_2(site: Site) -> None:
    bad = site.dir / "broken.yaml"
    bad.write_text(
        "site: {title: T, url: 'http://x.example/'}\n"
        "sources:\n"
        "  - {id: a, url: 'http://127.0.0.1:1/', interval: fortnightly}\n"
        "  - {id: b, url: 'http://127.0.0.1:1/', bogus: 1}\n",
        encoding="utf-8",
    )
    err = one_error_line(site.cli("-c", str(bad), "check"))
    assert f'{bad}:3: sources[0].interval: "fortnightly" is not a duration' in err
    assert f"{bad}:4: sources[1].bogus: unknown key" in err
    assert site.cli("-c", str(bad), "status").returncode == 2  # every command refuses it


# ------------------------------------------------------------- AGGREGATOR_CONFIG


def test_aggregator_config_names_the_file_used_from_anywhere(site: Site, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = site.cli("check", cwd=elsewhere, env=site.env(AGGREGATOR_CONFIG=str(site.config)))
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(f"ok {site.config}: 2 sources")
    missing = one_error_line(site.cli("check", cwd=elsewhere))
    assert "feeds.yaml" in missing
    assert len(missing.strip().splitlines()) == 1


# ----------------------------------------------------------------- fetch, status, items


def test_fetch_source_fetches_only_that_source_and_status_items_show_it(site: Site) -> None:
    fetched = site.cli("fetch", "--source", "alpha")
    assert fetched.returncode == 0, fetched.stderr
    assert site.server.count("/a.xml") == 1
    assert site.server.count("/b.xml") == 0
    assert site.rows("SELECT source_id, count(*) FROM items GROUP BY source_id") == [("alpha", 3)]

    status = site.cli("status")
    assert status.returncode == 0, status.stderr
    rows = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if "│" in line}
    alpha = [cell.strip() for cell in rows["alpha"].split("│")[1:-1]]
    beta = [cell.strip() for cell in rows["beta"].split("│")[1:-1]]
    # source, type, items, last fetch, last success, next fetch, errors, last error
    assert alpha[:3] == ["alpha", "feed", "3"] and alpha[6] == "0"
    assert alpha[5].startswith("in ")  # next fetch an interval away
    assert beta[:5] == ["beta", "feed", "0", "never", "never"] and beta[5] == "now"

    site.cli("fetch")  # both; alpha answers the same items again
    items = site.cli("items", "--since", "7d")
    assert items.returncode == 0, items.stderr
    titles = re.findall(r"(alpha number \d|Ko-pick: beta column \d)", items.stdout)
    assert sorted(titles) == sorted(
        [f"alpha number {n}" for n in range(3)] + [f"Ko-pick: beta column {n}" for n in range(2)]
    )
    section = site.cli("items", "--section", "ko-pick")
    assert sorted(re.findall(r"Ko-pick: beta column \d|alpha number \d", section.stdout)) == [
        "Ko-pick: beta column 0",
        "Ko-pick: beta column 1",
    ]


def test_fetch_of_an_unknown_source_is_one_line_naming_it(site: Site) -> None:
    err = one_error_line(site.cli("fetch", "--source", "gamma"))
    assert "gamma" in err
    assert site.server.requests == []


# -------------------------------------------------------------------------- migrate


def test_migrate_creates_the_schema_and_is_idempotent(site: Site) -> None:
    first = site.cli("migrate")
    assert first.returncode == 0, first.stderr
    assert site.rows("SELECT version_num FROM alembic_version") == [(HEAD,)]
    tables = {r[0] for r in site.rows("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sources", "items", "subscribers", "digests", "deliveries"} <= tables
    again = site.cli("migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "ok database schema is current"
    assert site.rows("SELECT version_num FROM alembic_version") == [(HEAD,)]


# --------------------------------------------------------------------- logging options


JSON_LINE = re.compile(r"^\{.*\}$")
TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) +[\w.]+: ")


def _log_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_verbosity_flags_raise_the_log_level(site: Site) -> None:
    quiet = _log_lines(site.cli("--log-json", "fetch", "--source", "alpha"))
    assert [json.loads(line)["level"] for line in quiet] == []  # warnings only: none here
    info = [json.loads(line) for line in _log_lines(site.cli("-v", "--log-json", "fetch"))]
    assert {r["level"] for r in info} == {"info"}
    assert any(r["message"] == "beta: 2 new, 0 updated, 0 duplicates" for r in info), info
    debug = [json.loads(line) for line in _log_lines(site.cli("-vv", "--log-json", "fetch"))]
    assert {"debug", "info"} <= {r["level"] for r in debug}
    assert any(r["logger"] == "aggregator.fetch" and r["level"] == "debug" for r in debug)


def test_log_json_and_log_text_choose_the_line_format(site: Site) -> None:
    as_json = _log_lines(site.cli("-v", "--log-json", "fetch"))
    assert as_json
    for line in as_json:
        assert JSON_LINE.match(line), line
        record = json.loads(line)
        assert set(record) >= {"time", "level", "logger", "message"}
        datetime.fromisoformat(record["time"])
    as_text = _log_lines(site.cli("-v", "--log-text", "fetch"))
    assert as_text
    for line in as_text:
        assert TEXT_LINE.match(line), line
    # Not a terminal, no choice: JSON (the README's default for a pipe).
    default = _log_lines(site.cli("-v", "fetch"))
    assert default and all(JSON_LINE.match(line) for line in default)


# ------------------------------------------------------------------------------ opml


def test_opml_export_lists_every_feed_source(site: Site) -> None:
    result = site.cli("opml", "export")
    assert result.returncode == 0, result.stderr
    body = ET.fromstring(result.stdout).find("body")
    assert body is not None
    outlines = {o.get("text"): o.get("xmlUrl") for o in body.iter("outline")}
    assert outlines == {
        "alpha": site.server.url("/a.xml"),
        "beta": site.server.url("/b.xml"),
    }


def test_opml_import_appends_new_feeds_keeps_comments_and_skips_known_ones(site: Site) -> None:
    opml = site.dir / "reader.opml"
    opml.write_text(
        '<?xml version="1.0"?><opml version="2.0"><head><title>x</title></head><body>'
        '<outline text="Film"><outline type="rss" text="Cine21" title="Cine 21"'
        f' xmlUrl="{site.server.url("/c.xml")}"/></outline>'
        f'<outline type="rss" text="alpha again" xmlUrl="{site.server.url("/a.xml")}"/>'
        "</body></opml>",
        encoding="utf-8",
    )
    result = site.cli("opml", "import", str(opml))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ok added 1 sources to feeds.yaml: cine-21",
        "skipped 1 feeds already configured",
    ]
    text = site.config.read_text(encoding="utf-8")
    assert text.startswith("# The test site's configuration")
    assert site.cli("check").stdout.startswith("ok feeds.yaml: 3 sources")
    exported = site.cli("opml", "export").stdout
    assert site.server.url("/c.xml") in exported

    broken = site.dir / "broken.opml"
    broken.write_text("<opml><body><outline", encoding="utf-8")
    err = one_error_line(site.cli("opml", "import", str(broken)))
    assert f"{broken}:1: not valid XML" in err
    assert site.config.read_text(encoding="utf-8") == text  # nothing lost


# ---------------------------------------------------------------- serve and /healthz


def _serve(site: Site, processes: list[subprocess.Popen[str]]) -> str:
    port = unused_port()
    proc = site.start("serve", "--port", str(port))
    processes.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/") is not None, what="serve listening")
    return base


def test_serve_answers_the_home_page_feeds_and_health(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    assert site.cli("fetch").returncode == 0
    assert site.cli("publish").returncode == 0
    base = _serve(site, processes)
    home = httpx.get(base + "/")
    assert home.status_code == 200
    assert 'rel="alternate"' in home.text and "feed.atom" in home.text
    feed = httpx.get(base + "/feed.atom")
    assert feed.status_code == 200 and "alpha number 0" in feed.text
    health = httpx.get(base + "/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["checks"]["broken_sources"] == []
    assert site.server.count("/a.xml") == 1  # serve itself never fetches


def test_healthz_reports_a_broken_scraper_and_503_when_ingest_is_stale(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    site.server.add("/list.html", "<html><body><p>redesigned</p></body></html>", content_type=None)
    with site.config.open("a", encoding="utf-8") as f:
        f.write(
            f"  - id: kobiz\n    type: html\n    url: '{site.server.url('/list.html')}'\n"
            '    select: {item: "ul.list > li", title: "p.tit a"}\n'
        )
    assert site.cli("fetch").returncode == 0
    status = site.cli("status").stdout
    assert 'BROKEN: kobiz: selector "ul.list > li" matched nothing on' in status
    base = _serve(site, processes)

    health = httpx.get(base + "/healthz")
    assert health.status_code == 200  # a broken scraper is for the admin, not the balancer
    [broken] = health.json()["checks"]["broken_sources"]
    assert broken["source"] == "kobiz"
    assert broken["reason"].startswith('kobiz: selector "ul.list > li" matched nothing')

    # Nothing fetched successfully for two days (sources every hour): unhealthy.
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None)
    db = sqlite3.connect(site.db)
    with db:
        db.execute("UPDATE sources SET last_success_at = ?", (two_days_ago.isoformat(" "),))
    db.close()
    stale = httpx.get(base + "/healthz")
    assert stale.status_code == 503
    assert stale.json()["status"] == "unhealthy"
    assert stale.json()["checks"]["ingest"].startswith("stale: nothing fetched successfully")


# ------------------------------------------------------------------ run --role


def _run(
    site: Site, processes: list[subprocess.Popen[str]], *args: str, **env: str
) -> tuple[subprocess.Popen[str], str]:
    port = unused_port()
    proc = site.start("--log-text", "-v", "run", "--port", str(port), *args, env=site.env(**env))
    processes.append(proc)
    return proc, f"http://127.0.0.1:{port}"


def test_run_role_all_serves_and_fetches(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    proc, base = _run(site, processes, "--role", "all", "--no-watch")
    wait_until(lambda: site.server.count("/a.xml") and site.server.count("/b.xml"), what="fetch")
    wait_until(lambda: get(base + "/") is not None, what="web")
    assert httpx.get(base + "/").status_code == 200
    assert httpx.get(base + "/healthz").json()["checks"]["scheduler"] == "running"
    output = stop(proc)
    assert "aggregator running (role all, 2 sources, web http://127.0.0.1:" in output


def test_run_role_web_serves_without_fetching(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    proc, base = _run(site, processes, "--role", "web", "--no-watch")
    wait_until(lambda: get(base + "/") is not None, what="web")
    assert httpx.get(base + "/").status_code == 200
    assert "scheduler" not in httpx.get(base + "/healthz").json()["checks"]
    output = stop(proc)
    assert "aggregator running (role web, 2 sources, web http://127.0.0.1:" in output
    assert site.server.requests == []


def test_run_role_worker_fetches_without_serving(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    proc, base = _run(site, processes, "--role", "worker", "--no-watch")
    wait_until(lambda: site.server.count("/a.xml") and site.server.count("/b.xml"), what="fetch")
    wait_until(lambda: len(site.rows("SELECT id FROM items")) == 5, what="items stored")
    assert get(base + "/") is None  # nothing listens
    output = stop(proc)
    assert "aggregator running (role worker, 2 sources, web off)" in output


def test_run_refuses_an_unknown_role(site: Site) -> None:
    err = one_error_line(site.cli("run", "--role", "everything", "--port", str(unused_port())))
    assert err == (
        "usage error aggregator run: Invalid value for '--role': \"everything\":"
        " use all, web or worker (see 'aggregator run --help')\n"
    )


# ------------------------------------------------- reload, SIGHUP, AGGREGATOR_PID_FILE


@pytest.mark.slow  # 30-45 s: several commands and a running service
def test_reload_and_sighup_apply_sources_sections_schedule_and_intervals(
    site: Site, processes: list[subprocess.Popen[str]]
) -> None:
    pid_file = site.dir / "run" / "service.pid"
    env = site.env(AGGREGATOR_PID_FILE=str(pid_file))
    proc, _ = _run(site, processes, "--no-watch", AGGREGATOR_PID_FILE=str(pid_file))
    log = Output(proc)
    wait_until(pid_file.exists, what="the pid file")
    assert int(pid_file.read_text(encoding="ascii")) == proc.pid
    wait_until(lambda: site.server.count("/b.xml") == 1, what="first fetch")
    assert not (site.dir / "data" / "aggregator.pid").exists()  # the env var wins

    # Edit: alpha every second, a new source gamma in a new section, another schedule.
    site.server.add("/g.xml", simple_rss("gamma", 2, title="Interview: {prefix} {n}"))
    text = site.config.read_text(encoding="utf-8")
    edited = (
        text.replace(
            f"  - {{id: alpha, url: '{site.server.url('/a.xml')}'}}",
            f"  - {{id: alpha, url: '{site.server.url('/a.xml')}', interval: 1s}}",
        ).replace(
            "sources:\n",
            "  - {id: interviews, title: Interviews, match: {title: '^Interview'}}\n"
            "digest: {schedule: 'fri 18:30'}\nsources:\n",
        )
        + f"  - {{id: gamma, url: '{site.server.url('/g.xml')}'}}\n"
    )
    site.config.write_text(edited, encoding="utf-8")
    asked = subprocess.run(
        [sys.executable, "-m", "aggregator", "reload"],
        cwd=site.dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == f"asked process {proc.pid} to reload feeds.yaml"
    wait_until(lambda: site.server.count("/g.xml") == 1, what="the new source fetched")
    wait_until(lambda: site.server.count("/a.xml") >= 3, what="alpha every second")
    sections = dict(site.rows("SELECT source_id, section FROM items WHERE source_id='gamma'"))
    assert sections == {"gamma": "interviews"}

    # An invalid edit through SIGHUP: refused with file:line, the service keeps going.
    site.config.write_text(edited.replace("interval: 1s", "interval: often"), encoding="utf-8")
    os.kill(proc.pid, signal.SIGHUP)
    before = site.server.count("/a.xml")
    wait_until(lambda: site.server.count("/a.xml") >= before + 2, what="still every second")
    refused = one_error_line(
        subprocess.run(
            [sys.executable, "-m", "aggregator", "reload"],
            cwd=site.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert 'feeds.yaml:10: sources[0].interval: "often" is not a duration' in refused

    # Back to the first file by SIGHUP: gamma leaves the schedule, alpha hourly again.
    site.config.write_text(text, encoding="utf-8")
    os.kill(proc.pid, signal.SIGHUP)
    log.wait_for("feeds.yaml reloaded: 2 sources")
    output = stop(proc, log)
    assert "weekly digest scheduled: cron[day_of_week='mon', hour='9', minute='0']" in output
    assert "weekly digest rescheduled: cron[day_of_week='fri', hour='18', minute='30']" in output
    assert "source alpha rescheduled every 0:00:01" in output
    assert "feeds.yaml:10: sources[0].interval" in output  # the refused edit, logged
    assert "feeds.yaml reloaded: 3 sources" in output
    assert output.count("feeds.yaml reloaded: 2 sources") == 1
    assert "source gamma removed from the schedule" in output
    assert not pid_file.exists()  # removed at a clean stop


def test_reload_without_a_running_service_names_the_pid_file(site: Site) -> None:
    pid_file = site.dir / "nowhere.pid"
    env = site.env(AGGREGATOR_PID_FILE=str(pid_file))
    err = one_error_line(site.cli("reload", env=env), code=1)
    assert err == (
        f"error no running service found ({pid_file} is missing or unreadable);"
        " is `aggregator run` up?\n"
    )
    pid_file.write_text("999999\n", encoding="ascii")
    err = one_error_line(site.cli("reload", env=env), code=1)
    assert f"process 999999 from {pid_file} is not running" in err


# ------------------------------------------- distributed: run --role worker, queue recover


@pytest.mark.postgres
@pytest.mark.slow  # ~45 s: migrate, dispatch, a worker, a kill, recover
def test_distributed_worker_fetches_dispatched_sources_and_queue_recover_requeues_a_dead_ones_job(
    site: Site, processes: list[subprocess.Popen[str]], pg_url: str
) -> None:
    import sqlalchemy as sa

    site.server.add("/stall.xml", simple_rss("stall", 1), delay=60)
    site.config.write_text(
        site.config.read_text(encoding="utf-8").replace(
            "storage: {url: 'sqlite:///data/aggregator.db'}",
            f"storage: {{url: '{pg_url}', queue: procrastinate}}",
        )
        + f"  - {{id: stall, url: '{site.server.url('/stall.xml')}'}}\n",
        encoding="utf-8",
    )
    migrated = site.cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    dispatched = site.cli("queue", "dispatch")
    assert dispatched.returncode == 0, dispatched.stderr
    assert dispatched.stdout.strip() == "ok queued 3 fetch jobs"

    worker, base = _run(site, processes, "--role", "worker")
    engine = sa.create_engine(pg_url)
    try:

        def items() -> dict[str, int]:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT source_id, count(*) FROM items GROUP BY 1"))
                return {str(r[0]): int(r[1]) for r in rows}

        wait_until(lambda: items() == {"alpha": 3, "beta": 2}, timeout=60, what="items")
        wait_until(lambda: site.server.count("/stall.xml") == 1, what="the stalled fetch")
        assert get(base + "/") is None  # a worker serves nothing
        worker.kill()  # SIGKILL: its running job stays "doing"
        worker.wait(timeout=10)
        time.sleep(2.5)  # no heartbeat for longer than --silent-for (workers beat every 2 s)

        with engine.connect() as conn:
            doing = conn.execute(
                sa.text(
                    "SELECT task_name, coalesce(lock, '') FROM procrastinate_jobs"
                    " WHERE status = 'doing' ORDER BY id"
                )
            ).all()
        assert ("aggregator.fetch_source", "fetch:stall") in doing
        recovered = site.cli("queue", "recover", "--silent-for", "2")
        assert recovered.returncode == 0, recovered.stderr
        # Every job the dead worker held (the stalled fetch, and the periodic
        # jobs it had started) goes back, and only those.
        assert recovered.stdout.strip() == f"ok retried {len(doing)} stalled jobs"
        with engine.connect() as conn:
            states = conn.execute(
                sa.text(
                    "SELECT status::text FROM procrastinate_jobs"
                    " WHERE queueing_lock = 'fetch:stall' OR lock = 'fetch:stall'"
                )
            ).all()
        assert [s[0] for s in states] == ["todo"]
    finally:
        engine.dispose()


# ------------------------------------------------- subscribers and digest commands


@pytest.mark.slow  # 30-45 s: several commands and a running service
def test_subscribers_and_digest_compose_list_send_through_the_entry_point(
    site: Site, smtp_server: SmtpFixture
) -> None:
    with site.config.open("a", encoding="utf-8") as f:
        f.write(f"smtp: {{host: 127.0.0.1, port: {smtp_server.port}, starttls: false}}\n")
    for email in ("kim@example.org", "lee@example.org"):
        added = site.cli("subscribers", "add", email, "--active")
        assert added.returncode == 0, added.stderr
    listed = site.cli("subscribers", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.findall(r"\w+@example\.org", listed.stdout) == ["kim@example.org", "lee@example.org"]
    assert site.cli("fetch").returncode == 0

    sent = site.cli("digest", "send", "--now", "--retry-delay", "0.1")
    assert sent.returncode == 0, sent.stderr
    smtp_server.wait_for(2)
    subjects = {str(m.message["Subject"]) for m in smtp_server.messages}
    [(digest_id, subject)] = site.rows("SELECT id, subject FROM digests")
    assert subjects == {subject}
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == [
        "kim@example.org",
        "lee@example.org",
    ]
    listed = site.cli("digest", "list")
    assert listed.returncode == 0, listed.stderr
    assert str(subject) in listed.stdout and f"{digest_id}" in listed.stdout

    again = site.cli("digest", "send")  # exactly once: nobody is left
    assert again.returncode == 0, again.stderr
    assert len(smtp_server.messages) == 2
    assert site.rows("SELECT status, count(*) FROM deliveries GROUP BY status") == [("sent", 2)]
