"""One subscriber per address in any letter case; the migration merging old duplicates."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from aggregator.models import SubscriberStatus
from aggregator.store import Store
from aggregator.store.engine import _alembic_config, make_engine
from aggregator.store.types import UTCDateTime
from tests.support.cli import run_cli
from tests.test_deliver import deliver, make_digest

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

_subs = sa.table(
    "subscribers",
    sa.column("id", sa.Integer),
    sa.column("email", sa.String),
    sa.column("name", sa.Text),
    sa.column("status", sa.String),
    sa.column("created_at", UTCDateTime),
    sa.column("confirmed_at", UTCDateTime),
    sa.column("unsubscribed_at", UTCDateTime),
)
_deliv = sa.table(
    "deliveries",
    sa.column("id", sa.Integer),
    sa.column("digest_id", sa.Integer),
    sa.column("subscriber_id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("message_id", sa.Text),
    sa.column("attempts", sa.Integer),
    sa.column("sent_at", UTCDateTime),
    sa.column("updated_at", UTCDateTime),
)


def _migrate(url: str, target: str, *, down: bool = False) -> None:
    cfg = _alembic_config()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, target)
    finally:
        engine.dispose()


def before_email_key(url: str, digests: int) -> list[int]:
    """The database at the revision before 0004, with ``digests`` issues composed; their ids."""
    store = Store.open(url)
    ids = [
        make_digest(store, f"Issue {n}", end=T0 + timedelta(days=7 * (n + 1))).id or 0
        for n in range(digests)
    ]
    store.close()
    previous = ScriptDirectory.from_config(_alembic_config()).get_revision("0008").down_revision
    assert isinstance(previous, str)
    _migrate(url, previous, down=True)
    return ids


def insert_subscriber(conn: sa.Connection, email: str, **values: Any) -> int:
    values.setdefault("created_at", T0)
    values.setdefault("status", "pending")
    result = conn.execute(sa.insert(_subs).values(email=email, **values).returning(_subs.c.id))
    return int(result.scalar_one())


def insert_delivery(conn: sa.Connection, digest_id: int, subscriber_id: int, status: str) -> None:
    conn.execute(
        sa.insert(_deliv).values(
            digest_id=digest_id,
            subscriber_id=subscriber_id,
            status=status,
            message_id=f"<{digest_id}.{subscriber_id}@test>",
            attempts=1 if status != "pending" else 0,
            sent_at=T0 if status == "sent" else None,
            updated_at=T0,
        )
    )


def ledger(store: Store, subscriber_id: int) -> dict[int, str]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_deliv.c.digest_id, _deliv.c.status).where(
                _deliv.c.subscriber_id == subscriber_id
            )
        ).all()
    return {digest_id: status for digest_id, status in rows}


def test_migration_merges_case_duplicates_and_keeps_the_ledger(
    db_url: str, smtp_server: SmtpFixture
) -> None:
    d1, d2, d3, d4 = before_email_key(db_url, 4)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        # Three spellings of one person: never confirmed, confirmed first, confirmed later.
        typed_first = insert_subscriber(conn, "Dup.Reader@example.org", name="Dup")
        keeper = insert_subscriber(
            conn,
            "dup.reader@example.org",
            status="active",
            created_at=T0 + timedelta(days=1),
            confirmed_at=T0 + timedelta(days=1),
        )
        later = insert_subscriber(
            conn,
            "DUP.READER@example.org",
            status="active",
            created_at=T0 + timedelta(days=2),
            confirmed_at=T0 + timedelta(days=2),
        )
        insert_delivery(conn, d1, keeper, "sent")  # both got issue 1
        insert_delivery(conn, d1, later, "sent")
        insert_delivery(conn, d2, keeper, "pending")  # only the later row got issue 2
        insert_delivery(conn, d2, later, "sent")
        insert_delivery(conn, d3, later, "sent")  # the kept row has no entry for issue 3
        insert_delivery(conn, d4, keeper, "failed")  # a failure stays a failure
        # Unsubscribed after the last confirmation: the merged person stays unsubscribed.
        kim_active = insert_subscriber(
            conn, "Kim@example.org", status="active", confirmed_at=T0, name="Kim"
        )
        insert_subscriber(
            conn,
            "kim@example.org",
            status="unsubscribed",
            created_at=T0 + timedelta(days=1),
            confirmed_at=T0 + timedelta(days=1),
            unsubscribed_at=T0 + timedelta(days=3),
        )
        # Confirmed again after an unsubscribe: active.
        park_old = insert_subscriber(
            conn,
            "park@example.org",
            status="unsubscribed",
            confirmed_at=T0,
            unsubscribed_at=T0 + timedelta(days=1),
        )
        insert_subscriber(
            conn,
            "Park@Example.org",
            status="active",
            created_at=T0 + timedelta(days=2),
            confirmed_at=T0 + timedelta(days=2),
        )
        # Never confirmed: the earliest row is kept, its name filled from the other.
        lee = insert_subscriber(conn, "LEE@example.org")
        insert_subscriber(conn, "lee@example.org", created_at=T0 + timedelta(1), name="Lee")
        alone = insert_subscriber(conn, "alone@example.org", status="active", confirmed_at=T0)
        insert_delivery(conn, d2, alone, "pending")  # so the sender below has work to do
    engine.dispose()

    store = Store.open(db_url)  # migrates to head
    try:
        people = {s.id: s for s in store.list_subscribers()}
        assert sorted(people) == sorted([keeper, kim_active, park_old, lee, alone])
        assert typed_first not in people and later not in people
        dup = people[keeper]
        assert dup.email == "dup.reader@example.org"  # as that person typed it
        assert dup.status is SubscriberStatus.ACTIVE
        assert dup.confirmed_at == T0 + timedelta(days=1)
        assert dup.name == "Dup"
        assert ledger(store, keeper) == {d1: "sent", d2: "sent", d3: "sent", d4: "failed"}
        assert people[kim_active].status is SubscriberStatus.UNSUBSCRIBED
        assert people[kim_active].unsubscribed_at == T0 + timedelta(days=3)
        assert people[park_old].status is SubscriberStatus.ACTIVE
        assert people[park_old].unsubscribed_at is None
        assert people[lee].status is SubscriberStatus.PENDING and people[lee].name == "Lee"
        assert people[lee].email == "LEE@example.org"

        # Sending issue 2 again mails only who never got it: not the merged person.
        issue2 = next(d for d in store.list_digests() if d.id == d2)
        deliver(store, issue2, smtp_server.settings())
        assert smtp_server.to("dup.reader@example.org") == []
        assert len(smtp_server.to("alone@example.org")) == 1
        assert ledger(store, keeper)[d2] == "sent"
        # And the address in any spelling is that one subscriber.
        again, created = store.add_subscriber("DuP.rEaDeR@EXAMPLE.ORG", now=T0, active=True)
        assert (again.id, created) == (keeper, False)
    finally:
        store.close()


@pytest.mark.parametrize("people", [1, 7, 60])
def test_migration_merges_generated_duplicates(db_url: str, people: int) -> None:
    rng = random.Random(people)
    digests = before_email_key(db_url, 3)
    engine = make_engine(db_url)
    sent_to: dict[str, set[int]] = {}
    with engine.begin() as conn:
        for n in range(people):
            base = f"reader.{n}@example.org"
            spellings = {
                "".join(c.upper() if rng.random() < 0.5 else c for c in base)
                for _ in range(rng.randint(1, 4))
            }
            sent_to[base] = set()
            for spelling in sorted(spellings):
                status = rng.choice(["pending", "active", "unsubscribed"])
                confirmed = T0 + timedelta(hours=rng.randint(0, 100))
                sid = insert_subscriber(
                    conn,
                    spelling,
                    status=status,
                    created_at=T0,
                    confirmed_at=confirmed if status != "pending" else None,
                    unsubscribed_at=confirmed + timedelta(hours=1)
                    if status == "unsubscribed"
                    else None,
                )
                for digest_id in digests:
                    if status != "pending" and rng.random() < 0.6:
                        state = rng.choice(["sent", "pending", "failed"])
                        insert_delivery(conn, digest_id, sid, state)
                        if state == "sent":
                            sent_to[base].add(digest_id)
    engine.dispose()

    store = Store.open(db_url)
    try:
        rows = store.list_subscribers()
        assert sorted(s.email.lower() for s in rows) == sorted(sent_to)
        for subscriber in rows:
            got = {d for d, state in ledger(store, subscriber.id).items() if state == "sent"}
            assert got == sent_to[subscriber.email.lower()], subscriber.email
    finally:
        store.close()


def test_migration_downgrades_and_upgrades_again(db_url: str) -> None:
    before_email_key(db_url, 0)
    _migrate(db_url, "head")
    store = Store.open(db_url)
    store.add_subscriber("Round@Trip.example", now=T0)
    assert store.subscriber_by_email("round@trip.example") is not None
    store.close()


def test_cli_treats_any_letter_case_as_one_subscriber(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "site: {title: T, url: 'https://t.example/'}\n"
        f"storage: {{url: 'sqlite:///{tmp_path}/db.sqlite'}}\n"
        "sources:\n  - {id: a, url: 'https://a.example/feed'}\n",
        encoding="utf-8",
    )
    first = run_cli("-c", str(config), "subscribers", "add", "Dup.Reader@example.org", "--active")
    assert first.exit_code == 0, first.output
    second = run_cli("-c", str(config), "subscribers", "add", "dup.reader@EXAMPLE.org", "--no-mail")
    assert second.exit_code == 0 and "already known" in second.output
    people = tmp_path / "people.csv"
    people.write_text("email\nDUP.READER@example.org\nnew@example.org\nNEW@example.org\n")
    imported = run_cli("-c", str(config), "subscribers", "import", str(people))
    assert imported.exit_code == 0, imported.output
    assert "imported 1 new (1 pending), 1 already known" in imported.output
    listed = run_cli("-c", str(config), "subscribers", "export")
    emails = [line.split(",")[0] for line in listed.stdout.splitlines()[1:]]
    assert emails == ["Dup.Reader@example.org", "new@example.org"]
    removed = run_cli("-c", str(config), "subscribers", "remove", "DUP.reader@example.org")
    assert removed.exit_code == 0, removed.output
    store = Store.open(f"sqlite:///{tmp_path}/db.sqlite")
    row = store.subscriber_by_email("dup.reader@example.org")
    store.close()
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
