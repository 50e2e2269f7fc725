"""Composing the weekly digest from a real SQLite store: periods, sections, freezing."""

from __future__ import annotations

import email
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Literal

import pytest

from aggregator import digest as digest_module
from aggregator.config import Config, parse_config
from aggregator.digest import (
    OTHER_SECTION,
    Period,
    build_digest,
    compose,
    compose_now,
    latest_slot,
    next_period,
    upcoming_period,
    view_url,
)
from aggregator.errors import AggregatorError
from aggregator.models import Item, Source
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from tests.support.cli import run_cli
from tests.support.items import make_item as build_item

CONFIG_YAML = """
site:
  title: Korean Film Digest
  url: https://digest.example.org/
  timezone: Asia/Seoul
  postal_address: "130 Suyeonggangbyeon-daero, Busan 48058"
sections:
  - {id: ko-pick, title: Ko-pick columns, match: {title: "^Ko-pick"}}
  - {id: previews, title: Film previews, match: {title: "(?i)preview|anticipated"}}
sources:
  - {id: kobiz, title: KoBiz, url: https://kobiz.example.org/feed.xml}
  - {id: outlet, title: Film Outlet, url: https://outlet.example.org/feed.xml}
digest:
  schedule: "mon 09:00"
  max_items_per_section: 3
"""

# Monday 2026-11-09 09:00 in Seoul is 00:00 UTC.
SLOT = datetime(2026, 11, 9, 0, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG_YAML)


@pytest.fixture
def sqlite_store(sqlite_url: str, config: Config) -> Iterator[Store]:
    store = Store.open(sqlite_url)
    store.sync_sources(
        [Source(id=s.id, url=s.url, title=s.title) for s in config.sources], now=SLOT - 4 * WEEK
    )
    yield store
    store.close()


def make_item(
    source_id: str, n: int, title: str, *, section: str | None, published: datetime
) -> Item:
    return build_item(
        source_id, n, title=title, text=f"About {title}.", section=section, published=published
    )


def arrive(store: Store, source_id: str, items: list[Item], at: datetime) -> None:
    """Store ``items`` as first seen at ``at`` (one fetch of ``source_id``)."""
    store.save_items(source_id, items, fetched_at=at, next_fetch_at=at + timedelta(hours=1))


def week_of_news(store: Store, week_end: datetime = SLOT, start_n: int = 0) -> None:
    """Two Ko-pick columns, one preview and two other stories first seen in the week."""
    seen = week_end - timedelta(days=3)
    tag = f" ({start_n})" if start_n else ""
    arrive(
        store,
        "kobiz",
        [
            make_item(
                "kobiz",
                start_n + 1,
                "Ko-pick: A" + tag,
                section="ko-pick",
                published=seen - timedelta(1),
            ),
            make_item("kobiz", start_n + 2, "Ko-pick: B" + tag, section="ko-pick", published=seen),
            make_item(
                "kobiz", start_n + 3, "Winter previews" + tag, section="previews", published=seen
            ),
        ],
        seen,
    )
    arrive(
        store,
        "outlet",
        [
            make_item("outlet", start_n + 1, "Box office" + tag, section=None, published=seen),
            make_item(
                "outlet",
                start_n + 2,
                "Festival news" + tag,
                section=None,
                published=seen - timedelta(2),
            ),
        ],
        seen + timedelta(hours=1),
    )


def titles(sections: tuple[object, ...]) -> list[tuple[str, list[str]]]:
    return [(s.id, [i.title for i in s.items]) for s in sections]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------ periods


def test_latest_slot_is_monday_nine_in_seoul(config: Config) -> None:
    wednesday = SLOT + timedelta(days=2)
    assert latest_slot(config.digest, config.site, wednesday) == SLOT
    assert latest_slot(config.digest, config.site, SLOT) == SLOT
    assert latest_slot(config.digest, config.site, SLOT - timedelta(seconds=1)) == SLOT - WEEK


