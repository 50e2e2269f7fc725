"""Numbers the documentation promises, pinned to their literal values and observed.

Each test states the number as written (README, module docs), not as the
code's constant, and watches the behaviour at the edge: one under is
accepted, one over is refused. Changing a limit therefore means changing this
file and the documentation together. (The 10 s shutdown grace is in
test_service.py, the six-day missed-digest grace in test_scheduler_jobs.py,
the seven-day confirmation expiry in test_tokens.py.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.errors import ConfigError, FetchError
from aggregator.fetch import Fetcher
from aggregator.models import FetchResult
from aggregator.web.app import load_secret
from tests.support.http import FixtureServer, unused_port

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def fetch_all(urls: list[str]) -> list[FetchResult | BaseException]:
    async def go() -> list[FetchResult | BaseException]:
        async with Fetcher(trust_env=False) as fetcher:  # the defaults, as `run` uses them
            jobs = [fetcher.fetch_url(u, source_id=f"s{i}") for i, u in enumerate(urls)]
            return list(await asyncio.gather(*jobs, return_exceptions=True))

    return asyncio.run(go())


# ------------------------------------------------------------------ secret length


@pytest.mark.parametrize("length", [1, 8, 15])
def test_a_secret_shorter_than_16_characters_is_refused(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGGREGATOR_SECRET", "s" * length)
    with pytest.raises(
        ConfigError, match=r"^AGGREGATOR_SECRET must be at least 16 characters long"
    ):
        load_secret()


@pytest.mark.parametrize("length", [16, 17, 64])
def test_a_secret_of_16_characters_or_more_is_used_as_given(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGGREGATOR_SECRET", "한" * length)  # characters, not bytes
    assert load_secret() == "한" * length


def test_serve_refuses_a_15_character_secret_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "feeds.yaml").write_text(
        "site: {title: T, url: 'http://127.0.0.1:9/'}\n"
        "storage: {url: 'sqlite:///data/a.db'}\nsources: []\n",
        encoding="utf-8",
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), AGGREGATOR_SECRET="x" * 15, COLUMNS="250")
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "serve", "--port", str(unused_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "AGGREGATOR_SECRET must be at least 16 characters long" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------- fetch limits


def test_at_most_4_requests_at_once_to_one_host(http_server: FixtureServer) -> None:
    http_server.add("/slow.xml", b"<rss/>", delay=0.3)
    results = fetch_all([http_server.url("/slow.xml")] * 10)
    assert all(isinstance(r, FetchResult) for r in results), results
    assert http_server.max_concurrency("/slow.xml") == 4


def test_at_most_32_requests_at_once_overall() -> None:
    # Ten host names for one server (127.0.0.1 ... 127.0.0.10 all reach it):
    # 4 each would be 40 at once; the overall limit holds it at 32.
    with FixtureServer(host="0.0.0.0") as server:
        server.add("/slow.xml", b"<rss/>", delay=0.5)
        urls = [
            f"http://127.0.0.{h}:{server.port}/slow.xml" for h in range(1, 11) for _ in range(4)
        ]
        results = fetch_all(urls)
        assert all(isinstance(r, FetchResult) for r in results), results
        assert server.max_concurrency() == 32


def test_a_body_of_10_mb_is_read_and_one_byte_more_is_refused(http_server: FixtureServer) -> None:
    http_server.add("/edge.xml", b"x" * (10 * MB))
    http_server.add("/over.xml", b"x" * (10 * MB + 1))
    edge, over = fetch_all([http_server.url("/edge.xml"), http_server.url("/over.xml")])
    assert isinstance(edge, FetchResult) and len(edge.content or b"") == 10 * MB
    assert isinstance(over, FetchError)
    assert "s1" in str(over) and http_server.url("/over.xml") in str(over)


def test_5_redirects_are_followed_and_a_6th_is_refused(http_server: FixtureServer) -> None:
    for hop in range(6):
        http_server.redirect(f"/r{hop}", f"/r{hop + 1}")
    http_server.add("/r6", b"<rss/>")
    for hop in range(6):
        http_server.redirect(f"/s{hop}", f"/s{hop + 1}" if hop < 4 else "/r6")
    # /s0 reaches the feed in 5 redirects, /r0 needs 6.
    five, six = fetch_all([http_server.url("/s0"), http_server.url("/r0")])
    assert isinstance(five, FetchResult) and five.content == b"<rss/>"
    assert isinstance(six, FetchError)
    assert "too many redirects" in str(six)
    assert http_server.count("/r6") == 1  # reached by the five-hop chain only
