"""Subscribe, confirm and unsubscribe over real HTTP (uvicorn on 127.0.0.1) with real mail."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import itsdangerous.timed
import pytest
import uvicorn

from aggregator.config import Config
from aggregator.deliver import deliver_digest
from aggregator.models import DigestSettings, Site, SubscriberStatus
from aggregator.store import Store
from aggregator.tokens import Tokens
from aggregator.web import subscribe
from aggregator.web.app import WebContext, create_app
from aggregator.web.server import EmbeddedServer
from tests.support.http import unused_port
from tests.test_deliver import make_digest

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture


SECRET = "web-test-secret-0123456789abcdef"


@dataclass
class Web:
    url: str
    ctx: WebContext
    client: httpx.Client
    server: EmbeddedServer | None = None

    def settle(self, timeout: float = 10) -> None:
        """Wait until no request is in flight, its background mail included.

        uvicorn keeps one task per request until the app returns, and Starlette
        runs a response's background task (the confirmation mail) inside that
        call: once the set is empty, every mail the requests so far could send
        has reached the SMTP server or failed. "No mail was sent" is then a
        fact, not a guess after a pause.
        """
        assert self.server is not None, "settle() needs the server from serve_web()"
        deadline = time.monotonic() + timeout
        while self.server.server_state.tasks:
            assert time.monotonic() < deadline, f"requests still running after {timeout} s"
            time.sleep(0.01)

    def confirm_url(self, smtp: SmtpFixture, email: str) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for received in smtp.to(email):
                body = received.message.get_body(("plain",))
                assert body is not None
                found = re.search(r"(http://\S+/confirm/\S+)", body.get_content())
                if found:
                    return found.group(1)
            time.sleep(0.02)
        pytest.fail(f"no confirmation mail reached {email}")


def web_config(store: Store, smtp: SmtpFixture, base: str, output_dir: Path, **kw: Any) -> Config:
    """The config the web tests serve: this base URL, the test SMTP server, ``kw`` on top."""
    site = Site(
        title="Korean Film Digest",
        url=base,
        sender_email="digest@example.org",
        output_dir=str(output_dir),
    )
    return Config(
        path=None,
        site=site,
        sources=(),
        sections=(),
        digest=DigestSettings(),
        smtp=smtp.settings(),
        database_url=str(store.engine.url),
        **kw,
    )


@contextmanager
def serve_web(store: Store, smtp: SmtpFixture, output_dir: Path, **kw: Any) -> Iterator[Web]:
    """The whole app (:func:`create_app`) under uvicorn on 127.0.0.1, and a client for it."""
    port = unused_port()
    base = f"http://127.0.0.1:{port}/"
    ctx = WebContext(
        config=web_config(store, smtp, base, output_dir, **kw), store=store, secret=SECRET
    )
    app = create_app(ctx)
    server = EmbeddedServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield Web(base, ctx, client, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def web(store: Store, smtp_server: SmtpFixture, tmp_path: Path) -> Iterator[Web]:
    with serve_web(store, smtp_server, tmp_path / "public") as running:
        yield running


def form_token(client: httpx.Client) -> str:
    """Load the subscribe form as a browser would (the client keeps its cookie); its token."""
    page = client.get("/subscribe")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "the subscribe form has no CSRF token"
    return found.group(1)


def _subscribe(web: Web, email: str, name: str = "", **headers: str) -> httpx.Response:
    data = {"email": email, "name": name, "csrf": form_token(web.client)}
    return web.client.post("/subscribe", data=data, headers=headers)


def confirm(client: httpx.Client, url: str) -> httpx.Response:
    """Press the button on the confirmation page (GET alone confirms nothing)."""
    page = client.get(url)
    assert page.status_code == 200, page.text
    assert f'action="{url}"' in page.text
    return client.post(url, data={"confirm": "yes"})


def test_double_opt_in_over_http(web: Web, store: Store, smtp_server: SmtpFixture) -> None:
    form = web.client.get("/subscribe")
    assert form.status_code == 200
    assert 'name="email"' in form.text

    answer = _subscribe(web, "Park.Chan-wook@Example.ORG", "박찬욱")
    assert answer.status_code == 200
    subscriber = store.subscriber_by_email("Park.Chan-wook@example.org")
    assert subscriber is not None and subscriber.status is SubscriberStatus.PENDING
    assert subscriber.name == "박찬욱"

    url = web.confirm_url(smtp_server, "Park.Chan-wook@example.org")
    mail = smtp_server.to("Park.Chan-wook@example.org")[0].message
    assert mail["Subject"] == "Confirm your subscription to Korean Film Digest"
    html = mail.get_body(("html",))
    assert html is not None and url in html.get_content()
    assert url.startswith(web.url + "confirm/")

    # Opening the link (as a mail scanner would) shows a button and confirms nothing.
    for _ in range(2):
        assert web.client.head(url).status_code == 200
        opened = web.client.get(url)
        assert opened.status_code == 200 and f'action="{url}"' in opened.text
    still = store.get_subscriber(subscriber.id)
    assert still is not None and still.status is SubscriberStatus.PENDING

    confirmed = confirm(web.client, url)
    assert confirmed.status_code == 200
    assert "You are subscribed" in confirmed.text
    assert confirmed.headers["referrer-policy"] == "no-referrer"
    after = store.get_subscriber(subscriber.id)
    assert after is not None and after.status is SubscriberStatus.ACTIVE


def test_subscribe_answer_does_not_reveal_an_existing_subscription(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("active@example.org", now=now, active=True)
    store.add_subscriber("pending@example.org", now=now)
    gone, _ = store.add_subscriber("gone@example.org", now=now, active=True)
    store.unsubscribe_subscriber(gone.id, gone.email, now=now)

    bodies = set()
    for email in ("new@example.org", "active@example.org", "pending@example.org", gone.email):
        response = _subscribe(web, email)
        assert response.status_code == 200
        bodies.add(response.text.replace(email, "EMAIL"))
    assert len(bodies) == 1

    # A last, new address on the same keep-alive connection: uvicorn handles
    # its requests one after the other, background mail included, so once its
    # confirmation is in, any mail for the active address would be too.
    assert _subscribe(web, "last@example.org").status_code == 200
    smtp_server.wait_for(4)
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == [
        "gone@example.org",
        "last@example.org",
        "new@example.org",
        "pending@example.org",
    ]
    # Asking again does not resubscribe someone who left: only confirming does.
    still_gone = store.get_subscriber(gone.id)
    assert still_gone is not None and still_gone.status is SubscriberStatus.UNSUBSCRIBED


def test_subscribe_is_rate_limited_per_client(web: Web) -> None:
    for i in range(subscribe.SUBSCRIBE_LIMIT):
        assert _subscribe(web, f"r{i}@example.org").status_code == 200
    refused = _subscribe(web, "one-too-many@example.org")
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= subscribe.SUBSCRIBE_WINDOW
    assert web.client.get("/subscribe").status_code == 200  # the form itself stays available


def test_invalid_address_is_refused_with_the_form(web: Web, store: Store) -> None:
    response = _subscribe(web, "not an <script>address")
    assert response.status_code == 400
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text
    assert store.list_subscribers() == []


def test_forged_and_misdirected_tokens_are_rejected(web: Web, store: Store) -> None:
    now = datetime.now(UTC)
    alice, _ = store.add_subscriber("alice@example.org", now=now, active=True)
    bob, _ = store.add_subscriber("bob@example.org", now=now, active=True)
    tokens = Tokens(SECRET)
    good = tokens.unsubscribe_token(alice.id, alice.email)
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    attempts = [
        f"/unsubscribe/{tampered}",
        f"/unsubscribe/{Tokens('another-secret-0123456789').unsubscribe_token(bob.id, bob.email)}",
        f"/unsubscribe/{tokens.unsubscribe_token(bob.id, alice.email)}",  # Alice's mail, Bob's id
        f"/unsubscribe/{tokens.confirm_token(bob.id, bob.email)}",  # a confirm token
        f"/confirm/{tokens.unsubscribe_token(bob.id, bob.email)}",  # an unsubscribe token
        "/unsubscribe/not-a-token",
    ]
    for path in attempts:
        if path.startswith("/unsubscribe/"):
            one_click = {"List-Unsubscribe": "One-Click"}
            assert web.client.post(path, data=one_click).status_code == 400, path
        else:
            assert web.client.post(path, data={"confirm": "yes"}).status_code == 400, path
        assert web.client.get(path).status_code == 400, path
    assert {s.status for s in store.list_subscribers()} == {SubscriberStatus.ACTIVE}


def test_expired_confirm_link_is_refused(
    web: Web, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending, _ = store.add_subscriber("late@example.org", now=datetime.now(UTC))

    class EightDaysAgo:
        @staticmethod
        def time() -> float:
            return time.time() - timedelta(days=8).total_seconds()

    with monkeypatch.context() as patch:
        patch.setattr(itsdangerous.timed, "time", EightDaysAgo)
        token = Tokens(SECRET).confirm_token(pending.id, pending.email)

    response = web.client.get(f"/confirm/{token}")
    assert response.status_code == 400
    assert "expired" in response.text
    row = store.get_subscriber(pending.id)
    assert row is not None and row.status is SubscriberStatus.PENDING


def test_old_confirm_link_does_not_undo_an_unsubscribe(web: Web, store: Store) -> None:
    subscriber, _ = store.add_subscriber("fickle@example.org", now=datetime.now(UTC))
    token = Tokens(SECRET).confirm_token(subscriber.id, subscriber.email)
    url = f"{web.url}confirm/{token}"
    assert confirm(web.client, url).status_code == 200
    time.sleep(1.1)  # confirm tokens carry whole seconds
    store.unsubscribe_subscriber(subscriber.id, subscriber.email, now=datetime.now(UTC))

    assert web.client.get(url).status_code == 400
    assert web.client.post(url, data={"confirm": "yes"}).status_code == 400
    row = store.get_subscriber(subscriber.id)
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED


def test_list_unsubscribe_from_a_delivered_digest_works_over_http(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("reader@example.org", now=now, active=True)
    store.add_subscriber("clicker@example.org", now=now, active=True)
    digest = make_digest(store)
    config = web.ctx.config
    asyncio.run(deliver_digest(store, digest, site=config.site, smtp=config.smtp, secret=SECRET))
    headers = {m.recipients[0]: m.message["List-Unsubscribe"] for m in smtp_server.messages}
    one_click = re.match(r"<(http[^>]+)>", str(headers["reader@example.org"]))
    by_page = re.match(r"<(http[^>]+)>", str(headers["clicker@example.org"]))
    assert one_click and by_page

    # RFC 8058: the mail client POSTs the fixed body, no page, no cookies.
    response = httpx.post(
        one_click.group(1),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    # A person: GET (and HEAD) show a page with a button and change nothing, then POST.
    assert httpx.head(by_page.group(1)).status_code == 200
    page = httpx.get(by_page.group(1))
    assert page.status_code == 200
    assert f'action="{by_page.group(1)}"' in page.text
    assert 'name="unsubscribe" value="yes"' in page.text
    assert store.subscriber_by_email("clicker@example.org").status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    # A POST that is neither the button nor RFC 8058's body (a prefetcher) does nothing.
    assert httpx.post(by_page.group(1)).status_code == 400
    assert store.subscriber_by_email("clicker@example.org").status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    assert httpx.post(by_page.group(1), data={"unsubscribe": "yes"}).status_code == 200

    for email in ("reader@example.org", "clicker@example.org"):
        row = store.subscriber_by_email(email)
        assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    # Unsubscribing twice is harmless, and nobody who left gets the next issue.
    assert httpx.post(one_click.group(1), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    later = make_digest(store, subject="Next week")
    later_report = asyncio.run(
        deliver_digest(store, later, site=config.site, smtp=config.smtp, secret=SECRET)
    )
    assert later_report.sent == 0


def test_suppressed_address_gets_no_confirmation_mail(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    """A hard-bounced or complaining address is never mailed, not even a confirmation."""
    store.suppress("dead@example.org", "hard bounce: 550 5.1.1", now=datetime.now(UTC))
    answers = {
        email: _subscribe(web, email).text.replace(email, "EMAIL")
        for email in ("dead@example.org", "fresh@example.org")
    }
    assert len(set(answers.values())) == 1  # the page tells nothing
    smtp_server.wait_for(1)
    time.sleep(0.3)
    assert [r for m in smtp_server.messages for r in m.recipients] == ["fresh@example.org"]
