"""The email as the SMTP server receives it: size as sent, caps, languages, headers.

Issues are composed from a real SQLite store and delivered to the real
aiosmtpd server; every assertion looks at the bytes it accepted, the way a
mailbox provider sees them (Gmail clips on the encoded size, not the text).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from selectolax.lexbor import LexborHTMLParser

from aggregator.config import Config, parse_config
from aggregator.deliver import deliver_digest, send_message
from aggregator.digest import Period, compose, view_url
from aggregator.mail_confirm import confirmation_message
from aggregator.models import Digest, Item, Site, Subscriber, SubscriberStatus
from aggregator.normalize import EXCERPT_CHARS
from aggregator.render import public_issue_html, render_digest
from aggregator.store import Store
from tests.support.items import make_item

if TYPE_CHECKING:
    from tests.support.smtp import ReceivedMessage, SmtpFixture

SECRET = "test-secret-0123456789abcdef"
SLOT = datetime(2026, 11, 9, 0, 0, tzinfo=UTC)
PERIOD = Period(start=SLOT - timedelta(days=7), end=SLOT)
GMAIL_SAFE = 90_000  # bytes of the encoded HTML part, with a margin under Gmail's ~102 KB

KOREAN_WORDS = [
    "봉준호",
    "감독",
    "신작",
    "부산국제영화제",
    "개막작",
    "관객",
    "평단",
    "호평",
    "배급사",
    "개봉",
    "극장가",
    "흥행",
]
ENGLISH_WORDS = [
    "director",
    "festival",
    "premiere",
    "audience",
    "critics",
    "distributor",
    "release",
    "box",
    "office",
]


def config_yaml(cap: int, site_title: str = "Korean Film Digest") -> str:
    return f"""
site:
  title: {site_title}
  url: https://digest.example.org/
  sender_email: digest@example.org
  timezone: Asia/Seoul
  postal_address: "130 Suyeonggangbyeon-daero, Busan 48058"
sections:
  - {{id: ko-pick, title: Ko-pick columns, match: {{title: "^Ko-pick"}}}}
  - {{id: previews, title: Film previews, match: {{title: "(?i)preview"}}}}
