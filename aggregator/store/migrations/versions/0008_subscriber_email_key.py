"""subscribers.email_key: addresses are unique regardless of case.

``Dup.Reader@example.org`` and ``dup.reader@example.org`` reach the same
mailbox in practice, so they must be one subscriber. The address is kept as
typed in ``email``; ``email_key`` holds it lower-cased and carries the unique
index. Addresses are ASCII (:func:`aggregator.subscribers.normalize_email`
refuses anything else), so SQL ``lower()`` here and Python's ``str.lower`` in
the store agree on both databases.

Existing case-duplicates are merged into one row first:

* the row kept is the earliest confirmed one (the earliest created if none
  was ever confirmed); its address and id stay, so its signed links still work;
* it ends unsubscribed if any of the rows unsubscribed after the last
  confirmation of any of them (the person asked to stop), active if any was
  active, else pending;
* the delivery ledger moves to the kept row; where both rows have an entry for
  the same issue, the one that got furthest (sent, then sending) wins, so
  nobody is mailed an issue again that either row already received.

On SQLite the unique constraint on ``email`` stays (the exact address is
still unique when its folded form is); ``email_key`` is made NOT NULL on
both databases.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from aggregator.store.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_subscribers = sa.table(
    "subscribers",
    sa.column("id", sa.Integer),
    sa.column("email", sa.String),
    sa.column("email_key", sa.String),
    sa.column("name", sa.Text),
    sa.column("status", sa.String),
    sa.column("created_at", UTCDateTime),
    sa.column("confirmed_at", UTCDateTime),
    sa.column("unsubscribed_at", UTCDateTime),
)
_deliveries = sa.table(
    "deliveries",
    sa.column("id", sa.Integer),
    sa.column("digest_id", sa.Integer),
    sa.column("subscriber_id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("message_id", sa.Text),
    sa.column("attempts", sa.Integer),
    sa.column("last_error", sa.Text),
    sa.column("lease_owner", sa.Text),
    sa.column("lease_until", UTCDateTime),
    sa.column("sent_at", UTCDateTime),
)
# How far a ledger entry got: the furthest one of two merged rows is kept.
_PROGRESS = {"sent": 3, "sending": 2, "pending": 1, "failed": 0}


_NEVER = datetime.min.replace(tzinfo=UTC)


def _when(value: datetime | None) -> datetime:
    return _NEVER if value is None else value


def _keeper(rows: list[Any]) -> Any:
    confirmed = [r for r in rows if r.confirmed_at is not None]
    if confirmed:
        return min(confirmed, key=lambda r: (_when(r.confirmed_at), r.id))
    return min(rows, key=lambda r: (_when(r.created_at), r.id))


def _merged_state(rows: list[Any], keeper: Any) -> dict[str, Any]:
    last_confirmed = max((r.confirmed_at for r in rows if r.confirmed_at), default=None)
    unsubscribed = [r for r in rows if r.status == "unsubscribed"]
    name = keeper.name or next((r.name for r in rows if r.name), None)
    if unsubscribed:
        latest = max(unsubscribed, key=lambda r: _when(r.unsubscribed_at))
        stop = latest.unsubscribed_at
        if last_confirmed is None or stop is None or stop >= last_confirmed:
            return {
                "status": "unsubscribed",
                "unsubscribed_at": latest.unsubscribed_at,
                "name": name,
            }
    if any(r.status == "active" for r in rows):
        return {
            "status": "active",
            "confirmed_at": keeper.confirmed_at,
            "unsubscribed_at": None,
            "name": name,
        }
    return {"status": keeper.status, "name": name}


def _merge(conn: sa.Connection, rows: list[Any]) -> None:
    keeper = _keeper(rows)
    others = [r.id for r in rows if r.id != keeper.id]
    d = _deliveries
    kept = {
        r.digest_id: r
        for r in conn.execute(sa.select(d).where(d.c.subscriber_id == keeper.id)).all()
    }
    for entry in conn.execute(
        sa.select(d).where(d.c.subscriber_id.in_(others)).order_by(d.c.id)
    ).all():
        mine = kept.get(entry.digest_id)
        if mine is None:
            conn.execute(sa.update(d).where(d.c.id == entry.id).values(subscriber_id=keeper.id))
            kept[entry.digest_id] = entry
            continue
        if _PROGRESS.get(entry.status, 0) > _PROGRESS.get(mine.status, 0):
            conn.execute(
                sa.update(d)
                .where(d.c.id == mine.id)
                .values(
                    status=entry.status,
                    message_id=entry.message_id,
                    attempts=entry.attempts,
                    last_error=entry.last_error,
                    lease_owner=entry.lease_owner,
                    lease_until=entry.lease_until,
                    sent_at=entry.sent_at,
                )
            )
            kept[entry.digest_id] = entry
        conn.execute(sa.delete(d).where(d.c.id == entry.id))
    conn.execute(sa.delete(_subscribers).where(_subscribers.c.id.in_(others)))
    conn.execute(
        sa.update(_subscribers)
        .where(_subscribers.c.id == keeper.id)
        .values(**_merged_state(rows, keeper))
    )


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("email_key", sa.String(320)))
    conn = op.get_bind()
    s = _subscribers
    conn.execute(sa.update(s).values(email_key=sa.func.lower(s.c.email)))
    duplicated = (
        sa.select(s.c.email_key).group_by(s.c.email_key).having(sa.func.count() > 1).subquery()
    )
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(
        sa.select(s).where(s.c.email_key.in_(sa.select(duplicated.c.email_key))).order_by(s.c.id)
    ).all():
        groups[row.email_key].append(row)
    for rows in groups.values():
        _merge(conn, rows)
    op.create_index("uq_subscribers_email_key", "subscribers", ["email_key"], unique=True)
    # On SQLite this rebuilds the table; Store.migrate turns foreign-key
    # enforcement off around migrations, so deliveries' references survive it.
    with op.batch_alter_table("subscribers") as batch:
        batch.alter_column("email_key", existing_type=sa.String(320), nullable=False)


def downgrade() -> None:
    op.drop_index("uq_subscribers_email_key", table_name="subscribers")
    op.drop_column("subscribers", "email_key")
