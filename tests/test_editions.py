"""Per-subscriber editions of one frozen issue, as the real SMTP server receives them.

An issue is composed and frozen once; each subscriber gets the view of it
their preferences ask for (sections), rendered once per distinct view. A
subscriber whose sections are empty that week gets nothing, recorded in the
ledger so a later run never sends it; a resend after a kill sends the edition
fixed at first send.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.config import Config, parse_config
from aggregator.deliver import DeliveryReport, deliver_digest, open_ledger
from aggregator.digest import compose
from aggregator.models import DeliveryStatus, Digest
from aggregator.store import Store
from tests.test_deliver import _assert_exactly_once, _sender
from tests.test_mail_readers import PERIOD, SLOT, config_yaml, story

if TYPE_CHECKING:
    from tests.support.smtp import ReceivedMessage, SmtpFixture

SECRET = "test-secret-0123456789abcdef"  # tests.test_deliver's sender script signs with it
NOW = datetime(2026, 11, 30, tzinfo=UTC)
MARKERS = {"ko-pick": "Ko-pick: ", "previews": "Preview: ", "more": "Other news "}


def _config() -> Config:
    return parse_config(config_yaml(cap=10))


def _issue(store: Store, config: Config, per_section: dict[str | None, int]) -> Digest:
    """An issue with ``n`` items in each section (None: the "other news" section)."""
    store.sync_sources(config.sources, now=PERIOD.start - timedelta(days=30))
    items = []
    for s, (section, count) in enumerate(per_section.items()):
        for n in range(count):
            item = story(
                s * 100 + n, section, korean=False, at=PERIOD.start + timedelta(hours=n + 1)
            )
            if section is None:
                item = replace(item, title=f"Other news {s * 100 + n}")
            items.append(item)
    at = PERIOD.start + timedelta(hours=1)
    store.save_items("kobiz", items, fetched_at=at, next_fetch_at=at + timedelta(hours=1))
    digest = compose(config, store, now=SLOT, period=PERIOD)
    assert digest is not None
    return digest


def _subscribe(store: Store, email: str, sections: tuple[str, ...] | None) -> None:
    found, _ = store.add_subscriber(email, now=NOW, active=True)
    store.set_preferences(found.id, found.email, sections=sections, language=None)


def _deliver(store: Store, config: Config, digest: Digest, smtp: SmtpFixture) -> DeliveryReport:
    return asyncio.run(
        deliver_digest(
            store,
            digest,
            site=config.site,
            smtp=smtp.settings(),
            secret=SECRET,
            retry_delay=0.05,
            config=config,
        )
    )


def _sections_seen(received: ReceivedMessage) -> set[str]:
    """Which sections' items a message shows, by the titles' markers, in both parts."""
    seen: set[str] = set()
    for subtype in ("html", "plain"):
        body = received.message.get_body((subtype,))
        assert body is not None
        content = body.get_content()
        seen.update(sid for sid, marker in MARKERS.items() if marker in content)
    return seen


@pytest.mark.parametrize(
    "chosen",
    [("ko-pick",), ("previews",), ("ko-pick", "more"), ("more",), None],
    ids=["ko-pick", "previews", "ko-pick+more", "more", "all"],
)
def test_each_subscriber_gets_only_their_sections(
    store: Store, smtp_server: SmtpFixture, chosen: tuple[str, ...] | None
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 3, "previews": 2, None: 2})
    _subscribe(store, "reader@example.org", chosen)
    _subscribe(store, "everything@example.org", None)
    report = _deliver(store, config, digest, smtp_server)

    (everything,) = smtp_server.to("everything@example.org")
    assert _sections_seen(everything) == set(MARKERS)
    (reader,) = smtp_server.to("reader@example.org")
    assert _sections_seen(reader) == set(chosen or MARKERS)
    # The full issue is the frozen HTML itself; a narrower view is rendered once.
    assert report.renders == (0 if chosen is None else 1)
    if chosen is not None:
        html = reader.message.get_body(("html",))
        assert html is not None
        # The subscriber's copy still links to the full issue on the web.
        assert f"https://digest.example.org/digests/{digest.id}" in html.get_content()


def test_one_render_per_distinct_view_whatever_the_number_of_subscribers(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 2, "previews": 2, None: 1})
    for i in range(12):
        _subscribe(store, f"k{i}@example.org", ("ko-pick",))
        _subscribe(store, f"p{i}@example.org", ("previews", "more"))
        _subscribe(store, f"a{i}@example.org", None)
    report = _deliver(store, config, digest, smtp_server)
    assert report.sent == 36
    assert report.renders == 2
    per_address = Counter(r for m in smtp_server.messages for r in m.recipients)
    assert set(per_address.values()) == {1}


@pytest.mark.parametrize("chosen", [(), ("previews",), ("previews", "more")])
def test_a_subscriber_whose_sections_are_empty_gets_nothing_now_or_later(
    store: Store, smtp_server: SmtpFixture, chosen: tuple[str, ...]
) -> None:
    config = _config()  # digest.when_empty defaults to "skip"
    digest = _issue(store, config, {"ko-pick": 3})  # nothing in previews or other news
    _subscribe(store, "empty@example.org", chosen)
    _subscribe(store, "kopick@example.org", ("ko-pick",))
    report = _deliver(store, config, digest, smtp_server)
    assert report.skipped == 1 and report.sent == 1
    assert smtp_server.to("empty@example.org") == []
    assert len(smtp_server.to("kopick@example.org")) == 1
    by_subscriber = {d.subscriber_id: d.status for d in store.deliveries(digest.id)}
    empty = store.subscriber_by_email("empty@example.org")
    assert empty is not None
    assert by_subscriber[empty.id] is DeliveryStatus.SKIPPED

    # Choosing ko-pick now does not turn this issue into a late copy.
    store.set_preferences(empty.id, empty.email, sections=("ko-pick",), language=None)
    again = _deliver(store, config, digest, smtp_server)
    assert again.sent == 0
    assert smtp_server.to("empty@example.org") == []


def test_when_empty_note_sends_the_no_news_edition_instead(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml(cap=10) + "  when_empty: note\n")
    digest = _issue(store, config, {"ko-pick": 2})
    _subscribe(store, "previews@example.org", ("previews",))
    report = _deliver(store, config, digest, smtp_server)
    assert report.sent == 1 and report.skipped == 0
    (received,) = smtp_server.to("previews@example.org")
    assert _sections_seen(received) == set()


def test_a_resend_sends_the_edition_fixed_at_first_send(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 2, "previews": 2})
    _subscribe(store, "reader@example.org", ("ko-pick",))
    assert digest.id is not None
    open_ledger(store, digest.id, secret=SECRET, site=config.site)  # the first send began
    reader = store.subscriber_by_email("reader@example.org")
    assert reader is not None
    store.set_preferences(reader.id, reader.email, sections=("previews",), language="ko")
    _deliver(store, config, digest, smtp_server)
    (received,) = smtp_server.to("reader@example.org")
    assert _sections_seen(received) == {"ko-pick"}


def test_killed_sender_resumes_with_each_subscribers_edition_exactly_once(
    store: Store, db_url: str, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 2, "previews": 2, None: 1})
    choices: dict[str, tuple[str, ...] | None] = {}
    for i in range(30):
        chosen = [("ko-pick",), ("previews",), None][i % 3]
        email = f"reader{i:03d}@example.org"
        _subscribe(store, email, chosen)
        choices[email] = chosen
    smtp_server.handler.delay = 0.04

    first = _sender(tmp_path, db_url, digest, smtp_server, "first", lease=1.0)
    smtp_server.wait_for(8, timeout=30)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert len(smtp_server.messages) < 30, "the sender finished before it could be killed"
    time.sleep(0.3)
    # Everyone changes their mind mid-send: the issue's editions stay as first fixed.
    for email in choices:
        found = store.subscriber_by_email(email)
        assert found is not None
        store.set_preferences(found.id, found.email, sections=("more",), language=None)
    time.sleep(1.0)  # the dead sender's lease expires
    second = _sender(tmp_path, db_url, digest, smtp_server, "second", lease=5.0)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err

    _assert_exactly_once(smtp_server, list(choices), allowed_repeats=1)
    for email, chosen in choices.items():
        for received in smtp_server.to(email):
            assert _sections_seen(received) == set(chosen or MARKERS), email
    assert store.delivery_counts(digest.id)[DeliveryStatus.SENT] == 30
