"""`aggregator run` and `aggregator demo` as an admin starts them: a real process, real ports.

Each test starts ``python3 -m aggregator`` in a subprocess (the same entry
point as the installed script) and talks HTTP and SMTP to it on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from aggregator.config import load_config
from aggregator.digest import next_slot
from aggregator.models import utcnow
from tests.support.feeds import simple_rss
from tests.support.http import FixtureServer

READY = "aggregator running"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aggregator(*args: str) -> list[str]:
    return [sys.executable, "-m", "aggregator", "--log-text", *args]


def write_config(directory: Path, source_url: str, *, zone: str = "Asia/Seoul") -> Path:
    path = directory / "feeds.yaml"
    path.write_text(
        "site: {title: Run Test, url: 'https://digest.example.org/',"
        f" timezone: {zone}, output_dir: public, sender_email: digest@example.org}}\n"
        "storage: {url: 'sqlite:///run.db'}\n"
        "digest: {schedule: 'mon 09:00'}\n"
        f"sources:\n  - {{id: outlet, url: '{source_url}', interval: 1h}}\n",
        encoding="utf-8",
    )
    return path


class Running:
    """A started ``aggregator run``: its process and what it printed so far."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.stdout = ""

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """Read stdout until ``text`` appears; fail with what was printed if it does not."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while text not in self.stdout and time.monotonic() < deadline:
                if not selector.select(0.5):
                    continue
                # Raw reads: a buffered readline would keep lines the selector cannot see.
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.stdout += chunk.decode("utf-8", "replace")
        assert text in self.stdout, f"no {text!r} in output: {self.stdout!r}"
        return self.stdout

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


@contextmanager
def started(*args: str, cwd: Path) -> Iterator[Running]:
    proc = subprocess.Popen(
        aggregator(*args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AGGREGATOR_SECRET": "r" * 32},
    )
    running = Running(proc)
    try:
        yield running
    finally:
        running.stop()


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The refusal: a non-zero exit, no traceback, one message (rich may fold it)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return " ".join(proc.stderr.split())


# ------------------------------------------------------------------ ports and locks


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_run_on_a_busy_port_exits_at_once_and_leaves_no_pid_file(
    http_server: FixtureServer, tmp_path: Path, host: str
) -> None:
    http_server.add("/feed.xml", simple_rss("story", 2))
    config = write_config(tmp_path, http_server.url("/feed.xml"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        began = time.monotonic()
        proc = subprocess.run(
            aggregator("-c", str(config), "run", "--host", host, "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        elapsed = time.monotonic() - began

    message = one_line_error(proc)
    assert f"port {port} on {host} is in use" in message
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"
    assert not (tmp_path / "data" / "aggregator.pid").exists()
    assert http_server.count("/feed.xml") == 0  # nothing started behind the refusal


@pytest.mark.parametrize(("zone", "abbreviations"), [("Asia/Seoul", {"KST"})])
def test_second_run_on_the_same_database_is_refused_and_the_first_keeps_running(
    http_server: FixtureServer, tmp_path: Path, zone: str, abbreviations: set[str]
) -> None:
    http_server.add("/feed.xml", simple_rss("story", 2))
    config = write_config(tmp_path, http_server.url("/feed.xml"), zone=zone)
    pid_file = tmp_path / "data" / "aggregator.pid"
    port = free_port()
    with started("-c", str(config), "run", "--port", str(port), cwd=tmp_path) as first:
        # Without -v and with stdout not a terminal, it says where it listens
        # and what it scheduled.
        out = first.wait_for("next digest")
        assert f"home page http://127.0.0.1:{port}/" in out
        assert f"feed http://127.0.0.1:{port}/feed.atom" in out
        assert "public address (site.url): https://digest.example.org/" in out
        slot = next_slot(load_config(config).digest, load_config(config).site, utcnow())
        match = re.search(r"scheduled: (\d+) sources; next digest (\w{3} [\d-]+ [\d:]+) (\w+)", out)
        assert match, out
        assert match.group(1) == "1"
        shown = datetime.strptime(match.group(2), "%a %Y-%m-%d %H:%M").replace(
            tzinfo=ZoneInfo(zone)
        )
        assert shown == slot and match.group(3) in abbreviations
        first_pid = pid_file.read_text(encoding="ascii").strip()
        assert first_pid == str(first.proc.pid)

        began = time.monotonic()
        second = subprocess.run(
            aggregator("-c", str(config), "run", "--port", str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert time.monotonic() - began < 15
        message = one_line_error(second)
        assert f"another `aggregator run` (pid {first.proc.pid}) is using" in message
        # The first one is untouched: its pid file, its web app.
        assert pid_file.read_text(encoding="ascii").strip() == first_pid
        assert first.proc.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert first.stop() == 0
    assert not pid_file.exists()

    # Once the first has stopped, the database is free again.
    with started("-c", str(config), "run", "--port", str(free_port()), cwd=tmp_path) as third:
        third.wait_for(READY)


# ------------------------------------------------------------------------ the demo


def test_demo_directory_runs_as_it_is(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    made = subprocess.run(
        aggregator("demo", "--dir", str(demo_dir), "--no-serve"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    config = load_config(demo_dir / "feeds.yaml")
    assert config.demo
    site = config.site.url.rstrip("/")
    mails_after_demo = sorted((demo_dir / "mail").glob("*.eml"))
    assert len(mails_after_demo) == 2

    # As README says: no --port, the demo's site.url says where to listen.
    with started("-c", str(demo_dir / "feeds.yaml"), "run", cwd=tmp_path) as service:
        out = service.wait_for("next digest")
        assert f"home page {site}/" in out
        with httpx.Client(base_url=site, timeout=20) as client:
            home = client.get("/")
            assert home.status_code == 200
            feed = client.get("/feed.atom")
            assert feed.status_code == 200
            assert "Ko-pick: Most Anticipated Korean Films of 2026" in feed.text
            # The sources the feed was built from answer too.
            for source in config.sources:
                assert client.get(source.url).status_code == 200, source.url
            form = client.get("/subscribe")
            assert form.status_code == 200
            action = re.search(r'action="([^"]+)"', form.text)
            assert action is not None and action.group(1) == f"{site}/subscribe"
            # The form's CSRF token, with the cookie the client keeps from the GET.
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            posted = client.post(
                action.group(1), data={"email": "new.reader@example.org", "csrf": csrf.group(1)}
            )
            assert posted.status_code < 400, posted.text
        # The confirmation went to the mail sink `run` provides in demo mode.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            new = sorted(set((demo_dir / "mail").glob("*.eml")) - set(mails_after_demo))
            if new:
                break
            time.sleep(0.2)
        assert [p.name.split("-", 1)[1] for p in new] == ["new.reader@example.org.eml"]
        assert "/confirm/" in new[0].read_text(encoding="utf-8", errors="replace")
        # Nobody got the demo's issue twice.
        assert {p.name for p in mails_after_demo} <= {
            p.name for p in (demo_dir / "mail").glob("*.eml")
        }
        assert len(list((demo_dir / "mail").glob("*.eml"))) == 3


@pytest.mark.parametrize("existing", ["feeds.yaml", "demo.db", "data/aggregator.db", "news.sqlite"])
def test_demo_never_overwrites_an_installation(tmp_path: Path, existing: str) -> None:
    target = tmp_path / existing
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"an admin's own file\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    proc = subprocess.run(
        aggregator("demo", "--dir", ".", "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    message = one_line_error(proc)
    assert f"already holds {existing}" in message
    assert "never overwrites" in message
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_demo_run_twice_into_one_directory_mails_nobody_again(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    runs = [
        subprocess.run(
            aggregator("demo", "--dir", str(demo_dir), "--no-serve"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert "already holds feeds.yaml" in one_line_error(runs[1])
    assert len(list((demo_dir / "mail").glob("*.eml"))) == 2
