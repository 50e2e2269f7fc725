"""The feeds and the home page served by the real app under uvicorn on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from aggregator.config import Config
from aggregator.models import DigestSettings, Site, SmtpSettings
from aggregator.publish import publish_from_store
from aggregator.store import Store
from aggregator.web.app import WebContext, create_app
from tests.test_publish import SECTIONS, SOURCES, fill, make_item, save

ATOM_TYPE = "application/atom+xml; charset=utf-8"
JSON_TYPE = "application/feed+json"


class LiveServer:
    """uvicorn serving ``app`` from a background thread on a socket we bound ourselves."""

    def __init__(self, app: ASGIApp) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@dataclass
class Served:
    server: LiveServer
    client: httpx.Client
    ctx: WebContext

    @property
    def out_dir(self) -> Path:
        return self.ctx.config.output_dir


def make_config(out_dir: Path, database_url: str) -> Config:
    site = Site(url="http://127.0.0.1:8080/", output_dir=str(out_dir))
    return Config(
        path=None,
        site=site,
        sources=SOURCES,
        sections=SECTIONS,
        digest=DigestSettings(),
        smtp=SmtpSettings(),
        database_url=database_url,
    )


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[Served]:
    """The app over a SQLite store with 8 items; the feeds are not published yet."""
    store = Store.open(sqlite_url)
    fill(store)
    ctx = WebContext(config=make_config(tmp_path / "public", sqlite_url), store=store, secret="s")
    try:
        with LiveServer(create_app(ctx)) as server, httpx.Client(base_url=server.base_url) as c:
            yield Served(server, c, ctx)
    finally:
        store.close()


def publish_now(ctx: WebContext) -> None:
    sections = {s.id: s.title for s in ctx.config.sections}
    publish_from_store(ctx.store, ctx.config.site, ctx.config.output_dir, sections=sections)


# ------------------------------------------------------------------ 200 and headers


def test_atom_is_served_with_validators_and_cache_headers(served: Served) -> None:
    publish_now(served.ctx)
    path = served.out_dir / "feed.atom"
    response = served.client.get("/feed.atom", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == ATOM_TYPE
    assert response.content == path.read_bytes()
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10  # strong
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert int(modified.timestamp()) == int(path.stat().st_mtime)
    assert response.headers["cache-control"] == "public, max-age=300"
    assert "accept-encoding" in response.headers["vary"].lower()
    assert "content-encoding" not in response.headers


def test_json_feed_has_its_media_type(served: Served) -> None:
    publish_now(served.ctx)
    response = served.client.get("/feed.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json()["version"] == "https://jsonfeed.org/version/1.1"


def test_missing_feed_is_built_from_the_store_on_first_request(served: Served) -> None:
    assert not (served.out_dir / "feed.atom").exists()
    response = served.client.get("/feed.atom")
    assert response.status_code == 200
    assert response.content == (served.out_dir / "feed.atom").read_bytes()
    assert response.content.count(b"<entry") == 8


def test_head_sends_the_headers_of_get_without_a_body(served: Served) -> None:
    publish_now(served.ctx)
    headers = {"Accept-Encoding": "identity"}
    get = served.client.get("/feed.atom", headers=headers)
    head = served.client.head("/feed.atom", headers=headers)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("etag", "last-modified", "content-type", "content-length", "cache-control"):
        assert head.headers[name] == get.headers[name], name


def test_feed_xml_redirects_permanently_to_atom(served: Served) -> None:
    response = served.client.get("/feed.xml")
    assert response.status_code == 301
    assert response.headers["location"] == "/feed.atom"
    followed = served.client.get("/feed.xml", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.headers["content-type"] == ATOM_TYPE


# ------------------------------------------------------------------ conditional GET


def test_if_none_match_gets_304_without_a_body(served: Served) -> None:
    first = served.client.get("/feed.atom", headers={"Accept-Encoding": "identity"})
    etag = first.headers["etag"]
    again = served.client.get(
        "/feed.atom", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["last-modified"] == first.headers["last-modified"]
    assert again.headers["cache-control"] == "public, max-age=300"

    listed = served.client.get("/feed.atom", headers={"If-None-Match": f'"other", {etag}'})
    assert listed.status_code == 304
    other = served.client.get("/feed.atom", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


def test_if_modified_since_gets_304_until_the_feed_changes(served: Served) -> None:
    first = served.client.get("/feed.atom")
    last_modified = first.headers["last-modified"]
    assert (
        served.client.get("/feed.atom", headers={"If-Modified-Since": last_modified}).status_code
        == 304
    )
    earlier = formatdate(parsedate_to_datetime(last_modified).timestamp() - 60, usegmt=True)
    older = served.client.get("/feed.atom", headers={"If-Modified-Since": earlier})
    assert older.status_code == 200
    garbage = served.client.get("/feed.atom", headers={"If-Modified-Since": "yesterday"})
    assert garbage.status_code == 200


def test_if_none_match_wins_over_if_modified_since(served: Served) -> None:
    first = served.client.get("/feed.atom")
    response = served.client.get(
        "/feed.atom",
        headers={"If-None-Match": '"stale"', "If-Modified-Since": first.headers["last-modified"]},
    )
    assert response.status_code == 200


def test_a_changed_feed_gets_a_new_etag_and_200(served: Served) -> None:
    first = served.client.get("/feed.atom")
    old_etag = first.headers["etag"]
    unchanged = served.out_dir / "feed.atom"
    mtime = unchanged.stat().st_mtime_ns
    publish_now(served.ctx)  # same items: nothing rewritten, same validators
    assert unchanged.stat().st_mtime_ns == mtime
    assert served.client.get("/feed.atom").headers["etag"] == old_etag

    save(served.ctx.store, "kofic", [make_item("kofic", 50, title="New: Cannes selection")])
    publish_now(served.ctx)
    response = served.client.get("/feed.atom", headers={"If-None-Match": old_etag})
    assert response.status_code == 200
    assert response.headers["etag"] != old_etag
    assert parsedate_to_datetime(response.headers["last-modified"]) > parsedate_to_datetime(
        first.headers["last-modified"]
    )
    assert b"New: Cannes selection" in response.content


# ------------------------------------------------------------------ gzip


def test_gzip_body_has_a_weak_etag_that_still_validates(served: Served) -> None:
    publish_now(served.ctx)
    plain = (served.out_dir / "feed.atom").read_bytes()
    identity = served.client.get("/feed.atom", headers={"Accept-Encoding": "identity"})
    strong = identity.headers["etag"]

    with served.client.stream("GET", "/feed.atom", headers={"Accept-Encoding": "gzip"}) as raw:
        assert raw.status_code == 200
        assert raw.headers["content-encoding"] == "gzip"
        compressed = b"".join(raw.iter_raw())
        gz_headers = raw.headers
    assert gzip.decompress(compressed) == plain
    assert len(compressed) < len(plain)
    assert int(gz_headers["content-length"]) == len(compressed)
    assert gz_headers["etag"] == "W/" + strong
    assert gz_headers["content-type"] == ATOM_TYPE
    assert gz_headers["vary"].lower() == "accept-encoding"

    # A gzip client revalidating with the weak tag, and one sending the strong tag.
    for tag in (gz_headers["etag"], strong):
        again = served.client.get(
            "/feed.atom", headers={"Accept-Encoding": "gzip", "If-None-Match": tag}
        )
        assert again.status_code == 304, tag
        assert again.headers["etag"] == "W/" + strong
    # An identity client holding the weak tag from a gzip response.
    again = served.client.get(
        "/feed.atom",
        headers={"Accept-Encoding": "identity", "If-None-Match": gz_headers["etag"]},
    )
    assert again.status_code == 304
    assert again.headers["etag"] == strong


def test_json_feed_is_gzipped_too(served: Served) -> None:
    publish_now(served.ctx)
    response = served.client.get("/feed.json", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json()["items"]


# ------------------------------------------------------------------ home page


def test_home_page_lists_items_and_announces_the_feeds(served: Served) -> None:
    save(
        served.ctx.store,
        "kofic",
        [make_item("kofic", 60, title="<script>alert(1)</script> & friends")],
    )
    response = served.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'type="application/atom+xml"' in page
    assert 'href="http://127.0.0.1:8080/feed.atom"' in page
    assert 'type="application/feed+json"' in page
    assert "kobiz story 103" in page
    assert "https://kobiz.example/articles/103" in page
    assert "KoBiz Ko-pick" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in page


def test_serving_reads_the_published_file_not_the_store(served: Served) -> None:
    publish_now(served.ctx)
    path = served.out_dir / "feed.atom"
    # Whatever the publisher wrote last is what readers get.
    replaced = path.read_bytes().replace(b"Korean Film Digest", b"Korean Film Digest (test)")
    temp = path.with_suffix(".tmp")
    temp.write_bytes(replaced)
    os.replace(temp, path)
    assert served.client.get("/feed.atom").content == replaced