@pytest.mark.parametrize("after_slot", [timedelta(0), timedelta(hours=5), timedelta(days=3)])
@pytest.mark.parametrize("period_days", [1, 7, 14])
def test_first_period_is_what_was_stored_until_now(
    config: Config, sqlite_store: Store, after_slot: timedelta, period_days: int
) -> None:
    # A fresh install fetches after the slot: its first issue must not be the
    # empty week before that slot, but what was stored, at most digest.period.
    config = replace(config, digest=replace(config.digest, period=timedelta(days=period_days)))
    now = SLOT + after_slot

    period = next_period(config, sqlite_store, now=now)

    assert period == Period(now - timedelta(days=period_days), now)
    assert upcoming_period(config, sqlite_store, now=now) == period


def test_period_must_end_after_it_starts() -> None:
    with pytest.raises(AggregatorError, match=r"^a digest period must end after it starts: "):
        Period(SLOT, SLOT)


# ---------------------------------------------------------------------- grouping


def test_items_are_grouped_by_section_newest_first(config: Config, sqlite_store: Store) -> None:
    week_of_news(sqlite_store)

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert titles(digest.sections) == [
        ("ko-pick", ["Ko-pick: B", "Ko-pick: A"]),
        ("previews", ["Winter previews"]),
        (OTHER_SECTION, ["Box office", "Festival news"]),
    ]
    assert [s.title for s in digest.sections] == [
        "Ko-pick columns",
        "Film previews",
        "More Korean film news",
    ]
    assert digest.subject == "Korean Film Digest: week of Nov 02, 2026"
    assert digest.preheader == "2 Ko-pick columns, 1 film preview and 2 more stories"


def test_only_items_first_seen_in_the_period_are_chosen(
    config: Config, sqlite_store: Store
) -> None:
    week_of_news(sqlite_store, SLOT - WEEK)  # last week's news
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 50, "Ko-pick: this week", section="ko-pick", published=SLOT - WEEK)],
        SLOT - timedelta(hours=1),
    )
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 51, "Ko-pick: too late", section="ko-pick", published=SLOT)],
        SLOT,  # the period is half-open: this belongs to the next issue
    )

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert titles(digest.sections) == [("ko-pick", ["Ko-pick: this week"])]


def test_duplicates_from_another_source_are_left_out(config: Config, sqlite_store: Store) -> None:
    seen = SLOT - timedelta(days=2)
    original = make_item("kobiz", 1, "Ko-pick: Original", section="ko-pick", published=seen)
    copy = replace(
        make_item("outlet", 1, "Ko-pick: Original", section="ko-pick", published=seen),
        canonical_url=original.canonical_url,
    )
    arrive(sqlite_store, "kobiz", [original], seen)
    arrive(sqlite_store, "outlet", [copy], seen + timedelta(hours=1))

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert [[i.source_id for i in s.items] for s in digest.sections] == [["kobiz"]]


def test_each_section_is_capped(config: Config, sqlite_store: Store) -> None:
    seen = SLOT - timedelta(days=1)
    items = [
        make_item("kobiz", n, f"Ko-pick: {n}", section="ko-pick", published=seen + timedelta(n))
        for n in range(6)
    ]
    arrive(sqlite_store, "kobiz", items, seen)

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert titles(digest.sections) == [("ko-pick", ["Ko-pick: 5", "Ko-pick: 4", "Ko-pick: 3"])]


def test_other_section_can_be_turned_off(config: Config, sqlite_store: Store) -> None:
    week_of_news(sqlite_store)
    config = replace(config, digest=replace(config.digest, other_section_title=None))

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert [s.id for s in digest.sections] == ["ko-pick", "previews"]


def test_empty_week_is_skipped_or_noted(config: Config, sqlite_store: Store) -> None:
    assert compose(config, sqlite_store, now=SLOT) is None
    assert sqlite_store.list_digests() == []

    noting = replace(config, digest=replace(config.digest, when_empty="note"))
    issue = compose(noting, sqlite_store, now=SLOT)

    assert issue is not None and issue.item_count == 0
    assert "No new Ko-pick columns" in issue.html


