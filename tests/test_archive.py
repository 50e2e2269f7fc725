"""The web archive of frozen issues, served by a real uvicorn server over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from aggregator.config import Config, parse_config
from aggregator.digest import compose, view_url
from aggregator.models import Digest, Source
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from aggregator.web.app import WebContext, create_app
from tests.test_digest import CONFIG_YAML, SLOT, WEEK, arrive, make_item, week_of_news


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn running an ASGI app on 127.0.0.1 in a background thread."""

    def __init__(self, app: Starlette, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Live:
    server: LiveServer
    config: Config
    store: Store

    @property
    def base_url(self) -> str:
        return self.server.base_url


@pytest.fixture
def live(sqlite_url: str) -> Iterator[Live]:
    # The site's public URL is this server, so the email's links point at it.
    port = _free_port()
    config = parse_config(CONFIG_YAML)
    config = replace(config, site=replace(config.site, url=f"http://127.0.0.1:{port}/"))
    store = Store.open(sqlite_url)
    store.sync_sources([Source(id=s.id, url=s.url, title=s.title) for s in config.sources])
    ctx = WebContext(config=config, store=store, secret="x" * 32)
    try:
        # The whole app, as served: its middleware sets the security headers.
        with LiveServer(create_app(ctx), port) as server:
            yield Live(server, config, store)
    finally:
        store.close()


def two_issues(config: Config, store: Store) -> tuple[Digest, Digest]:
    week_of_news(store)
    first = compose(config, store, now=SLOT)
    arrive(
        store,
        "kobiz",
        [
            make_item(
                "kobiz", 99, "Ko-pick: <script>alert(1)</script>", section="ko-pick", published=SLOT
            )
        ],
        SLOT + timedelta(days=1),
    )
    second = compose(config, store, now=SLOT + WEEK)
    assert first is not None and second is not None
    return first, second


def test_index_lists_issues_newest_first_linking_to_view_urls(
    live: Live,
) -> None:
    first, second = two_issues(live.config, live.store)
    config = live.config

    response = httpx.get(f"{live.base_url}/digests/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.index(second.subject) < page.index(first.subject)
    assert f'href="{view_url(config, first.id)}"' in page
    assert f'href="{view_url(config, second.id)}"' in page
    assert "5 stories" in page and "1 story" in page


def test_issue_page_is_the_frozen_html_without_unsubscribe_placeholder(
    live: Live,
) -> None:
    first, second = two_issues(live.config, live.store)
    config, sqlite_store = live.config, live.store
    assert first.id is not None

    # The email's "View in browser" link is this very page.
    response = httpx.get(view_url(config, second.id))

    assert response.status_code == 200
    page = response.text
    assert UNSUBSCRIBE_PLACEHOLDER in second.html
    assert UNSUBSCRIBE_PLACEHOLDER not in page
    assert ">Unsubscribe</a>" not in page
    assert f'href="{config.site.url}subscribe"' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "script-src 'none'" in response.headers["content-security-policy"]
    assert page.count("Read more") == second.item_count == 1

    # Items that arrive later do not change a published issue.
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 100, "Ko-pick: much later", section="ko-pick", published=SLOT)],
        SLOT + WEEK + timedelta(days=1),
    )
    again = httpx.get(view_url(config, first.id))
    assert again.status_code == 200
    assert "much later" not in again.text
    stored = sqlite_store.get_digest(first.id)
    assert stored is not None and stored.html == first.html


def test_unknown_or_malformed_issue_ids_are_404(live: Live) -> None:

    assert httpx.get(f"{live.base_url}/digests/9999").status_code == 404
    assert httpx.get(f"{live.base_url}/digests/abc").status_code == 404


def test_empty_archive_says_so(live: Live) -> None:

    response = httpx.get(f"{live.base_url}/digests/")

    assert response.status_code == 200
    assert "No issue has been published yet." in response.text


@pytest.mark.parametrize("cap", [1, 3])
def test_items_over_a_sections_cap_are_listed_on_the_issue_page(live: Live, cap: int) -> None:
    """The email's "and N more in this section" leads to a page that lists those N."""
    config = replace(live.config, digest=replace(live.config.digest, max_items_per_section=cap))
    titles = [f"Ko-pick: column number {n}" for n in range(cap + 4)]
    arrive(
        live.store,
        "kobiz",
        [
            make_item("kobiz", n, title, section="ko-pick", published=SLOT - timedelta(hours=n))
            for n, title in enumerate(titles)
        ],
        SLOT - timedelta(days=2),
    )
    issue = compose(config, live.store, now=SLOT)
    assert issue is not None and issue.id is not None
    assert "and 4 more in this section" in issue.html
    page = httpx.get(view_url(config, issue.id)).text
    # Every story of the week is on the page exactly once: in the issue or in the list.
    assert all(page.count(f">{title}<") == 1 for title in titles), page
    more = page[page.index('id="more"') :]
    assert sorted(t for t in titles if f">{t}<" in more) == sorted(titles[cap:])
    assert '<a href="#more"' in page  # the count links to the list
