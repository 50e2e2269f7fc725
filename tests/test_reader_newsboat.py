"""A real feed reader, Debian's newsboat, subscribes to the served Atom feed.

newsboat runs non-interactively (``-x reload``) against the app under uvicorn,
with its own urls file, config and cache in a temporary directory; its SQLite
cache then shows what a subscriber would see. scripts/test installs newsboat:
this test is never skipped.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator.store import Store
from aggregator.web.app import WebContext, create_app
from tests.test_publish import fill, make_item, save
from tests.test_web_feeds import LiveServer, make_config, publish_now


class RequestLog:
    """ASGI wrapper recording (method, path, request headers, status) of each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.entries: list[tuple[str, str, dict[str, str], int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.entries.append((scope["method"], scope["path"], headers, message["status"]))
            await send(message)

        await self.app(scope, receive, record)


class Newsboat:
    """newsboat with a private urls file, config and cache under ``home``."""

    def __init__(self, home: Path, feed_url: str) -> None:
        self.home = home
        self.urls = home / "urls"
        self.config = home / "config"
        self.cache = home / "cache.db"
        self.urls.write_text(feed_url + "\n", encoding="utf-8")
        self.config.write_text("", encoding="utf-8")

    def run(self, *commands: str) -> str:
        binary = shutil.which("newsboat")
        assert binary, "newsboat is not installed: run the tests through scripts/test"
        args = [binary, "-u", str(self.urls), "-c", str(self.cache), "-C", str(self.config)]
        for command in commands:
            args += ["-x", command]
        env = {**os.environ, "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home)}
        env.pop("http_proxy", None)
        env.pop("HTTP_PROXY", None)
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr or done.stdout
        return done.stdout

    def items(self) -> list[sqlite3.Row]:
        with sqlite3.connect(self.cache) as db:
            db.row_factory = sqlite3.Row
            return list(
                db.execute("SELECT title, author, url, guid, content, feedurl FROM rss_item")
            )

    def feed_title(self) -> str:
        with sqlite3.connect(self.cache) as db:
            return str(db.execute("SELECT title FROM rss_feed").fetchone()[0])


@pytest.fixture
def app_and_log(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[WebContext, RequestLog]]:
    store = Store.open(sqlite_url)
    fill(store)
    ctx = WebContext(config=make_config(tmp_path / "public", sqlite_url), store=store, secret="s")
    try:
        yield ctx, RequestLog(create_app(ctx))
    finally:
        store.close()


def test_newsboat_subscribes_and_revalidates(
    app_and_log: tuple[WebContext, RequestLog], tmp_path: Path
) -> None:
    ctx, log = app_and_log
    save(
        ctx.store,
        "kofic",
        [make_item("kofic", 40, content_html="<p>Cannes<script>alert(1)</script> line-up</p>")],
    )
    publish_now(ctx)
    home = tmp_path / "newsboat"
    home.mkdir()
    with LiveServer(log) as server:
        reader = Newsboat(home, server.url("/feed.atom"))
        reader.run("reload")
        unread = reader.run("print-unread")

        items = reader.items()
        assert "9 unread articles" in unread
        assert reader.feed_title() == "Korean Film Digest"
        assert len(items) == 9
        assert len({row["guid"] for row in items}) == 9
        assert all(row["guid"].startswith("urn:uuid:") for row in items)
        by_url = {row["url"]: row for row in items}
        newest = by_url["https://kofic.example/articles/40"]
        assert newest["title"] == "kofic story 40: 부산국제영화제 line-up"
        assert "Cannes" in newest["content"] and "<script" not in newest["content"]
        # Entries without a writer are credited to their outlet, not to the digest.
        assert by_url["https://kofic.example/articles/2"]["author"] == "KOFIC News"
        assert by_url["https://kobiz.example/articles/101"]["author"] == "Kim Ji-seok"

        # newsboat 2.21 saves a feed's validators only once the feed is in its
        # cache, i.e. from the second download on; the reload after that is a
        # conditional GET, answered 304 with nothing new.
        reader.run("reload")
        reader.run("reload")
        feed_requests = [e for e in log.entries if e[1] == "/feed.atom"]
        assert [e[3] for e in feed_requests] == [200, 200, 304]
        conditional = feed_requests[2][2]
        assert conditional["if-none-match"].removeprefix("W/").strip('"')
        assert "gzip" in conditional["accept-encoding"]
        assert len(reader.items()) == 9

        # A new story is published: the reader gets it, the old ones keep their ids.
        save(ctx.store, "kobiz", [make_item("kobiz", 200, title="Busan: opening film named")])
        publish_now(ctx)
        reader.run("reload")
        after = reader.items()
        assert len(after) == 10
        assert {row["guid"] for row in items} < {row["guid"] for row in after}
        assert "Busan: opening film named" in {row["title"] for row in after}
        assert [e[3] for e in log.entries if e[1] == "/feed.atom"][-1] == 200