# ----------------------------------------------------------------------- freezing


def test_compose_freezes_subject_items_html_and_text(config: Config, sqlite_store: Store) -> None:
    week_of_news(sqlite_store)

    issue = compose(config, sqlite_store, now=SLOT)

    assert issue is not None and issue.id is not None
    assert (issue.period_start, issue.period_end) == (SLOT - WEEK, SLOT)
    assert issue.item_count == 5
    stored = sqlite_store.get_digest(issue.id)
    assert stored is not None
    assert stored.html == issue.html and stored.text == issue.text
    assert titles(stored.sections) == titles(issue.sections)
    for section in stored.sections:
        for item in section.items:
            assert item.url in issue.html and item.url in issue.text
    assert view_url(config, issue.id) in issue.html
    assert issue.html.count(UNSUBSCRIBE_PLACEHOLDER) == 1
    assert f"https://digest.example.org/digests/{issue.id}" == view_url(config, issue.id)


def test_second_compose_returns_the_frozen_issue(config: Config, sqlite_store: Store) -> None:
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT + timedelta(minutes=1))
    assert first is not None

    # News arrives after the issue was frozen, still before the next slot.
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 99, "Ko-pick: late", section="ko-pick", published=SLOT)],
        SLOT + timedelta(hours=2),
    )
    again = compose(config, sqlite_store, now=SLOT + timedelta(days=2))

    assert again is not None
    assert again.id == first.id
    assert again.html == first.html and again.text == first.text
    assert "Ko-pick: late" not in again.html
    assert len(sqlite_store.list_digests()) == 1


def test_frozen_issue_does_not_change_and_next_issue_starts_where_it_ended(
    config: Config, sqlite_store: Store
) -> None:
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None and first.id is not None
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 99, "Ko-pick: next week", section="ko-pick", published=SLOT)],
        SLOT + timedelta(days=1),
    )

    second = compose(config, sqlite_store, now=SLOT + WEEK)

    assert second is not None and second.id != first.id
    assert (second.period_start, second.period_end) == (SLOT, SLOT + WEEK)
    assert titles(second.sections) == [("ko-pick", ["Ko-pick: next week"])]
    unchanged = sqlite_store.get_digest(first.id)
    assert unchanged is not None
    assert unchanged.html == first.html
    assert titles(unchanged.sections) == titles(first.sections)
    assert [d.id for d in sqlite_store.list_digests()] == [second.id, first.id]
    assert [d.item_count for d in sqlite_store.list_digests()] == [1, 5]


def test_missed_weeks_are_covered_once(config: Config, sqlite_store: Store) -> None:
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None
    week_of_news(sqlite_store, SLOT + WEEK, start_n=10)
    week_of_news(sqlite_store, SLOT + 2 * WEEK, start_n=20)

    late = compose(config, sqlite_store, now=SLOT + 2 * WEEK + timedelta(days=3))

    assert late is not None
    assert (late.period_start, late.period_end) == (SLOT, SLOT + 2 * WEEK)
    assert late.item_count == 3 + 2 + 3  # ko-pick and other news capped at 3 each


def test_a_render_failure_freezes_nothing(
    config: Config, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    week_of_news(sqlite_store)

    def broken(config: Config, digest: object) -> tuple[str, str]:
        raise RuntimeError("template exploded")

    monkeypatch.setattr(digest_module, "render_parts", broken)
    with pytest.raises(RuntimeError):
        compose(config, sqlite_store, now=SLOT)

    assert sqlite_store.list_digests() == []
    monkeypatch.undo()
    assert compose(config, sqlite_store, now=SLOT) is not None


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_config(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Path, Store]]:
    """A feeds.yaml and a store with a week of news, for ``aggregator digest ...``."""
    config_path = tmp_path / "feeds.yaml"
    config_path.write_text(
        CONFIG_YAML.replace("site:\n", "site:\n  sender_name: 코리안 필름 다이제스트\n")
        + f"storage:\n  url: {sqlite_url}\n",
        encoding="utf-8",
    )
    store = Store.open(sqlite_url)
    config = parse_config(config_path.read_text(encoding="utf-8"))
    store.sync_sources([Source(id=s.id, url=s.url, title=s.title) for s in config.sources])
    week_of_news(store, datetime.now(UTC))
    yield config_path, store
    store.close()


