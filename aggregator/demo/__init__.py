"""``aggregator demo``: the whole pipeline on one machine with no internet.

It serves bundled sample sources from 127.0.0.1 (listing pages shaped like
the Korean Film Biz Zone Ko-pick and news boards, one of them in EUC-KR, plus
RSS, Atom and JSON Feed outlets; English and Korean), starts a local SMTP
sink, and then runs exactly the production code on a fresh SQLite database:
ingest, publish, compose the weekly digest, deliver it to two demo
subscribers, and serve the web app. Everything lands in one directory that
the command prints, with the URLs to open.

The sample pages carry date placeholders filled in at serve time, so the
items are always from "this week" whenever the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

SEOUL = ZoneInfo("Asia/Seoul")
DEMO_SECRET = "demo-secret-not-for-production-use"
SUBSCRIBERS = (("reader@example.org", "김민지"), ("critic@example.org", "Daniel Park"))

_PLACEHOLDER = re.compile(rb"\{\{(base|date|korean_date|rfc822|iso)(?::(\d+))?\}\}")

# path -> (file in demo/site, content type); None content type: no charset sent.
_FILES: dict[str, tuple[str, str | None]] = {
    "/kor/news/news.jsp": ("news_ko.html", "text/html"),  # EUC-KR, declared only in <meta>
    "/previews.xml": ("previews.xml", "application/rss+xml; charset=utf-8"),
    "/festival.atom": ("festival.atom", "application/atom+xml; charset=utf-8"),
    "/industry.json": ("industry.json", "application/feed+json"),
    "/upload/kopick-112.svg": ("kopick-112.svg", "image/svg+xml"),
    "/upload/kopick-111.svg": ("kopick-111.svg", "image/svg+xml"),
    "/upload/preview-2041.svg": ("preview-2041.svg", "image/svg+xml"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def site_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("site", name).read_bytes()


def fill_placeholders(data: bytes, base: str, now: datetime, encoding: str = "utf-8") -> bytes:
    """Replace ``{{date:N}}`` (N days ago) and friends in bytes of an ASCII-compatible encoding."""

    def one(match: re.Match[bytes]) -> bytes:
        kind = match.group(1).decode()
        if kind == "base":
            return base.encode()
        when = now - timedelta(days=int(match.group(2) or 0), hours=1)
        local = when.astimezone(SEOUL)
        text = {
            "date": f"{local:%Y.%m.%d}",
            "korean_date": f"{local.year}년 {local.month}월 {local.day}일",
            "rfc822": format_datetime(when),
            "iso": when.isoformat(),
        }[kind]
        # Korean dates also go into an EUC-KR page: encode like the page around them.
        return text.encode(encoding)

    return _PLACEHOLDER.sub(one, data)


class _SampleHandler(BaseHTTPRequestHandler):
    server: _SampleServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("demo source: " + format, *args)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        if path == "/eng/news/ko_pick.jsp" and query.get("mode") != ["VIEW"]:
            page = "kopick_2.html" if query.get("pageIndex") == ["2"] else "kopick_1.html"
            self._send(site_file(page), "text/html; charset=utf-8")
        elif path in _FILES:
            name, content_type = _FILES[path]
            self._send(site_file(name), content_type)
        elif path.endswith(".jsp") or path.count("/") >= 2:
            title = path.rsplit("/", 1)[-1].replace("-", " ") or "article"
            body = (
                '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Demo article</title>'
                f"</head><body><h1>Demo article: {title}</h1><p>This page stands in for the "
                "original article on the publisher's site.</p></body></html>"
            )
            self._send(body.encode(), "text/html; charset=utf-8")
        else:
            self._send(b"not found\n", "text/plain", status=404)

    def _send(self, data: bytes, content_type: str | None, status: int = 200) -> None:
        encoding = "euc-kr" if self.path.startswith("/kor/") else "utf-8"
        data = fill_placeholders(data, self.server.base, self.server.now, encoding)
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _SampleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, now: datetime) -> None:
        super().__init__(("127.0.0.1", port), _SampleHandler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.now = now


@contextlib.contextmanager
def sample_sources(now: datetime) -> Iterator[str]:
    """Serve the bundled sample sources; yields their base URL."""
    server = _SampleServer(0, now)
    thread = threading.Thread(target=server.serve_forever, name="demo-sources", daemon=True)
    thread.start()
    try:
        yield server.base
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class MailSink:
    """An aiosmtpd handler that writes every received message to ``directory``."""

    directory: Path
    files: list[Path] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            n = len(self.files) + 1
            path = self.directory / f"{n:02d}-{rcpt}.eml"
            path.write_bytes(envelope.original_content or envelope.content)
            self.files.append(path)
        return "250 OK: stored by the demo mail sink"


@contextlib.contextmanager
def mail_sink(directory: Path) -> Iterator[tuple[int, MailSink]]:
    from aiosmtpd.controller import Controller

    directory.mkdir(parents=True, exist_ok=True)
    handler = MailSink(directory)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


def demo_config_text(sources_base: str, web_port: int, smtp_port: int, directory: Path) -> str:
    return f"""\
