"""Hostile sources, end to end: fixture server → ingest → store → feed → digest.

Unit tests of the fetcher, parsers and sanitizer cover each defence on its
own (tests/test_fetch.py, test_sources.py, test_normalize.py). Here every case
goes through the whole pipeline and asserts a specific outcome: an error
message on the source, a bounded size, or content that is absent from every
output a subscriber can see (the store, feed.atom, feed.json, the email).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from aggregator import fetch as fetch_module
from aggregator.config import Config, parse_config
from aggregator.deliver import deliver_digest
from aggregator.digest import Period, compose
from aggregator.ingest import Ingestor
from aggregator.models import IngestOutcome, IngestStats, SubscriberStatus, utcnow
from aggregator.publish import publish_from_store
from aggregator.store import Store
from tests.support.http import FixtureServer
from tests.support.smtp import SmtpFixture

MB = 1024 * 1024
NOW = utcnow()


def rss_doc(items: str, *, doctype: str = "", encoding: str = "UTF-8") -> str:
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>{doctype}<rss version="2.0"><channel>'
        "<title>Hostile</title><link>https://evil.example/</link><description>x</description>"
        f"{items}</channel></rss>"
    )


def rss_item(
    guid: str, title: str, body: str, *, date: str | None = None, link: str | None = None
) -> str:
    date = date or format_datetime(NOW - timedelta(hours=1))
    link = link or f"https://evil.example/{guid}"
    return (
        f"<item><guid>{guid}</guid><title>{title}</title>"
        f"<link>{link}</link><pubDate>{date}</pubDate>"
        f"<description>{body}</description></item>"
    )


@pytest.fixture
def pipeline(tmp_path: Path, sqlite_url: str) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, sqlite_url)
    yield p
    p.store.close()


class Pipeline:
    """One config, one store, and every output a subscriber could see."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.store = Store.open(db_url)

    def config(self, sources: str) -> Config:
        text = (
            f"site: {{title: T, url: 'http://127.0.0.1:9/', output_dir: '{self.tmp_path}/pub'}}\n"
            f"storage: {{url: '{self.db_url}'}}\n"
            "defaults: {interval: 1h, timeout: 5s}\nsources:\n" + sources
        )
        return parse_config(text, path=self.tmp_path / "feeds.yaml")

    def ingest(self, config: Config) -> dict[str, IngestStats]:
        self.store.sync_sources(config.sources)
        return {s.source_id: s for s in asyncio.run(Ingestor(config, self.store).run())}

    def everything(self, config: Config, smtp: SmtpFixture | None = None) -> str:
        """The stored rows, both published feeds and the digest, as one text.

        With ``smtp``, the digest is also mailed to a subscriber and the decoded
        parts of the message as received are included: the email itself.
        """
        parts = []
        for item in self.store.recent_items(1000, include_duplicates=True):
            parts += [item.title, item.summary_html, item.content_html, item.text, item.url]
            parts += [item.excerpt, item.image_url or ""]
        result = publish_from_store(self.store, config.site, config.output_dir)
        parts.append(result.atom_path.read_text(encoding="utf-8"))
        parts.append(result.json_path.read_text(encoding="utf-8"))
        period = Period(start=NOW - timedelta(days=7), end=utcnow() + timedelta(seconds=1))
        digest = compose(config, self.store, period=period)
        if digest is not None:
            parts += [digest.html, digest.text, digest.subject]
        if digest is not None and smtp is not None:
            self.store.add_subscribers(
                [("reader@example.org", None)], now=utcnow(), status=SubscriberStatus.ACTIVE
            )
            site = replace(config.site, sender_email="digest@example.org")
            report = asyncio.run(
                deliver_digest(self.store, digest, site=site, smtp=smtp.settings(), secret="k" * 32)
            )
            assert report.pending == 0
            [received] = smtp.to("reader@example.org")
            message = received.message
            parts.append(str(message["Subject"]))
            for part in message.walk():
                if part.get_content_maintype() == "text":
                    parts.append(part.get_content())
        return "\n".join(parts)