def test_cli_preview_writes_html_text_and_eml_without_freezing(
    cli_config: tuple[Path, Store], tmp_path: Path
) -> None:
    config_path, store = cli_config
    out = tmp_path / "preview"

    result = run_cli(
        "--config", str(config_path), "digest", "preview", "--since", "7d", "--out", str(out)
    )

    assert result.exit_code == 0, result.output
    assert "5 items" in result.output
    html = (out / "digest.html").read_text(encoding="utf-8")
    text = (out / "digest.txt").read_text(encoding="utf-8")
    assert "Ko-pick: A" in html and "https://outlet.example.org/article/2" in text
    message = email.message_from_bytes((out / "digest.eml").read_bytes(), policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert str(message["From"]) == "코리안 필름 다이제스트 <digest@localhost>"
    assert "=?utf-8?" in (out / "digest.eml").read_text(encoding="ascii").lower()
    parts = {part.get_content_type(): part for part in message.iter_parts()}
    assert parts["text/html"]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts["text/html"].get_content().rstrip("\n") == html.rstrip("\n")
    assert parts["text/plain"].get_content().rstrip("\n") == text.rstrip("\n")
    assert store.list_digests() == []


def test_cli_preview_period_with_nothing_new_says_so(
    cli_config: tuple[Path, Store], tmp_path: Path
) -> None:
    config_path, _ = cli_config

    result = run_cli(
        "--config", str(config_path), "digest", "preview", "--period", "2020-01-01..2020-01-08"
    )

    assert result.exit_code == 1
    assert "nothing new between 2020-01-01 00:00 and 2020-01-08 00:00" in result.output


def test_cli_compose_then_list(cli_config: tuple[Path, Store]) -> None:
    config_path, store = cli_config
    composed = run_cli("--config", str(config_path), "digest", "compose")
    again = run_cli("--config", str(config_path), "digest", "compose")
    listed = run_cli("--config", str(config_path), "digest", "list")

    assert composed.exit_code == 0, composed.output
    digests = store.list_digests()
    assert len(digests) == 1
    assert composed.output.startswith(f"digest #{digests[0].id}: Korean Film Digest: week of")
    assert again.output == composed.output
    assert listed.exit_code == 0, listed.output
    header = next(line for line in listed.stdout.splitlines() if line.startswith("┃"))
    column = [cell.strip() for cell in header.split("┃")].index("subject")
    # The table wraps long cells over several lines: join the subject column back.
    rows = [line.split("│") for line in listed.stdout.splitlines() if line.startswith("│")]
    cells = [row[column].strip() for row in rows]
    assert " ".join(c for c in cells if c) == digests[0].subject


# ---------------------------------------------------- due issue and send --now


def test_the_due_issue_already_frozen_up_to_the_slot_is_found_again(
    config: Config, sqlite_store: Store
) -> None:
    # An issue frozen exactly at the slot is the due one for the rest of the
    # week: the same period, not an empty one from the slot to the slot.
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None
    assert (first.period_start, first.period_end) == (SLOT - WEEK, SLOT)

    for later in (timedelta(0), timedelta(hours=1), timedelta(days=6, hours=23)):
        assert next_period(config, sqlite_store, now=SLOT + later) == Period(SLOT - WEEK, SLOT)


@pytest.mark.parametrize("since", [timedelta(minutes=1), timedelta(hours=5), timedelta(days=3)])
def test_send_now_after_an_issue_holds_exactly_what_arrived_since(
    config: Config, sqlite_store: Store, since: timedelta
) -> None:
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None
    arrived = SLOT + since / 2
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 77, "Ko-pick: fresh", section="ko-pick", published=arrived)],
        arrived,
    )
    now = SLOT + since

    issue = compose_now(config, sqlite_store, now=now)

    assert issue is not None and issue.id is not None and issue.id != first.id
    assert (issue.period_start, issue.period_end) == (SLOT, now)
    assert issue.created_at == now  # stamped with the caller's clock, not the machine's
    assert titles(issue.sections) == [("ko-pick", ["Ko-pick: fresh"])]
    assert [d.id for d in sqlite_store.list_digests()] == [issue.id, first.id]