# Written by `aggregator demo`: the bundled sample sources on 127.0.0.1.
site:
  title: Korean Film Digest (demo)
  url: http://127.0.0.1:{web_port}/
  description: Ko-pick columns, film previews and Korean film industry news, weekly.
  language: en
  timezone: Asia/Seoul
  postal_address: "Korean Film Digest (demo), 55 Centum jungang-ro, Busan, Republic of Korea"
  sender_email: digest@demo.invalid
  sender_name: Korean Film Digest
  output_dir: {directory / "public"}

storage:
  url: sqlite:///{directory / "demo.db"}

sections:
  - id: ko-pick
    title: Ko-pick columns
    match: {{title: "^\\\\s*Ko-?pick\\\\b"}}
  - id: previews
    title: Film previews
    match: {{title: "(?i)anticipated|preview|upcoming|line-?up|기대작"}}

sources:
  - id: kobiz-kopick
    title: KoBiz Ko-pick (demo)
    type: html
    url: {sources_base}/eng/news/ko_pick.jsp?blbdComCd=601029
    section: ko-pick
    identity_params: [blbdComCd, seq, mode]
    max_pages: 3
    select:
      item: "ul.list > li"
      title: "p.tit a"
      summary: "p.txt"
      date: "span.date"
      image: "img@src"
      next_page: "a.next@href"
  - id: kobiz-news-ko
    title: 영화계 소식 (demo, EUC-KR)
    type: html
    url: {sources_base}/kor/news/news.jsp?blbdComCd=601006
    identity_params: [blbdComCd, seq, mode]
    select:
      item: "ul.list > li"
      title: "p.tit a"
      summary: "p.txt"
      date: "span.date"
  - id: seoul-screen
    title: Seoul Screen Weekly (demo RSS)
    url: {sources_base}/previews.xml
  - id: festival-desk
    title: Festival Desk (demo Atom)
    url: {sources_base}/festival.atom
  - id: box-office-notes
    title: Box Office Notes (demo JSON Feed)
    url: {sources_base}/industry.json

digest:
  schedule: "mon 09:00"
  sections: [ko-pick, previews]
  other_section_title: More Korean film news
  max_items_per_section: 10

smtp:
  host: 127.0.0.1
  port: {smtp_port}
  rate: 0
