"""``aggregator demo``: the whole pipeline on one machine with no internet.

It serves bundled sample sources (listing pages shaped like the Korean Film
Biz Zone Ko-pick and news boards, one of them in EUC-KR, plus RSS, Atom and
JSON Feed outlets; English and Korean) from its own web app under
``/demo-sources/``, starts a local SMTP sink, and then runs exactly the
production code on a fresh SQLite database: ingest, publish, compose the
first digest, deliver it to two demo subscribers, and serve the web app.
Everything lands in one directory that the command prints.

The feeds.yaml it writes says ``demo: true``: ``aggregator -c DIR/feeds.yaml
run`` then serves the same sample sources and mail sink itself, on the port
of ``site.url``, so the directory keeps working after the demo exits. The
demo never writes into a directory that already holds a feeds.yaml or a
database.

The sample pages carry date placeholders filled in at serve time, so the
items are always from "this week" whenever the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AggregatorError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..config import Config

log = logging.getLogger(__name__)

SEOUL = ZoneInfo("Asia/Seoul")
DEMO_SECRET = "demo-secret-not-for-production-use"
SOURCES_PATH = "demo-sources"
# Files whose presence means "an installation lives here": the demo never overwrites them.
_INSTALLATION_FILES = ("feeds.yaml", "demo.db", "data/aggregator.db")
_DATABASE_PATTERNS = ("*.db", "*.sqlite", "*.sqlite3")
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


def sample_page(path: str, query: str, base: str, now: datetime) -> tuple[int, bytes, str | None]:
    """One response of the sample sources: status, body (placeholders filled), content type.

    ``path`` is relative to the sources' root (``/previews.xml``), ``base`` the
    absolute URL of that root, which the pages' own links start with.
    """
    params = parse_qs(query)
    content_type: str | None
    if path == "/eng/news/ko_pick.jsp" and params.get("mode") != ["VIEW"]:
        page = "kopick_2.html" if params.get("pageIndex") == ["2"] else "kopick_1.html"
        data, content_type = site_file(page), "text/html; charset=utf-8"
        status = 200
    elif path in _FILES:
        name, content_type = _FILES[path]
        data, status = site_file(name), 200
    elif path.endswith(".jsp") or path.count("/") >= 2:
        title = path.rsplit("/", 1)[-1].replace("-", " ") or "article"
        body = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Demo article</title>'
            f"</head><body><h1>Demo article: {html.escape(title)}</h1><p>This page stands in "
            "for the original article on the publisher's site.</p></body></html>"
        )
        data, content_type, status = body.encode(), "text/html; charset=utf-8", 200
    else:
        data, content_type, status = b"not found\n", "text/plain", 404
    encoding = "euc-kr" if path.startswith("/kor/") else "utf-8"
    return status, fill_placeholders(data, base, now, encoding), content_type


def sources_base_url(site_url: str) -> str:
    """Where the web app serves the sample sources: ``<site.url>demo-sources``."""
    return site_url.rstrip("/") + "/" + SOURCES_PATH


def mount_samples(app: Starlette, site_url: str, now: datetime) -> None:
    """Serve the sample sources from ``app`` itself, under ``/demo-sources/``.

    So the demo's feeds.yaml names sources on the same port as its web app,
    and ``aggregator run`` on that file finds them as long as it runs.
    """
    base = sources_base_url(site_url)

    async def endpoint(request: Request) -> Response:
        path = "/" + str(request.path_params["path"])
        status, data, content_type = sample_page(path, request.url.query, base, now)
        headers = {"Content-Type": content_type} if content_type else {}
        log.debug("demo source: %s %s %d", request.method, request.url.path, status)
        return Response(data, status_code=status, headers=headers)

    route = Route(f"/{SOURCES_PATH}/{{path:path}}", endpoint, methods=["GET", "HEAD"])
    app.router.routes.insert(0, route)


@dataclass
class MailSink:
    """An aiosmtpd handler that writes every received message to ``directory``."""

    directory: Path
    files: list[Path] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            # Numbered after what is already there: a restarted `run` adds, never overwrites.
            n = len(list(self.directory.glob("*.eml"))) + 1
            path = self.directory / f"{n:02d}-{rcpt}.eml"
            path.write_bytes(envelope.original_content or envelope.content)
            self.files.append(path)
        return "250 OK: stored by the demo mail sink"


def start_mail_sink(directory: Path, port: int, host: str = "127.0.0.1") -> tuple[Any, MailSink]:
    """An SMTP server on ``host:port`` that files each message in ``directory``."""
    from aiosmtpd.controller import Controller

    directory.mkdir(parents=True, exist_ok=True)
    handler = MailSink(directory)
    controller = Controller(handler, hostname=host, port=port)
    try:
        controller.start()
    except (OSError, RuntimeError) as exc:
        raise AggregatorError(f"demo mail sink cannot listen on {host}:{port}: {exc}") from None
    return controller, handler


@contextlib.contextmanager
def mail_sink(directory: Path) -> Iterator[tuple[int, MailSink]]:
    port = free_port()
    controller, handler = start_mail_sink(directory, port)
    try:
        yield port, handler
    finally:
        controller.stop()


def refuse_installation(directory: Path) -> None:
    """Raise if ``directory`` holds a feeds.yaml or a database: the demo overwrites nothing."""
    found = [name for name in _INSTALLATION_FILES if (directory / name).exists()]
    found += sorted(
        p.name for pattern in _DATABASE_PATTERNS for p in directory.glob(pattern) if p.is_file()
    )
    if found:
        names = ", ".join(dict.fromkeys(found))
        raise AggregatorError(
            f"{directory} already holds {names}: the demo never overwrites an installation; "
            "give it a new or empty directory with --dir (or run without --dir), or serve "
            f"this one with `aggregator -c {directory / 'feeds.yaml'} run`"
        )


def demo_config_text(web_port: int, smtp_port: int, directory: Path) -> str:
    """The demo's feeds.yaml: everything on 127.0.0.1, runnable by ``aggregator run`` as is."""
    site_url = f"http://127.0.0.1:{web_port}/"
    sources_base = sources_base_url(site_url)
    return f"""\
# Written by `aggregator demo`. Serve it with `aggregator -c {directory / "feeds.yaml"} run`:
# with `demo: true`, `run` listens on the port of site.url, serves the sample
# sources itself under {sources_base}/ and files the digest mails it sends
# in {directory / "mail"} (an SMTP sink on 127.0.0.1:{smtp_port}).
demo: true

site:
  title: Korean Film Digest (demo)
  url: {site_url}
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
    serving: bool = False


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
    """Run the pipeline once against the sample sources; optionally keep serving.

    Raises :class:`AggregatorError` before writing anything when ``directory``
    already holds an installation.
    """
    import uvicorn

    from ..config import load_config
    from ..deliver import deliver_digest
    from ..digest import compose
    from ..ingest import Ingestor
    from ..models import utcnow
    from ..publish import publish_from_store
    from ..render import UNSUBSCRIBE_PLACEHOLDER
    from ..scheduler import bind_web_socket
    from ..store import Store
    from ..web.app import WebContext, create_app
    from ..web.server import EmbeddedServer

    def step(text: str) -> None:
        log.info("demo: %s", text)
        if on_step is not None:
            on_step(text)

    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="aggregator-demo-"))
    directory = directory.resolve()
    refuse_installation(directory)
    directory.mkdir(parents=True, exist_ok=True)
    listener = bind_web_socket("127.0.0.1", web_port)
    web_port = int(listener.getsockname()[1])
    now = utcnow()
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        smtp_port, sink = stack.enter_context(mail_sink(directory / "mail"))
        config_path = directory / "feeds.yaml"
        config_path.write_text(demo_config_text(web_port, smtp_port, directory), encoding="utf-8")
        config = load_config(config_path)
        store = Store.open(config.database_url)
        stack.callback(store.close)
        app = create_app(WebContext(config=config, store=store, secret=DEMO_SECRET))
        mount_samples(app, config.site.url, now)
        server = EmbeddedServer(
            # No lifespan: the app needs none, and a lifespan task cancelled
            # by Ctrl-C logs a traceback.
            uvicorn.Config(
                app, host="127.0.0.1", port=web_port, log_level="warning", lifespan="off"
            )
        )
        web_task = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            while not server.started and not web_task.done():
                await asyncio.sleep(0.05)
            step(f"web app and sample sources on {config.site.url}; mail sink on port {smtp_port}")
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
            published = await asyncio.to_thread(
                publish_from_store, store, config.site, config.output_dir, sections=sections
            )
            step(f"published {published.item_count} items to {published.atom_path}")

            for email, name in SUBSCRIBERS:
                store.add_subscriber(email, name=name, active=True, now=now)
            # The install's first issue: what was just stored. The next one,
            # sent by `run` at the weekly slot, starts where it ends.
            digest = compose(config, store, now=utcnow())

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
                serving=serve_forever,
            )
            if on_ready is not None:
                on_ready(result)
            if serve_forever:
                await _serve_until_signal(web_task)
            return result
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await web_task


class DemoRuntime:
    """What ``aggregator run`` adds for a feeds.yaml written by the demo (``demo: true``).

    The sample sources, served by the service's own web app, and the mail
    sink on the port the file names, filing messages in ``mail/`` beside it.
    """

    def __init__(self, config: Config, now: datetime) -> None:
        self.config = config
        self.now = now
        self.mail_dir = (config.path.parent if config.path else Path.cwd()) / "mail"
        self._controller: Any = None

    def start(self) -> None:
        """Start the mail sink; a busy port is logged, not fatal (the web app still works)."""
        smtp = self.config.smtp
        try:
            self._controller, _ = start_mail_sink(self.mail_dir, smtp.port, smtp.host)
        except AggregatorError as exc:
            log.warning("%s: digests cannot be delivered in this demo run", exc)

    def mount(self, app: Starlette) -> None:
        mount_samples(app, self.config.site.url, self.now)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