@pytest.mark.parametrize("when_empty", ["skip", "note"])
def test_send_now_with_nothing_since_the_last_issue_composes_nothing(
    config: Config, sqlite_store: Store, when_empty: Literal["skip", "note"]
) -> None:
    config = replace(config, digest=replace(config.digest, when_empty=when_empty))
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None

    for later in (timedelta(seconds=1), timedelta(hours=2), timedelta(days=4)):
        assert compose_now(config, sqlite_store, now=SLOT + later) is None
    assert [d.id for d in sqlite_store.list_digests()] == [first.id]


def test_send_now_as_the_first_issue_holds_the_stored_week(
    config: Config, sqlite_store: Store
) -> None:
    week_of_news(sqlite_store)
    now = SLOT + timedelta(hours=3)

    issue = compose_now(config, sqlite_store, now=now)

    assert issue is not None and issue.id is not None
    assert (issue.period_start, issue.period_end) == (now - WEEK, now)
    assert issue.item_count == 5
    assert [d.id for d in sqlite_store.list_digests()] == [issue.id]


def test_send_now_as_the_first_issue_with_nothing_stored_notes_it_when_asked(
    config: Config, sqlite_store: Store
) -> None:
    # With no issue yet, an empty first issue follows digest.when_empty like
    # a scheduled one: skipped, or a "no news" note.
    now = SLOT + timedelta(hours=3)
    assert compose_now(config, sqlite_store, now=now) is None
    noted = replace(config, digest=replace(config.digest, when_empty="note"))
    issue = compose_now(noted, sqlite_store, now=now)
    assert issue is not None and issue.sections == ()
    assert (issue.period_start, issue.period_end) == (now - WEEK, now)


def test_send_now_without_a_time_uses_the_clock(config: Config, sqlite_store: Store) -> None:
    before = datetime.now(UTC)
    arrive(
        sqlite_store,
        "kobiz",
        [make_item("kobiz", 5, "Ko-pick: now", section="ko-pick", published=before)],
        before - timedelta(hours=1),
    )

    issue = compose_now(config, sqlite_store)

    after = datetime.now(UTC)
    assert issue is not None
    assert before <= issue.period_end <= after
    assert issue.period_end - issue.period_start == WEEK
    assert titles(issue.sections) == [("ko-pick", ["Ko-pick: now"])]


def test_compose_says_what_it_did(
    config: Config, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # `digest compose` prints these lines: what was composed, what was there
    # already, or why nothing was.
    caplog.set_level("INFO", logger="aggregator.digest")
    assert compose(config, sqlite_store, now=SLOT) is None
    week_of_news(sqlite_store, SLOT + WEEK)
    made = compose(config, sqlite_store, now=SLOT + WEEK)
    assert made is not None
    again = compose(config, sqlite_store, now=SLOT + WEEK + timedelta(hours=2))
    assert again is not None and again.id == made.id

    subject = made.subject
    assert caplog.messages == [
        "no new items between 2026-11-02T00:00:00+00:00 and 2026-11-09T00:00:00+00:00: "
        "no digest composed",
        f"composed digest #{made.id} (5 items): {subject}",
        f"digest #{made.id} already covers this period: {subject}",
    ]


@pytest.mark.parametrize("stored", [1, 3, 4, 7])
def test_a_capped_section_counts_what_it_left_out(
    config: Config, sqlite_store: Store, stored: int
) -> None:
    seen = SLOT - timedelta(days=1)
    arrive(
        sqlite_store,
        "kobiz",
        [
            make_item("kobiz", n, f"Ko-pick: {n}", section="ko-pick", published=seen + timedelta(n))
            for n in range(stored)
        ]
        + [
            make_item("kobiz", 50 + n, f"Story {n}", section=None, published=seen)
            for n in range(stored)
        ],
        seen,
    )

    digest = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT))

    assert digest is not None
    assert [(s.id, len(s.items), s.more) for s in digest.sections] == [
        ("ko-pick", min(stored, 3), max(stored - 3, 0)),
        (OTHER_SECTION, min(stored, 3), max(stored - 3, 0)),
    ]
    # A caller's own cap (the preview's) replaces the configured one.
    narrow = build_digest(config, sqlite_store, Period(SLOT - WEEK, SLOT), max_per_section=1)
    assert narrow is not None
    assert [(s.id, len(s.items), s.more) for s in narrow.sections] == [
        ("ko-pick", 1, stored - 1),
        (OTHER_SECTION, 1, stored - 1),
    ]