"""


@dataclass(frozen=True, slots=True)
class DemoResult:
    directory: Path
    config_path: Path
    web_url: str
    feed_path: Path
    preview_html: Path
    preview_text: Path
    mails: tuple[Path, ...]
    items: int
    duplicates: int
    digest_id: int | None
    digest_items: int


async def _serve_until_signal(web_task: asyncio.Task[None]) -> None:
    """Wait for Ctrl-C or SIGTERM (or the web server's end); the caller then stops the server.

    Without this, asyncio's own Ctrl-C handling cancels every task mid-await
    and the user gets a screenful of tracebacks instead of a clean stop.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread
        installed.append(sig)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, web_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        for number in installed:
            loop.remove_signal_handler(number)


async def run_demo(
    directory: Path | None = None,
    *,
    web_port: int = 0,
    serve_forever: bool = False,
    on_step: Callable[[str], None] | None = None,
    on_ready: Callable[[DemoResult], None] | None = None,
) -> DemoResult:
    """Run the pipeline once against the sample sources; optionally keep serving."""
    import uvicorn

    from ..config import load_config
    from ..deliver import deliver_digest
    from ..digest import Period, compose
    from ..ingest import Ingestor
    from ..models import utcnow
    from ..publish import publish_from_store
    from ..render import UNSUBSCRIBE_PLACEHOLDER
    from ..store import Store
    from ..web.app import WebContext, create_app
    from ..web.server import EmbeddedServer

    def step(text: str) -> None:
        log.info("demo: %s", text)
        if on_step is not None:
            on_step(text)

    directory = Path(directory or tempfile.mkdtemp(prefix="aggregator-demo-")).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    web_port = web_port or free_port()
    now = utcnow()
    with sample_sources(now) as base, mail_sink(directory / "mail") as (smtp_port, sink):
        config_path = directory / "feeds.yaml"
        config_path.write_text(
            demo_config_text(base, web_port, smtp_port, directory), encoding="utf-8"
        )
        config = load_config(config_path)
        store = Store.open(config.database_url)
        server: EmbeddedServer | None = None
        web_task: asyncio.Task[None] | None = None
        try:
            step(f"sample sources on {base}; mail sink on 127.0.0.1:{smtp_port}")
            store.sync_sources(config.sources)
            # The KoBiz boards first, so a story they share with an outlet is
            # stored as KoBiz's and the outlet's copy is the marked duplicate.
            ingestor = Ingestor(config, store)
            boards = [s.id for s in config.sources if s.type == "html"]
            others = [s.id for s in config.sources if s.type != "html"]
            stats = await ingestor.run(boards) + await ingestor.run(others)
            for s in stats:
                step(f"ingest {s.source_id}: {s.outcome.value}, {s.new} new, {s.duplicates} dup")
            sections = {s.id: s.title for s in config.sections}
            published = publish_from_store(store, config.site, config.output_dir, sections=sections)
            step(f"published {published.item_count} items to {published.atom_path}")

            for email, name in SUBSCRIBERS:
                store.add_subscriber(email, name=name, active=True, now=now)
            period = Period(start=now - timedelta(days=7), end=utcnow() + timedelta(seconds=1))
            digest = compose(config, store, now=utcnow(), period=period)

            app = create_app(WebContext(config=config, store=store, secret=DEMO_SECRET))
            server = EmbeddedServer(
                # No lifespan: the app needs none, and a lifespan task cancelled
                # by Ctrl-C logs a traceback.
                uvicorn.Config(
                    app, host="127.0.0.1", port=web_port, log_level="warning", lifespan="off"
                )
            )
            web_task = asyncio.create_task(server.serve())
            while not server.started and not web_task.done():
                await asyncio.sleep(0.05)

            preview_dir = directory / "preview"
            preview_dir.mkdir(exist_ok=True)
            preview_html = preview_dir / "digest.html"
            preview_text = preview_dir / "digest.txt"
            if digest is not None:
                web_unsub = config.site.url + "subscribe"
                preview_html.write_text(
                    digest.html.replace(UNSUBSCRIBE_PLACEHOLDER, web_unsub), encoding="utf-8"
                )
                preview_text.write_text(
                    digest.text.replace(UNSUBSCRIBE_PLACEHOLDER, web_unsub), encoding="utf-8"
                )
                step(f"composed digest #{digest.id}: {digest.subject}")
                report = await deliver_digest(
                    store, digest, site=config.site, smtp=config.smtp, secret=DEMO_SECRET
                )
                step(f"delivered to {report.sent} subscribers (failed: {report.failed})")
            visible = store.count_items(include_duplicates=False)
            result = DemoResult(
                directory=directory,
                config_path=config_path,
                web_url=config.site.url,
                feed_path=published.atom_path,
                preview_html=preview_html,
                preview_text=preview_text,
                mails=tuple(sink.files),
                items=visible,
                duplicates=store.count_items() - visible,
                digest_id=digest.id if digest else None,
                digest_items=digest.item_count if digest else 0,
            )
            if on_ready is not None:
                on_ready(result)
            if serve_forever:
                await _serve_until_signal(web_task)
            return result
        finally:
            if server is not None:
                server.should_exit = True
            if web_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await web_task
            store.close()