sources:
  - {{id: kobiz, title: KoBiz, url: https://kobiz.example.org/feed.xml}}
digest:
  max_items_per_section: {cap}
"""


def long_text(words: list[str], n: int) -> str:
    text = " ".join(words[(i + n) % len(words)] for i in range(400))
    return text[:EXCERPT_CHARS]


def story(n: int, section: str | None, *, korean: bool, at: datetime) -> Item:
    words = KOREAN_WORDS if korean else ENGLISH_WORDS
    prefix = {"ko-pick": "Ko-pick: ", "previews": "Preview: ", None: ""}[section]
    title = prefix + " ".join(words[(n + i) % len(words)] for i in range(14)) + f" {n}"
    item = make_item("kobiz", n, title=title, text=long_text(words, n), section=section)
    return replace(
        item,
        published_at=at,
        updated_at=at,
        image_url=f"https://img.kobiz.example.org/stills/{n:05d}-{'x' * 60}.jpg",
        language="ko" if korean else None,
    )


def fill(store: Store, config: Config, per_section: int, *, korean: bool) -> None:
    store.sync_sources(config.sources, now=PERIOD.start - timedelta(days=30))
    items = [
        story(s * 100 + n, section, korean=korean, at=PERIOD.start + timedelta(hours=n + 1))
        for s, section in enumerate(("ko-pick", "previews", None))
        for n in range(per_section)
    ]
    at = PERIOD.start + timedelta(hours=1)
    store.save_items("kobiz", items, fetched_at=at, next_fetch_at=at + timedelta(hours=1))


def send_issue(store: Store, config: Config, smtp_server: SmtpFixture) -> ReceivedMessage:
    now = datetime.now(UTC)
    store.add_subscriber("kim@example.org", name="김지운", now=now, active=True)
    digest = compose(config, store, now=SLOT, period=PERIOD)
    assert digest is not None
    asyncio.run(
        deliver_digest(store, digest, site=config.site, smtp=smtp_server.settings(), secret=SECRET)
    )
    [received] = smtp_server.messages
    return received


def html_part(received: ReceivedMessage) -> tuple[int, str]:
    """(bytes of the HTML part's body as sent, its decoded HTML)."""
    message = received.message
    html = message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    boundary = message.get_boundary()
    assert boundary
    raw = received.data.split(b"--" + boundary.encode())
    [part] = [p for p in raw if b"Content-Type: text/html" in p]
    body = part.split(b"\r\n\r\n", 1)[1]
    return len(body), html.get_content()


# ------------------------------------------------------------------ size as sent


@pytest.mark.parametrize(
    ("korean", "cap"),
    [(True, 10), (False, 10), (True, 40)],
    ids=["korean-default-cap", "english-default-cap", "korean-cap-40"],
)
def test_html_part_as_sent_stays_under_90kb_at_the_maximum_item_count(
    sqlite_url: str,
    smtp_server: SmtpFixture,
    korean: bool,
    cap: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(config_yaml(cap=cap))
    store = Store.open(sqlite_url)
    try:
        fill(store, config, per_section=cap + 2, korean=korean)  # 3 sections, each over the cap
        received = send_issue(store, config, smtp_server)
    finally:
        store.close()

    size, html = html_part(received)
    most = 3 * cap
    with capsys.disabled():
        language = "Korean" if korean else "English"
        print(f"\nencoded HTML part at {most} items ({language}): {size} B")
    assert size < GMAIL_SAFE
    shown = html.count(">Read more<")
    assert 0 < shown <= most
    trimmed = sum(int(n) for n in re.findall(r">(\d+) more on the website<", html))
    # What does not fit is announced with a link, never dropped silently.
    assert shown + trimmed == most
    if trimmed:
        assert 'href="https://digest.example.org/"' in html


# ------------------------------------------------------------ over a section's cap


@pytest.mark.parametrize(("cap", "per_section"), [(3, 5), (2, 9), (4, 4)])
def test_items_over_the_cap_are_announced_with_a_link_to_the_archive(
    sqlite_url: str, smtp_server: SmtpFixture, cap: int, per_section: int
) -> None:
    config = parse_config(config_yaml(cap=cap))
    store = Store.open(sqlite_url)
    try:
        fill(store, config, per_section=per_section, korean=False)
        received = send_issue(store, config, smtp_server)
        digest_id = store.list_digests(1)[0].id
    finally:
        store.close()

    archive = view_url(config, digest_id)
    _, html = html_part(received)
    text_part = received.message.get_body(("plain",))
    assert isinstance(text_part, EmailMessage)
    text = text_part.get_content()
    links = LexborHTMLParser(html).css("a")
    announced = [a for a in links if "more in this section" in a.text()]
    over = per_section - cap
    if over == 0:
        assert not announced and "more in this section" not in text
        return
    assert len(announced) == 3  # ko-pick, previews and "other"
    for anchor in announced:
        assert anchor.text().strip() == f"and {over} more in this section"
        assert anchor.attributes["href"] == archive
    assert text.count(f"…and {over} more in this section: {archive}") == 3


# ---------------------------------------------------------------- the web copy


def test_the_public_copy_does_not_say_you_subscribed(
    sqlite_url: str, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml(cap=2))
    store = Store.open(sqlite_url)
    try:
        fill(store, config, per_section=3, korean=False)
        received = send_issue(store, config, smtp_server)
        [listed] = store.list_digests(1)
        assert listed.id is not None
        digest = store.get_digest(listed.id)
    finally:
        store.close()
    assert digest is not None
    notice = "You are receiving this because you subscribed"
    _, mailed = html_part(received)
    assert notice in mailed
    public = public_issue_html(digest.html, subscribe_url="https://digest.example.org/subscribe")
    assert notice not in public
    assert "and 1 more in this section" in public  # said, but not linked to itself
    assert 'class="to-archive"' not in public
    assert ">Ko-pick columns<" in public  # the issue itself is all there
    web = render_digest(digest, config.site, view_url=view_url(config, digest.id), web=True)
    assert notice not in web.html and "Unsubscribe" not in web.html


# ------------------------------------------------------------------- languages


def test_each_item_is_marked_with_its_language_in_the_email(
    sqlite_url: str, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml(cap=10))
    store = Store.open(sqlite_url)
    try:
        store.sync_sources(config.sources, now=PERIOD.start - timedelta(days=30))
        at = PERIOD.start + timedelta(hours=2)
        items = [
            story(1, "ko-pick", korean=True, at=at),
            story(2, "ko-pick", korean=False, at=at + timedelta(hours=1)),
        ]
        store.save_items("kobiz", items, fetched_at=at, next_fetch_at=at + timedelta(hours=1))
        received = send_issue(store, config, smtp_server)
    finally:
        store.close()

    _, html = html_part(received)
    tree = LexborHTMLParser(html)
    assert tree.css_first("html").attributes.get("lang") == "en"
    korean_title, english_title = items[0].title, items[1].title
    for node in tree.css("a"):
        if node.text().strip() == korean_title:
            marked = node.parent
            assert marked is not None and marked.attributes.get("lang") == "ko"
        if node.text().strip() == english_title:
            assert node.parent is not None and "lang" not in node.parent.attributes
    marked = {n.text().strip(): n.attributes["lang"] for n in tree.css("div[lang]")}
    assert marked[items[0].excerpt] == "ko"
    assert items[1].excerpt not in marked  # English, like the page: no mark needed


# --------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Korean Film Digest", "Korean Film Digest <weekly.example.org>"),
        ("한국 영화 다이제스트", "한국 영화 다이제스트 <weekly.example.org>"),
    ],
)
def test_digest_carries_a_list_id(
    sqlite_url: str, smtp_server: SmtpFixture, title: str, expected: str
) -> None:
    config = parse_config(config_yaml(cap=10, site_title=title))
    store = Store.open(sqlite_url)
    try:
        fill(store, config, per_section=1, korean=False)
        received = send_issue(store, config, smtp_server)
    finally:
        store.close()
    assert str(received.message["List-Id"]) == expected
    assert str(received.message["List-Unsubscribe"]).count("<") == 1
    assert "mailto:" not in str(received.message["List-Unsubscribe"])


def test_message_ids_differ_between_databases_sharing_a_secret(
    tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml(cap=10))
    ids = []
    for name in ("first", "reset"):  # e.g. the same install after a database reset
        store = Store.open(f"sqlite:///{tmp_path / name}.db")
        try:
            fill(store, config, per_section=1, korean=False)
            received = send_issue(store, config, smtp_server)
            install = store.install_id()
            ledger = store.deliveries(store.list_digests(1)[0].id)
        finally:
            store.close()
        # Same digest number, same subscriber number, same secret ...
        assert [d.digest_id for d in ledger] == [1] and [d.subscriber_id for d in ledger] == [1]
        assert received.message_id == ledger[0].message_id  # fixed per (digest, subscriber)
        assert install in received.message_id
        ids.append(received.message_id)
        smtp_server.handler.messages.clear()
    assert ids[0] != ids[1]  # ... yet never the same Message-ID
    # The id is stored: reopening the database keeps it.
    again = Store.open(f"sqlite:///{tmp_path / 'first'}.db")
    try:
        assert again.install_id() in ids[0]
    finally:
        again.close()


# ------------------------------------------------------------ confirmation mail

SITE = Site(
    title="Korean Film Digest",
    url="https://digest.example.org/",
    sender_email="digest@example.org",
    postal_address="130 Suyeonggangbyeon-daero, Busan 48058",
)
CONFIRM_URL = "https://digest.example.org/confirm/" + "eyJzdWIiOjQyfQ." + "Ab3_-x" * 30


def confirm(smtp_server: SmtpFixture, name: str | None) -> ReceivedMessage:
    subscriber = Subscriber(
        id=42,
        email="reader@example.org",
        status=SubscriberStatus.PENDING,
        created_at=datetime.now(UTC),
        name=name,
    )
    data = confirmation_message(SITE, subscriber, CONFIRM_URL)
    asyncio.run(send_message(smtp_server.settings(), SITE.sender_email, subscriber.email, data))
    [received] = smtp_server.messages
    return received


@pytest.mark.parametrize(
    "name",
    ["김지운", "Lee, Chang-dong", 'Park "Chan-wook" <boss@evil.example>', None],
)
def test_confirmation_mail_headers(smtp_server: SmtpFixture, name: str | None) -> None:
    received = confirm(smtp_server, name)
    message = received.message
    assert message["Auto-Submitted"] == "auto-generated"
    [to] = message["To"].addresses
    assert to.addr_spec == "reader@example.org"
    assert to.display_name == (name or "")
    assert received.recipients == ("reader@example.org",)


def test_confirmation_mail_uses_the_digest_design(smtp_server: SmtpFixture) -> None:
    received = confirm(smtp_server, "김지운")
    html = received.message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    content = html.get_content()
    # MJML's responsive layout: a viewport and the one-column media query.
    assert 'name="viewport"' in content and "@media only screen" in content
    assert "background-color:#141414" in content.replace(" ", "")  # the digest's band
    tree = LexborHTMLParser(content)
    anchors = [a for a in tree.css("a") if a.text().strip() == CONFIRM_URL]
    assert anchors and "break-all" in (anchors[0].attributes.get("style") or "")
    text = received.message.get_body(("plain",))
    assert isinstance(text, EmailMessage)
    assert CONFIRM_URL in text.get_content()


@pytest.mark.chromium
def test_confirmation_mail_fits_a_phone(smtp_server: SmtpFixture) -> None:
    from tests.test_render_browser import ARTIFACTS, _open

    received = confirm(smtp_server, "김지운")
    html = received.message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "confirm-mail.html"
    page.write_text(html.get_content(), encoding="utf-8")
    for width in (390, 600):
        measured = _open(page, width, ARTIFACTS / f"confirm-mail-{width}.png")
        assert measured["innerWidth"] == width
        assert measured["scrollWidth"] == width, f"overflows at {width}px: {measured}"


def test_a_digest_without_cap_overflow_has_no_announcement() -> None:
    config = parse_config(config_yaml(cap=10))
    digest = Digest(period_start=PERIOD.start, period_end=PERIOD.end, subject="s", sections=())
    rendered = render_digest(digest, config.site, view_url=view_url(config, 1))
    assert "more in this section" not in rendered.html + rendered.text


def test_the_archive_page_served_by_the_app_does_not_say_you_subscribed(
    sqlite_url: str, smtp_server: SmtpFixture
) -> None:
    import httpx

    from aggregator.web.app import WebContext, create_app
    from tests.test_web_feeds import LiveServer

    config = parse_config(config_yaml(cap=10))
    store = Store.open(sqlite_url)
    try:
        fill(store, config, per_section=2, korean=True)
        send_issue(store, config, smtp_server)
        digest_id = store.list_digests(1)[0].id
        ctx = WebContext(config=config, store=store, secret=SECRET)
        with LiveServer(create_app(ctx)) as server:
            page = httpx.get(server.url(f"/digests/{digest_id}"), timeout=10)
    finally:
        store.close()
    assert page.status_code == 200
    assert "Ko-pick columns" in page.text  # the issue is there ...
    assert "You are receiving this" not in page.text  # ... without the subscriber's notice
    assert "more in this section" not in page.text  # nothing over the cap here
    assert 'lang="ko"' in page.text  # and its Korean stories are marked Korean