def test_the_same_link_is_listed_once(config: Config, sqlite_store: Store) -> None:
    seen = SLOT - timedelta(days=1)
    arrive(
        sqlite_store,
        "kobiz",
        [
            make_item("kobiz", n, f"Ko-pick: {n}", section="ko-pick", published=seen - timedelta(n))
            for n in range(3)
        ],
        seen,
    )
    stored = sqlite_store.items_first_seen_between(SLOT - WEEK, SLOT)
    newest = max(stored, key=lambda i: i.published_at)
    # Two stories that are not marked duplicates but point at one page; the
    # oldest story has a page of its own and still follows.
    middle = next(i for i in stored if i.title == "Ko-pick: 1")
    same_page = [
        replace(i, canonical_url=newest.canonical_url) if i is middle else i for i in stored
    ]

    (section,) = digest_module.group_items(same_page, config)

    assert [i.title for i in section.items] == ["Ko-pick: 0", "Ko-pick: 2"]
    assert [i.title for i in digest_module.group_items(stored, config)[0].items] == [
        "Ko-pick: 0",
        "Ko-pick: 1",
        "Ko-pick: 2",
    ]


@pytest.mark.parametrize(
    ("site_url", "expected"),
    [
        ("https://digest.example.org/", "https://digest.example.org/digests/"),
        ("https://example.org/KFDX/", "https://example.org/KFDX/digests/"),
        ("https://example.org/film///", "https://example.org/film/digests/"),
    ],
)
def test_a_preview_links_to_the_archive_index(config: Config, site_url: str, expected: str) -> None:
    config = replace(config, site=replace(config.site, url=site_url))
    assert view_url(config, None) == expected
    assert view_url(config, 12) == f"{expected}12"


def test_an_issue_composed_just_now_leaves_a_one_second_upcoming_period(
    config: Config, sqlite_store: Store
) -> None:
    week_of_news(sqlite_store)
    first = compose(config, sqlite_store, now=SLOT)
    assert first is not None

    assert upcoming_period(config, sqlite_store, now=SLOT) == Period(
        SLOT - timedelta(seconds=1), SLOT
    )
    early = SLOT - timedelta(hours=1)  # a clock behind the last issue's end
    assert upcoming_period(config, sqlite_store, now=early) == Period(
        early - timedelta(seconds=1), early
    )
    assert upcoming_period(config, sqlite_store, now=SLOT + timedelta(hours=2)) == Period(
        SLOT, SLOT + timedelta(hours=2)
    )


@pytest.mark.parametrize("aware", ["start", "end"])
def test_a_period_needs_both_ends_in_a_time_zone(aware: str) -> None:
    naive = datetime(2026, 11, 9, 9, 0)
    start, end = (SLOT - WEEK, naive) if aware == "start" else (naive - WEEK, SLOT)
    with pytest.raises(AggregatorError, match=r"^a digest period needs time-zone aware datetimes$"):
        Period(start, end)
