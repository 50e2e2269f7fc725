"""An admin's first week, walked with the installed wheel and nothing else.

Every step runs the ``aggregator`` script of a fresh virtualenv (the session
fixture ``installed``: the wheel of this checkout, not an editable install),
from a directory outside the checkout and without ``PYTHONPATH``, against real
servers on 127.0.0.1: a fixture HTTP server with the outlets' RSS feed and an
HTML listing, aiosmtpd as the mail relay, SQLite beside feeds.yaml. The steps
follow README: check, fetch, the first digest sent at once, someone subscribing
in the web app of ``run``, a second ``run`` refused, ``run`` on a busy port,
OPML out and in. Then every command of README's command table is given an
option it does not have: one line, exit 2, never a traceback.

Waits poll with deadlines, so a slow machine makes the module slower, not red.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support.http import FixtureServer, unused_port
from tests.support.install import REPO, SECRET, Install, clean_env
from tests.support.smtp import SmtpFixture

pytestmark = pytest.mark.slow

SEOUL = ZoneInfo("Asia/Seoul")
READER = "reader@example.org"
NEWCOMER = "Newcomer.Kim@example.org"

# What the outlets publish this week; every title must reach the first issue.
FEED_TITLES = (
    "Ko-pick: The Quiet Return of Lee Chang-dong",
    "Ko-pick: 한국 독립영화의 새 얼굴",
    "Ko-pick: Busan Winners Head to Theaters",
)
LISTING_TITLES = (
    "Ko-pick: Five Debut Films to Watch",
    "Box office: 서울의 봄 tops ten million",
)
ALL_TITLES = FEED_TITLES + LISTING_TITLES


def _rss(titles: tuple[str, ...], slug: str) -> str:
    now = datetime.now(SEOUL)
    items = "".join(
        f"<item><guid>{slug}-{n}</guid><title>{escape(title)}</title>"
        f"<link>https://news.example.kr/{slug}/{n}</link>"
        f"<pubDate>{format_datetime(now - timedelta(hours=3 * n + 1))}</pubDate>"
        f"<description>Column {n} of {slug}, this week.</description></item>"
        for n, title in enumerate(titles)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{slug}</title><link>https://news.example.kr/</link>"
        f"<description>{slug}</description>{items}</channel></rss>"
    )


def _listing(titles: tuple[str, ...]) -> str:
    """A board shaped like KoBiz's: one ``li`` per article, dates as 2026.11.27."""
    today = datetime.now(SEOUL)
    rows = "".join(
        f'<li><p class="tit"><a href="view.jsp?seq={100 + n}">{escape(title)}</a></p>'
        f'<p class="txt">Summary of article {100 + n}.</p>'
        f'<span class="date">{(today - timedelta(days=n)):%Y.%m.%d}</span></li>'
        for n, title in enumerate(titles)
    )
    return (
        f'<html><head><meta charset="utf-8"></head><body><ul class="list">{rows}</ul></body></html>'
    )


def _config_text(outlets: FixtureServer, smtp: SmtpFixture, web_port: int) -> str:
    # Laid out and commented as an admin writes it, so `opml import` has
    # comments and layout to keep.
    return f"""\
# Korean Film Digest, as its admin wrote it
site:
  title: Admin Path Digest
  url: http://127.0.0.1:{web_port}/
  timezone: Asia/Seoul
  sender_email: digest@example.org
  output_dir: public

storage:
  url: sqlite:///data/aggregator.db     # beside this file

sections:
  - id: ko-pick
    title: Ko-pick columns
    match: {{title: "^\\\\s*Ko-?pick\\\\b"}}

sources:
  # the outlets' feed
  - id: kopick-feed
    title: Ko-pick feed
    url: {outlets.url("/kopick.xml")}
  # a board without a feed
  - id: kobiz-news
    title: KoBiz news
    type: html
    url: {outlets.url("/news/list.jsp")}
    select:
      item: "ul.list > li"
      title: "p.tit a"
      summary: "p.txt"
      date: "span.date"

digest:
  schedule: "mon 09:00"
  sections: [ko-pick]

smtp:
  host: {smtp.host}
  port: {smtp.port}     # a local relay, no STARTTLS
"""