def one_source(server: FixtureServer, path: str, **extra: str) -> str:
    options = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"  - {{id: hostile, url: '{server.url(path)}'{options}}}\n"


# Runs the real command and reports the peak RSS of that process alone: VmHWM
# belongs to the address space, whereas ru_maxrss survives exec and would
# report the (large) pytest process that forked it.
PEAK_RSS = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                print("PEAK_RSS_KB=" + line.split()[1], file=sys.stderr)
atexit.register(report)
sys.argv = ["aggregator", *sys.argv[1:]]
runpy.run_module("aggregator", run_name="__main__", alter_sys=True)
"""


def fetch_peak_rss_mb(tmp_path: Path, url: str, name: str) -> tuple[float, str]:
    """Peak RSS (MB) and stderr of ``aggregator fetch`` over one source in a fresh process."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"site: {{title: T, url: 'http://127.0.0.1:9/', output_dir: '{tmp_path}/pub-{name}'}}\n"
        f"storage: {{url: 'sqlite:///{tmp_path}/{name}.db'}}\n"
        f"defaults: {{interval: 1h, timeout: 30s}}\nsources:\n  - {{id: s, url: '{url}'}}\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "--log-text", "-c", str(config), "fetch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    peaks = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    assert peaks, proc.stderr
    return int(peaks[-1].split("=")[1]) / 1024, proc.stderr


# ----------------------------------------------------------------------- XML attacks


def test_billion_laughs_is_not_expanded(http_server: FixtureServer, pipeline: Pipeline) -> None:
    lol = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)
    )
    doc = rss_doc(
        rss_item("laughs", "Title &lol9;", "Body &lol9;")
        + rss_item("ok", "A normal story", "Fine."),
        doctype=f"<!DOCTYPE rss [{lol}]>",
    )
    http_server.add("/laughs.xml", doc)
    config = pipeline.config(one_source(http_server, "/laughs.xml"))

    stats = pipeline.ingest(config)["hostile"]

    # Read as a malformed feed: the undefined-looking entities stay unexpanded.
    assert stats.outcome is IngestOutcome.OK, stats.error
    everything = pipeline.everything(config)
    assert "lollollol" not in everything
    assert "A normal story" in everything
    assert len(everything) < 200_000


def test_quadratic_blowup_is_not_expanded(http_server: FixtureServer, pipeline: Pipeline) -> None:
    big = "x" * 50_000
    doc = rss_doc(
        rss_item("blowup", "Blowup", "&big;" * 5_000) + rss_item("ok", "Normal", "Fine."),
        doctype=f'<!DOCTYPE rss [<!ENTITY big "{big}">]>',
    )
    http_server.add("/blowup.xml", doc)
    config = pipeline.config(one_source(http_server, "/blowup.xml"))

    pipeline.ingest(config)

    items = pipeline.store.recent_items(10)
    assert "Normal" in [item.title for item in items]
    for item in items:  # expanded, the body would be 250 MB of text
        assert len(item.text) + len(item.content_html) + len(item.summary_html) < 100_000
    assert len(pipeline.everything(config)) < 500_000


XXE_DOCTYPES: dict[str, Callable[[Path, str], str]] = {
    "file-entity": lambda secret, _: f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>',
    "external-dtd": lambda secret, _: f'<!DOCTYPE rss SYSTEM "file://{secret.parent}/x.dtd">',
    "parameter-entity": lambda secret, _: (
        f'<!DOCTYPE rss [<!ENTITY % dtd SYSTEM "file://{secret.parent}/x.dtd"> %dtd;]>'
    ),
    "http-entity": lambda _, ssrf: f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{ssrf}">]>',
}