@dataclass(frozen=True)
class Admin:
    """The installed script, the admin's directory and the servers it talks to."""

    install: Install
    home: Path  # feeds.yaml, data/, public/: outside the checkout
    config: Path
    outlets: FixtureServer
    smtp: SmtpFixture
    web_port: int

    def command(self, *args: str | Path) -> list[str]:
        return [str(self.install.aggregator), "-c", str(self.config), *map(str, args)]

    def cli(
        self, *args: str | Path, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``aggregator -c feeds.yaml ARGS``, whatever it exits with."""
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            cwd=self.home,
            env=clean_env(AGGREGATOR_SECRET=SECRET, **env),
            timeout=timeout,
        )

    def ok(
        self, *args: str | Path, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = self.cli(*args, timeout=timeout, **env)
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return proc


def _one_line_refusal(proc: subprocess.CompletedProcess[str], expected: str) -> str:
    """A non-zero exit with one line on stderr that says ``expected``, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


@dataclass
class Service:
    """A background ``aggregator run`` whose output goes to files (no pipe to fill up)."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text("utf-8", "replace") + self.stderr.read_text("utf-8", "replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"run exited {self.proc.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s: {self.output()}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@contextmanager
def running(admin: Admin, *args: str) -> Iterator[Service]:
    name = f"run-{time.monotonic_ns()}"
    stdout, stderr = admin.home / f"{name}.out", admin.home / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            admin.command("run", *args),
            stdout=out,
            stderr=err,
            cwd=admin.home,
            env=clean_env(AGGREGATOR_SECRET=SECRET),
        )
    service = Service(proc, stdout, stderr)
    try:
        yield service
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _plain_text(smtp: SmtpFixture, address: str) -> list[str]:
    texts = []
    for received in smtp.to(address):
        body = received.message.get_body(("plain",))
        assert body is not None, received.message
        texts.append(body.get_content())
    return texts


def _wait_for_mail(smtp: SmtpFixture, address: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not smtp.to(address):
        assert time.monotonic() < deadline, f"no mail reached {address} after {timeout}s"
        time.sleep(0.05)
    [text] = _plain_text(smtp, address)
    return text


@pytest.fixture
def admin(
    installed: Install,
    http_server: FixtureServer,
    smtp_server: SmtpFixture,
    tmp_path: Path,
) -> Admin:
    assert not tmp_path.is_relative_to(REPO)
    http_server.add("/kopick.xml", _rss(FEED_TITLES, "kopick"))
    http_server.add("/news/list.jsp", _listing(LISTING_TITLES), content_type="text/html")
    home = tmp_path / "srv"
    home.mkdir()
    web_port = unused_port()
    config = home / "feeds.yaml"
    config.write_text(_config_text(http_server, smtp_server, web_port), encoding="utf-8")
    return Admin(installed, home, config, http_server, smtp_server, web_port)


# ---------------------------------------------------------------------- the path


def _check_fetch_and_look(admin: Admin) -> None:
    # Rich folds long lines at 80 columns when stdout is not a terminal.
    check = " ".join(admin.ok("check").stdout.split())
    assert re.match(r"ok \S*/srv/feeds\.yaml: 2 sources \(1 feeds, 1 HTML listings\)", check), check

    admin.ok("fetch")
    assert admin.outlets.count("/kopick.xml") == 1
    assert admin.outlets.count("/news/list.jsp") == 1
    # Tables fit the terminal; a wide one keeps each title on one line.
    items = admin.ok("items", COLUMNS="250").stdout
    assert "5 items since" in items, items
    for title in ALL_TITLES:
        assert title in items, (title, items)
    status = admin.ok("status", COLUMNS="250").stdout
    assert "kopick-feed" in status and "kobiz-news" in status, status
    assert "BROKEN" not in status, status


def _first_issue_goes_out_now(admin: Admin) -> None:
    admin.ok("subscribers", "add", READER, "--active")
    assert admin.smtp.messages == []  # --active: they consented already, no confirmation mail
    admin.ok("digest", "send", "--now")
    deadline = time.monotonic() + 20
    while not admin.smtp.messages:
        assert time.monotonic() < deadline, "the first issue never reached the relay"
        time.sleep(0.05)
    [message] = admin.smtp.messages
    assert message.recipients == (READER,)
    [text] = _plain_text(admin.smtp, READER)
    for title in ALL_TITLES:
        assert title in text, (title, text)
    # Sending again mails nobody twice.
    admin.ok("digest", "send")
    assert len(admin.smtp.messages) == 1


def _subscribe_in_the_web_app_then_run_twice(admin: Admin) -> None:
    base = f"http://127.0.0.1:{admin.web_port}/"
    with running(admin, "--port", str(admin.web_port)) as first:
        first.wait_for("aggregator running")
        assert f"home page {base}" in first.output()
        with httpx.Client(base_url=base, timeout=10) as browser:
            form = browser.get("/subscribe")
            assert form.status_code == 200, form.text[:500]
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token, form.text
            assert browser.cookies, "the form set no cookie for its CSRF token"
            answer = browser.post(
                "/subscribe", data={"email": NEWCOMER, "name": "김뉴커", "csrf": token.group(1)}
            )
            assert answer.status_code == 200, answer.text[:500]
        confirmation = _wait_for_mail(admin.smtp, NEWCOMER)
        assert f"{base}confirm/" in confirmation, confirmation

        # A second `run` on the same database refuses at once and touches nothing.
        began = time.monotonic()
        second = admin.cli("run", "--port", str(unused_port()), timeout=60)
        assert time.monotonic() - began < 15
        _one_line_refusal(second, f"another `aggregator run` (pid {first.proc.pid}) is using")
        assert first.proc.poll() is None
        assert httpx.get(base + "healthz", timeout=10).status_code == 200

        assert first.stop() == 0, first.output()
        assert "Traceback" not in first.output(), first.output()


def _run_on_a_busy_port(admin: Admin) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        began = time.monotonic()
        proc = admin.cli("run", "--port", str(port), timeout=60)
        elapsed = time.monotonic() - began
    _one_line_refusal(proc, f"port {port} on 127.0.0.1 is in use")
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"


def _opml_out_and_in(admin: Admin) -> None:
    exported = admin.home / "sources.opml"
    out = admin.ok("opml", "export", "-o", exported)
    opml = exported.read_text(encoding="utf-8")
    assert escape(admin.outlets.url("/kopick.xml")) in opml
    assert "list.jsp" not in opml
    assert "kobiz-news" in out.stderr  # the listing left out is named

    festival, known = admin.outlets.url("/festival.xml"), admin.outlets.url("/kopick.xml")
    admin.outlets.add("/festival.xml", _rss(("Festival line-up announced",), "festival"))
    incoming = admin.home / "other-reader.opml"
    incoming.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<opml version="2.0"><head><title>Other'
        "</title></head><body>"
        f'<outline text="Festival News" type="rss" xmlUrl="{escape(festival)}"/>'
        f'<outline text="Ko-pick again" type="rss" xmlUrl="{escape(known)}"/>'
        "</body></opml>\n",
        encoding="utf-8",
    )
    imported = admin.ok("opml", "import", incoming)
    assert "festival-news" in imported.stdout, imported.stdout
    text = admin.config.read_text(encoding="utf-8")
    assert "# a board without a feed" in text and "# beside this file" in text  # comments kept
    assert text.count("/kopick.xml") == 1  # the configured feed is not added twice

    check = " ".join(admin.ok("check").stdout.split())
    assert check.startswith("ok ") and "3 sources (2 feeds, 1 HTML listings)" in check, check
    again = admin.ok("opml", "export").stdout
    assert escape(festival) in again and escape(known) in again


def test_an_admins_first_week_with_the_installed_wheel(admin: Admin) -> None:
    _check_fetch_and_look(admin)
    _first_issue_goes_out_now(admin)
    _subscribe_in_the_web_app_then_run_twice(admin)
    _run_on_a_busy_port(admin)
    _opml_out_and_in(admin)


def test_the_demo_directory_passes_check(installed: Install, demo_dir: Path) -> None:
    proc = subprocess.run(
        [str(installed.aggregator), "-c", str(demo_dir / "feeds.yaml"), "check"],
        capture_output=True,
        text=True,
        cwd=installed.workdir,
        env=clean_env(AGGREGATOR_SECRET=SECRET),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok "), proc.stdout


# ------------------------------------------------------ README's command table


def _readme_commands() -> list[tuple[str, ...]]:
    """Every command README's table names: ``aggregator digest compose`` / ``list`` is two,
    ``aggregator subscribers add/remove/…`` one per subcommand."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    commands: list[tuple[str, ...]] = []
    for line in table.splitlines():
        if not line.startswith("| `aggregator"):
            continue
        first_cell = re.split(r"(?<!\\)\|", line)[1]
        spans = re.findall(r"`([^`]+)`", first_cell)
        words = []
        for word in spans[0].split()[1:]:
            if not re.fullmatch(r"[a-z][a-z/-]*", word):
                break  # an argument (ID, [--since 7d]) ends the command's name
            words.append(word)
        *group, last = words
        names = last.split("/") + [s for s in spans[1:] if re.fullmatch(r"[a-z][a-z-]*", s)]
        commands.extend((*group, name) for name in names)
    return commands


README_COMMANDS = _readme_commands()


def test_the_table_is_read() -> None:
    # A parse that found nothing would make the test below pass vacuously.
    assert {("demo",), ("digest", "list"), ("subscribers", "expire"), ("opml", "export")} <= set(
        README_COMMANDS
    )
    assert len(README_COMMANDS) >= 25, README_COMMANDS


@pytest.fixture(scope="module")
def refusals(installed: Install) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """``aggregator COMMAND --bogus-option`` for every row, four at a time: each call is
    mostly start-up (importing the CLI takes ~0.8 s of CPU), which overlaps on idle cores."""

    def call(command: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(installed.aggregator), *command, "--bogus-option"],
            capture_output=True,
            text=True,
            cwd=installed.workdir,
            env=clean_env(AGGREGATOR_SECRET=SECRET),
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(README_COMMANDS, pool.map(call, README_COMMANDS), strict=True))


@pytest.mark.parametrize("command", README_COMMANDS, ids=" ".join)
def test_every_readme_command_refuses_an_unknown_option_in_one_line(
    refusals: dict[tuple[str, ...], subprocess.CompletedProcess[str]], command: tuple[str, ...]
) -> None:
    proc = refusals[command]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # Naming the option proves the command exists: a misspelt README row would
    # get "No such command" instead, also exit 2.
    assert "--bogus-option" in lines[0] and " ".join(command) in lines[0], lines[0]