@pytest.mark.parametrize("doctype", list(XXE_DOCTYPES))
def test_external_entity_never_reads_a_local_file_or_url(
    http_server: FixtureServer,
    pipeline: Pipeline,
    smtp_server: SmtpFixture,
    tmp_path: Path,
    doctype: str,
) -> None:
    marker = "XXE-MARKER-4f2b9c"
    secret = tmp_path / "secret.txt"
    secret.write_text(marker, encoding="utf-8")
    (tmp_path / "x.dtd").write_text(
        f'<!ENTITY xxe SYSTEM "file://{secret}"><!ENTITY leak "{marker}">', encoding="utf-8"
    )
    http_server.add("/internal/secret", marker, content_type="text/plain")
    doc = rss_doc(
        rss_item("xxe", "Leak &xxe; &leak;", "Content: &xxe;") + rss_item("ok", "Normal", "Fine."),
        doctype=XXE_DOCTYPES[doctype](secret, http_server.url("/internal/secret")),
    )
    http_server.add("/xxe.xml", doc)
    config = pipeline.config(one_source(http_server, "/xxe.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK, stats.error
    everything = pipeline.everything(config, smtp_server)
    assert "Normal" in everything
    assert marker not in everything
    assert http_server.count("/internal/secret") == 0  # no request made on the feed's behalf


# ----------------------------------------------------------------------- size and time


@functools.cache
def gzip_bomb() -> bytes:
    """200 MB of spaces in well under 1 MB of gzip (made once, on first use)."""
    return gzip.compress(b"<rss>" + b" " * (200 * MB), compresslevel=9)


def test_gzip_bomb_is_stopped_by_the_cap(http_server: FixtureServer, pipeline: Pipeline) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 1 * MB
    http_server.add_raw(
        "/bomb.xml",
        bomb,
        headers={"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"},
    )
    http_server.add("/good.xml", rss_doc(rss_item("g", "Good", "Fine.")))
    config = pipeline.config(
        one_source(http_server, "/bomb.xml")
        + f"  - {{id: good, url: '{http_server.url('/good.xml')}'}}\n"
    )

    stats = pipeline.ingest(config)

    assert stats["hostile"].outcome is IngestOutcome.ERROR
    assert "response too large: more than 10485760 bytes after gzip decoding" in (
        stats["hostile"].error or ""
    )
    assert stats["hostile"].elapsed < 10
    assert stats["good"].outcome is IngestOutcome.OK
    state = pipeline.store.source_state("hostile")
    assert state is not None and "response too large" in (state.last_error or "")


def test_fifty_megabyte_response_is_refused(http_server: FixtureServer, pipeline: Pipeline) -> None:
    http_server.add("/huge.xml", b"<rss>" + b"a" * (50 * MB), chunked=True)
    config = pipeline.config(one_source(http_server, "/huge.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.ERROR
    assert "response too large: more than 10485760 bytes" in (stats.error or "")
    assert "/huge.xml" in (stats.error or "")
    assert stats.elapsed < 10
    assert pipeline.store.count_items() == 0


BIG_BODIES: dict[str, tuple[bytes | Callable[[], bytes], dict[str, str], float]] = {
    # name: (body or its maker, extra headers, allowed growth over a normal fetch in MB)
    "billion-laughs": (
        rss_doc(
            rss_item("l", "&lol9;", "&lol9;"),
            doctype="<!DOCTYPE rss ["
            + '<!ENTITY lol0 "lol">'
            + "".join(f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10))
            + "]>",
        ).encode(),
        {},
        100,  # expat's amplification limit stops it after some MB; a real expansion is 3 GB
    ),
    "quadratic-blowup": (
        rss_doc(
            rss_item("b", "B", "&big;" * 5_000),
            doctype=f'<!DOCTYPE rss [<!ENTITY big "{"x" * 50_000}">]>',
        ).encode(),
        {},
        60,  # expanded: 250 MB
    ),
    "gzip-bomb": (
        gzip_bomb,
        {"Content-Encoding": "gzip"},
        40,  # expanded: 200 MB
    ),
    "50-mb": (lambda: b"<rss>" + b"a" * (50 * MB), {}, 40),
}


_BASELINE_MB: dict[str, float] = {}


@pytest.mark.parametrize("name", list(BIG_BODIES))
def test_hostile_bodies_do_not_spike_memory(
    http_server: FixtureServer, tmp_path: Path, name: str
) -> None:
    made, headers, allowed_mb = BIG_BODIES[name]
    body = made() if callable(made) else made
    http_server.add_raw(
        "/big.xml", body, headers={"Content-Type": "application/rss+xml", **headers}
    )
    http_server.add("/normal.xml", rss_doc(rss_item("n", "Normal", "Fine.")))

    if "normal" not in _BASELINE_MB:  # one normal fetch per session is enough to compare with
        _BASELINE_MB["normal"], _ = fetch_peak_rss_mb(
            tmp_path, http_server.url("/normal.xml"), "normal"
        )
    baseline = _BASELINE_MB["normal"]
    peak, stderr = fetch_peak_rss_mb(tmp_path, http_server.url("/big.xml"), name)

    assert peak - baseline < allowed_mb, f"{name}: {peak:.0f} MB vs {baseline:.0f} MB\n{stderr}"
    assert "Traceback" not in stderr


def test_trickling_server_hits_the_total_deadline(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    http_server.add("/slow.xml", rss_doc(rss_item("s", "Slow", "x" * 200)), trickle=1.0)
    config = pipeline.config(one_source(http_server, "/slow.xml", timeout="2s"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.ERROR
    # The 2 s deadline for the whole response, not a per-read timeout reset by each byte.
    assert 1.8 <= stats.elapsed < 4, stats.elapsed
    assert "no complete response within the 2 s deadline" in (stats.error or "")
    state = pipeline.store.source_state("hostile")
    assert state is not None and state.last_error and "/slow.xml" in state.last_error


def test_redirect_loop_is_an_error_on_the_source(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    http_server.redirect("/a.xml", "/b.xml", status=302)
    http_server.redirect("/b.xml", "/a.xml", status=302)
    config = pipeline.config(one_source(http_server, "/a.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.ERROR
    assert "redirect loop" in (stats.error or "")
    assert "/a.xml" in (stats.error or "") and "/b.xml" in (stats.error or "")
    assert http_server.count("/a.xml") + http_server.count("/b.xml") <= 6


@pytest.fixture
def fixture_server_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture server (127.0.0.1) counts as a public host, as a real feed's would."""
    real = fetch_module.host_is_public

    async def looks_public(host: str) -> bool | None:
        return True if host == "127.0.0.1" else await real(host)

    monkeypatch.setattr(fetch_module, "host_is_public", looks_public)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.1.2.3/admin",
        "http://[::1]:{port}/internal",
        "http://localhost:{port}/internal",  # a name that resolves to loopback
    ],
)
def test_public_feed_cannot_redirect_to_an_internal_address(
    http_server: FixtureServer, pipeline: Pipeline, fixture_server_is_public: None, target: str
) -> None:
    port = http_server.url("/").rsplit(":", 1)[1].strip("/")
    http_server.redirect("/feed.xml", target.format(port=port), status=302)
    http_server.add("/internal", rss_doc(rss_item("i", "Internal", "Secret.")))
    config = pipeline.config(one_source(http_server, "/feed.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.ERROR
    assert "redirect from a public address to a private one refused" in (stats.error or "")
    assert http_server.count("/internal") == 0
    assert pipeline.store.count_items() == 0


def test_public_listing_cannot_page_to_an_internal_address(
    http_server: FixtureServer, pipeline: Pipeline, fixture_server_is_public: None
) -> None:
    port = http_server.url("/").rsplit(":", 1)[1].strip("/")
    page = (
        "<html><body><ul class='list'><li><p class='tit'><a href='/v/1'>Page one</a></p></li>"
        f"</ul><a class='next' href='http://localhost:{port}/internal'>next</a></body></html>"
    )
    http_server.add("/list", page, content_type="text/html")
    http_server.add("/internal", page.replace("Page one", "Internal"), content_type="text/html")
    config = pipeline.config(
        one_source(
            http_server,
            "/list",
            type="html",
            max_pages="3",
            select='{item: "ul.list > li", title: "p.tit a", next_page: "a.next@href"}',
        )
    )

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK and stats.new == 1
    assert http_server.count("/internal") == 0


def test_internal_source_may_redirect_internally(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    port = http_server.url("/").rsplit(":", 1)[1].strip("/")
    http_server.redirect("/feed.xml", f"http://localhost:{port}/internal", status=302)
    http_server.add("/internal", rss_doc(rss_item("i", "Internal", "Fine.")))
    config = pipeline.config(one_source(http_server, "/feed.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK, stats.error  # the operator chose an internal feed


# ----------------------------------------------------------------------- encodings


def test_invalid_utf8_bytes_do_not_stop_the_feed(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    doc = rss_doc(rss_item("u", "Broken \xff bytes", "Text with \xfe\xfd junk."))
    http_server.add("/bad-utf8.xml", doc.encode("latin-1"))
    config = pipeline.config(one_source(http_server, "/bad-utf8.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK and stats.new == 1
    [item] = pipeline.store.recent_items(1)
    assert item.title.startswith("Broken") and "bytes" in item.title
    assert "junk" in item.text
    pipeline.everything(config).encode("utf-8")  # every output is valid UTF-8 (no surrogates)


KOREAN_TITLE = "부산국제영화제 개막작 발표"
KOREAN_BODY = "올해 영화제는 열흘 동안 열린다."


def listing(encoding: str, declared: str | None) -> bytes:
    meta = f'<meta charset="{declared}">' if declared else ""
    page = (
        f"<html><head>{meta}<title>목록</title></head><body><ul class='list'>"
        f"<li><p class='tit'><a href='/v?seq=1'>{KOREAN_TITLE}</a></p>"
        f"<p class='txt'>{KOREAN_BODY}</p></li></ul></body></html>"
    )
    return page.encode(encoding)


@pytest.mark.parametrize(
    ("encoding", "header_charset"),
    [("euc-kr", "utf-8"), ("utf-8", "euc-kr"), ("cp949", None)],
    ids=["euc-kr-labelled-utf8", "utf8-labelled-euc-kr", "cp949-unlabelled"],
)
def test_mislabelled_korean_pages_decode_without_mojibake(
    http_server: FixtureServer, pipeline: Pipeline, encoding: str, header_charset: str | None
) -> None:
    content_type = f"text/html; charset={header_charset}" if header_charset else "text/html"
    http_server.add("/list", listing(encoding, None), content_type=content_type)
    config = pipeline.config(
        one_source(
            http_server,
            "/list",
            type="html",
            select='{item: "ul.list > li", title: "p.tit a", summary: "p.txt"}',
        )
    )

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK, stats.error
    [item] = pipeline.store.recent_items(1)
    assert item.title == KOREAN_TITLE
    assert item.text == KOREAN_BODY
    assert "\ufffd" not in item.title + item.text


@pytest.mark.parametrize(
    ("encoding", "declared", "header_charset"),
    [("euc-kr", "UTF-8", "utf-8"), ("utf-8", "EUC-KR", "euc-kr"), ("cp949", None, None)],
    ids=["euc-kr-labelled-utf8", "utf8-labelled-euc-kr", "cp949-unlabelled"],
)
def test_mislabelled_korean_feeds_decode_without_mojibake(
    http_server: FixtureServer,
    pipeline: Pipeline,
    encoding: str,
    declared: str | None,
    header_charset: str | None,
) -> None:
    doc = rss_doc(rss_item("ko", KOREAN_TITLE, KOREAN_BODY), encoding=declared or "")
    if declared is None:
        doc = doc.replace(' encoding=""', "")
    content_type = "application/rss+xml" + (f"; charset={header_charset}" if header_charset else "")
    http_server.add("/ko.xml", doc.encode(encoding), content_type=content_type)
    config = pipeline.config(one_source(http_server, "/ko.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.outcome is IngestOutcome.OK, stats.error
    [item] = pipeline.store.recent_items(1)
    assert (item.title, item.text) == (KOREAN_TITLE, KOREAN_BODY)
    everything = pipeline.everything(config)
    assert everything.count(KOREAN_TITLE) >= 4  # store, Atom, JSON Feed, digest


# ----------------------------------------------------------------------- fields


@pytest.mark.parametrize(
    ("title", "last_word"),
    [
        (" ".join(["longword"] * 1_200), "longword"),  # ~10,800 characters
        ("가" * 10_000, "가"),  # unspaced Hangul: a hard cut, between syllables
        ("\u1100\u1176" * 5_000, "\u1100\u1176"),  # old Hangul jamo: never half a syllable
    ],
    ids=["words", "hangul", "jamo"],
)
def test_ten_thousand_character_title_is_bounded(
    http_server: FixtureServer, pipeline: Pipeline, title: str, last_word: str
) -> None:
    http_server.add("/long.xml", rss_doc(rss_item("long", title, "Body.")))
    config = pipeline.config(one_source(http_server, "/long.xml"))

    pipeline.ingest(config)

    [item] = pipeline.store.recent_items(1)
    assert len(item.title) <= 1_000 and item.title.endswith("…")
    assert item.title.removesuffix("…").endswith(last_word)
    assert len(pipeline.everything(config)) < 200_000


def test_absurd_and_zoneless_dates_become_sane(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    items = (
        rss_item("old", "From 1900", "x.", date="Mon, 01 Jan 1900 00:00:00 GMT")
        + rss_item("future", "From 9999", "x.", date="Fri, 31 Dec 9999 23:59:59 GMT")
        + rss_item("naive", "No zone", "x.", date="2026-11-20 09:30:00")
    )
    http_server.add("/dates.xml", rss_doc(items))
    config = pipeline.config(one_source(http_server, "/dates.xml"))

    stats = pipeline.ingest(config)["hostile"]

    assert stats.new == 3
    floor = datetime(1970, 1, 1, tzinfo=UTC)
    for item in pipeline.store.recent_items(10):
        assert item.published_at.tzinfo is not None
        assert floor <= item.published_at <= utcnow() + timedelta(minutes=1), item.title
    pipeline.everything(config)  # publishes and renders without error


def test_absurd_and_zoneless_dates_on_a_listing_page(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    rows = [("old", "1900.01.01"), ("future", "9999.12.31"), ("naive", "2026.11.20 09:30")]
    page = "<html><body><ul class='list'>" + "".join(
        f"<li><p class='tit'><a href='/v/{name}'>{name}</a></p><span class='date'>{day}</span></li>"
        for name, day in rows
    )
    http_server.add("/list", page + "</ul></body></html>", content_type="text/html")
    config = pipeline.config(
        one_source(
            http_server,
            "/list",
            type="html",
            select='{item: "ul.list > li", title: "p.tit a", date: "span.date"}',
        )
    )

    pipeline.ingest(config)

    items = {item.title: item for item in pipeline.store.recent_items(10)}
    assert set(items) == {"old", "future", "naive"}
    # Impossible dates fall back to when the item was first seen, flagged as such.
    for name in ("old", "future"):
        assert abs(items[name].published_at - utcnow()) < timedelta(minutes=5), name
    with pipeline.store.engine.connect() as conn:
        flagged = dict(conn.exec_driver_sql("SELECT title, date_missing FROM items").all())
    assert flagged == {"old": True, "future": True, "naive": False}
    # A time without a zone is the source's local time (Asia/Seoul unless configured).
    assert items["naive"].published_at == datetime(2026, 11, 20, 0, 30, tzinfo=UTC)


ATTACKS = [
    "<script>alert('s1')</script>",
    "<iframe src='https://evil.example/i1'></iframe>",
    "<img src='x' onerror=\"alert('e1')\">",
    "<a href='javascript:alert(1)'>j1</a>",
    "<a href='JaVaScRiPt&#58;alert(1)'>j2</a>",
    "<img src='data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=='>",
    "<div style='width: expression(alert(1))'>css1</div>",
    "<svg><script>alert('svg1')</script><circle onload='alert(2)'/></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(3)>",
    "<object data='https://evil.example/o.swf'></object><embed src='e.swf'>",
    "<form action='https://evil.example/'><input name=p></form>",
    "<meta http-equiv='refresh' content='0;url=https://evil.example/'>",
]
# What must not survive anywhere; the email's own markup (MJML boilerplate) has
# none of these, so any hit comes from the feed.
FORBIDDEN = [
    "<script",
    "<iframe",
    "onerror",
    "onload",
    "alert(",
    "javascript:",
    "data:text/html",
    "expression(",
    "<svg",
    "<object",
    "<embed",
    "<form",
    "url=https://evil.example",
    "evil.example/i1",
    "evil.example/o.swf",
]


def test_executable_content_never_reaches_any_output(
    http_server: FixtureServer, pipeline: Pipeline, smtp_server: SmtpFixture
) -> None:
    body = "<p>Safe text stays.</p>" + "".join(ATTACKS)
    item = rss_item("xss", "Title <b>bold</b>", f"<![CDATA[{body}]]>")
    http_server.add("/xss.xml", rss_doc(item))
    config = pipeline.config(one_source(http_server, "/xss.xml"))

    pipeline.ingest(config)

    everything = pipeline.everything(config, smtp_server)
    [mail] = smtp_server.to("reader@example.org")
    mail_parts = [p for p in mail.message.walk() if p.get_content_maintype() == "text"]
    assert len(mail_parts) == 2
    assert all("Safe text stays." in part.get_content() for part in mail_parts)
    lowered = everything.lower()
    for needle in FORBIDDEN:
        assert needle not in lowered, needle


def test_markup_in_a_title_stays_text_in_every_output(
    http_server: FixtureServer, pipeline: Pipeline
) -> None:
    """A title is plain text: "<script>" in it is shown, escaped, never parsed as markup."""
    title = "Review &lt;script&gt;alert('t1')&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;"
    http_server.add("/title.xml", rss_doc(rss_item("t", title, "Body.")))
    config = pipeline.config(one_source(http_server, "/title.xml"))

    pipeline.ingest(config)

    [item] = pipeline.store.recent_items(1)
    assert item.title == "Review <script>alert('t1')</script> <img src=x onerror=alert(2)>"
    result = publish_from_store(pipeline.store, config.site, config.output_dir)
    atom = result.atom_path.read_text(encoding="utf-8")
    period = Period(start=NOW - timedelta(days=7), end=utcnow() + timedelta(seconds=1))
    digest = compose(config, pipeline.store, period=period)
    assert digest is not None
    for markup in (atom, digest.html):  # the outputs that are parsed as markup
        assert "<script" not in markup.lower() and "<img src=x" not in markup.lower()
        assert "&lt;script&gt;" in markup
    assert (
        "<script>" in json.loads(result.json_path.read_text(encoding="utf-8"))["items"][0]["title"]
    )  # JSON Feed titles are plain text by definition


def test_feed_that_changes_every_guid_is_flagged_and_does_not_flood(
    http_server: FixtureServer, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def churned(fetch: int) -> str:
        return rss_doc(
            "".join(
                rss_item(
                    f"random-{fetch}-{n}",
                    f"Story {n}",
                    f"Text {n}.",
                    link=f"https://evil.example/story/{n}",
                )
                for n in range(5)
            )
        )

    config = pipeline.config(one_source(http_server, "/churn.xml"))
    for fetch in range(4):
        http_server.add("/churn.xml", churned(fetch))
        stats = pipeline.ingest(config)["hostile"]

    assert stats.new == 0
    assert pipeline.store.count_items() == 5  # flat: one row per link, not per fetch
    churn_logs = [r.getMessage() for r in caplog.records if "new guid for a link" in r.getMessage()]
    assert churn_logs[-1].startswith("hostile: 5 entries")  # SaveCounts.churned, every fetch
    assert len(churn_logs) == 3
    state = pipeline.store.source_state("hostile")
    assert state is not None and state.warning and "changes its guids" in state.warning
    period = Period(start=NOW - timedelta(days=7), end=utcnow() + timedelta(seconds=1))
    digest = compose(config, pipeline.store, period=period)
    assert digest is not None
    assert digest.text.count("Story 3") == 1
    assert digest.html.count(">Story 3<") == 1
    result = publish_from_store(pipeline.store, config.site, config.output_dir)
    assert result.atom_path.read_text(encoding="utf-8").count("<title>Story 3</title>") == 1
