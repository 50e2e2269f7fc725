"""The delivery ledger: one row per (digest, subscriber), the record behind "exactly once".

A row moves ``pending`` → ``sending`` (claimed with a lease) → ``sent``, or
back to ``pending`` after a temporary failure, or to ``failed``. Claiming is
one atomic ``UPDATE ... RETURNING`` over a sub-select of claimable rows:

- on PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED``, so concurrent
  senders (processes or machines) each get disjoint rows without waiting;
- on SQLite the ``UPDATE`` holds the database write lock while it re-reads the
  candidates, so a second sender sees rows already taken as ``sending``.

A row is claimable when it is ``pending`` and was last touched before the
caller's pass began (a row released during a pass waits for the next one, so a
temporary failure is not retried in a tight loop), or when it is ``sending``
and its lease has expired (its sender died). Every later write names the lease
owner, so a sender whose lease was taken over can never mark the row again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, bindparam, cast, func, literal, or_, select, update

from ..models import DeliveryStatus, SubscriberStatus
from . import schema
from .base import StoreBase
from .subscribers import sections_from_column

__all__ = ["ClaimedDelivery", "DeliveriesMixin", "DeliveryRecord", "parse_variant", "variant_key"]

# Between the sections part and the language of a variant key. A language
# code never holds it, so the key splits at its last occurrence.
_VARIANT_SEPARATOR = "|"
_ALL_SECTIONS = "*"


def variant_key(sections_column: str | None, language: str | None) -> str:
    """The ledger's ``variant`` for a subscriber's stored preferences (as SQL does it).

    ``<sections column or *>|<language or nothing>``: the subscribers
    columns copied, so the variant is exactly what they chose at first send.
    """
    return f"{sections_column or _ALL_SECTIONS}{_VARIANT_SEPARATOR}{language or ''}"


def parse_variant(key: str | None) -> tuple[tuple[str, ...] | None, str | None]:
    """``(sections, language)`` from a ledger ``variant`` (None, None for NULL: the full issue)."""
    if not key:
        return None, None
    sections_part, _, language = key.rpartition(_VARIANT_SEPARATOR)
    sections = None if sections_part in ("", _ALL_SECTIONS) else sections_from_column(sections_part)
    return sections, language or None


_d = schema.deliveries


def _mark_sent(which: Any) -> Any:
    """``sending`` rows chosen by ``which`` and still held by ``owner`` become ``sent``."""
    return (
        update(_d)
        .where(
            which,
            _d.c.lease_owner == bindparam("owner"),
            _d.c.status == DeliveryStatus.SENDING.value,
        )
        .values(
            status=DeliveryStatus.SENT.value,
            sent_at=bindparam("now", type_=_d.c.sent_at.type),
            lease_until=None,
            last_error=None,
            updated_at=bindparam("now", type_=_d.c.updated_at.type),
        )
    )


# Built once: mark_sent runs once per message sent, and constructing the
# statement each time cost more CPU than executing it (SQLAlchemy caches the
# compiled form per statement object).
_MARK_SENT = _mark_sent(_d.c.id == bindparam("delivery_id"))
# The same for several rows at once: the sender commits its marks in small groups.
_MARK_SENT_MANY = _mark_sent(_d.c.id.in_(bindparam("delivery_ids", expanding=True)))
_s = schema.subscribers


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A ledger row a sender holds under its lease, with the recipient's address."""

    id: int
    digest_id: int
    subscriber_id: int
    email: str
    name: str | None
    message_id: str
    attempts: int
    # The edition fixed at first send (see variant_key); None: the whole issue.
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A ledger row as stored (for reports and tests)."""

    id: int
    digest_id: int
    subscriber_id: int
    status: DeliveryStatus
    message_id: str
    attempts: int
    last_error: str | None
    lease_owner: str | None
    lease_until: datetime | None
    sent_at: datetime | None
    variant: str | None = None


def _record(row: Any) -> DeliveryRecord:
    m = row._mapping
    return DeliveryRecord(
        id=m["id"],
        digest_id=m["digest_id"],
        subscriber_id=m["subscriber_id"],
        status=DeliveryStatus(m["status"]),
        message_id=m["message_id"],
        attempts=m["attempts"],
        last_error=m["last_error"],
        lease_owner=m["lease_owner"],
        lease_until=m["lease_until"],
        sent_at=m["sent_at"],
        variant=m["variant"],
    )


class DeliveriesMixin(StoreBase):
    """Ledger operations of :class:`aggregator.store.Store`."""

    def create_deliveries(
        self, digest_id: int, *, message_id_tag: str, message_id_domain: str, now: datetime
    ) -> int:
        """Add a pending row for every active subscriber that has none for this digest.

        One ``INSERT ... SELECT`` whatever the number of subscribers; rows that
        exist already (an earlier run, another sender) are left untouched, so
        calling this again is harmless. The Message-ID is fixed here, per
        (digest, subscriber): ``<tag.DIGEST.SUBSCRIBER@domain>``. Returns the
        number of rows added.
        """
        message_id = (
            literal(f"<{message_id_tag}.{digest_id}.", String)
            + cast(_s.c.id, String)
            + literal(f"@{message_id_domain}>", String)
        )
        source = select(
            literal(digest_id).label("digest_id"),
            _s.c.id,
            literal(DeliveryStatus.PENDING.value, String),
            message_id,
            literal(0),
            literal(now, _d.c.updated_at.type),
            # variant_key() in SQL: the preferences as they are at first send.
            func.coalesce(_s.c.sections, literal(_ALL_SECTIONS, String))
            + literal(_VARIANT_SEPARATOR, String)
            + func.coalesce(_s.c.language, literal("", String)),
        ).where(
            _s.c.status == SubscriberStatus.ACTIVE.value,
            # The suppression list wins over any subscriber row (see store/bounces.py).
            func.lower(_s.c.email).not_in(select(schema.suppressions.c.email)),
        )
        statement = (
            self._insert(_d)
            .from_select(
                [
                    "digest_id",
                    "subscriber_id",
                    "status",
                    "message_id",
                    "attempts",
                    "updated_at",
                    "variant",
                ],
                source,
            )
            .on_conflict_do_nothing(index_elements=["digest_id", "subscriber_id"])
            # Counted from the rows returned, not the driver's rowcount: psycopg 3
            # reported -1 for this INSERT once SQLAlchemy had closed the cursor.
            # Both dialects return only the rows inserted, not the ones skipped.
            .returning(_d.c.id)
        )
        with self.transaction() as conn:
            return len(conn.execute(statement).all())

    def claim_deliveries(
        self,
        digest_id: int,
        *,
        owner: str,
        limit: int,
        lease_until: datetime,
        now: datetime,
        pass_started: datetime,
    ) -> list[ClaimedDelivery]:
        """Atomically take up to ``limit`` claimable rows for ``owner`` until ``lease_until``.

        Only rows of subscribers who are active right now are taken. The rows
        come back ordered by id.
        """
        claimable = and_(
            _d.c.digest_id == digest_id,
            or_(
                and_(
                    _d.c.status == DeliveryStatus.PENDING.value,
                    _d.c.updated_at <= pass_started,
                ),
                and_(_d.c.status == DeliveryStatus.SENDING.value, _d.c.lease_until < now),
            ),
        )
        candidates = (
            select(_d.c.id)
            .where(
                claimable,
                _d.c.subscriber_id.in_(
                    select(_s.c.id).where(_s.c.status == SubscriberStatus.ACTIVE.value)
                ),
            )
            .order_by(_d.c.id)
            .limit(limit)
        )
        claim = update(_d).values(
            status=DeliveryStatus.SENDING.value,
            lease_owner=owner,
            lease_until=lease_until,
            updated_at=now,
        )
        with self.transaction() as conn:
            if self.dialect == "postgresql":
                # Lock the ids first, then update exactly those: inside
                # "UPDATE ... WHERE id IN (SELECT ... LIMIT n SKIP LOCKED)" the
                # planner may run the subquery more than once and one claim
                # then takes far more than n rows, starving parallel senders.
                locked = list(conn.execute(candidates.with_for_update(skip_locked=True)).scalars())
                if not locked:
                    return []
                statement = claim.where(_d.c.id.in_(locked), claimable)
            else:
                # SQLite: one statement under the database's single write lock.
                statement = claim.where(_d.c.id.in_(candidates), claimable)
            ids = list(conn.execute(statement.returning(_d.c.id)).scalars())
            if not ids:
                return []
            rows = conn.execute(
                select(
                    _d.c.id,
                    _d.c.digest_id,
                    _d.c.subscriber_id,
                    _d.c.message_id,
                    _d.c.attempts,
                    _d.c.variant,
                    _s.c.email,
                    _s.c.name,
                )
                .join_from(_d, _s, _d.c.subscriber_id == _s.c.id)
                .where(_d.c.id.in_(ids))
                .order_by(_d.c.id)
            ).all()
        return [
            ClaimedDelivery(
                id=r.id,
                digest_id=r.digest_id,
                subscriber_id=r.subscriber_id,
                email=r.email,
                name=r.name,
                message_id=r.message_id,
                attempts=r.attempts,
                variant=r.variant,
            )
            for r in rows
        ]

    def extend_lease(
        self, owner: str, ids: Collection[int], *, lease_until: datetime, now: datetime
    ) -> set[int]:
        """Push the lease of rows still held by ``owner``; returns the ids it still holds."""
        if not ids:
            return set()
        with self.transaction() as conn:
            held = conn.execute(
                update(_d)
                .where(
                    _d.c.id.in_(list(ids)),
                    _d.c.lease_owner == owner,
                    _d.c.status == DeliveryStatus.SENDING.value,
                )
                .values(lease_until=lease_until, updated_at=now)
                .returning(_d.c.id)
            ).scalars()
            return set(held)

    def mark_sent(self, delivery_id: int, *, owner: str, now: datetime) -> bool:
        """Record a message the server accepted; False if ``owner`` no longer held the row."""
        with self.transaction() as conn:
            result = conn.execute(
                _MARK_SENT, {"delivery_id": delivery_id, "owner": owner, "now": now}
            )
        return int(result.rowcount) == 1

    def mark_sent_many(self, delivery_ids: Collection[int], *, owner: str, now: datetime) -> int:
        """Record several accepted messages in one commit; returns how many rows ``owner``
        still held (the others were taken over and are left as they are)."""
        if not delivery_ids:
            return 0
        with self.transaction() as conn:
            result = conn.execute(
                _MARK_SENT_MANY, {"delivery_ids": list(delivery_ids), "owner": owner, "now": now}
            )
        return int(result.rowcount)

    def mark_skipped(self, delivery_id: int, *, owner: str, reason: str, now: datetime) -> bool:
        """Record that this subscriber gets nothing of the issue (their sections are empty).

        Final like ``sent``: a later run never claims the row again, so
        news that arrives afterwards cannot turn into a late copy of this issue.
        """
        with self.transaction() as conn:
            result = conn.execute(
                update(_d)
                .where(
                    _d.c.id == delivery_id,
                    _d.c.lease_owner == owner,
                    _d.c.status == DeliveryStatus.SENDING.value,
                )
                .values(
                    status=DeliveryStatus.SKIPPED.value,
                    lease_until=None,
                    last_error=reason[:1000],
                    updated_at=now,
                )
            )
        return int(result.rowcount) == 1

    def record_delivery_failure(
        self,
        delivery: ClaimedDelivery,
        *,
        owner: str,
        error: str,
        permanent: bool,
        max_attempts: int,
        now: datetime,
    ) -> DeliveryStatus:
        """Count one failed attempt: back to ``pending``, or ``failed`` once a
        permanent refusal has happened ``max_attempts`` times. Returns the new status."""
        attempts = delivery.attempts + 1
        status = (
            DeliveryStatus.FAILED
            if permanent and attempts >= max_attempts
            else DeliveryStatus.PENDING
        )
        with self.transaction() as conn:
            conn.execute(
                update(_d)
                .where(
                    _d.c.id == delivery.id,
                    _d.c.lease_owner == owner,
                    _d.c.status == DeliveryStatus.SENDING.value,
                )
                .values(
                    status=status.value,
                    attempts=attempts,
                    last_error=error[:1000],
                    lease_until=None,
                    updated_at=now,
                )
            )
        return status

    def release_claims(self, owner: str, ids: Collection[int]) -> int:
        """Hand back rows never attempted (the sender is stopping): pending, no attempt counted."""
        if not ids:
            return 0
        with self.transaction() as conn:
            result = conn.execute(
                update(_d)
                .where(
                    _d.c.id.in_(list(ids)),
                    _d.c.lease_owner == owner,
                    _d.c.status == DeliveryStatus.SENDING.value,
                )
                .values(status=DeliveryStatus.PENDING.value, lease_owner=None, lease_until=None)
            )
        return int(result.rowcount)

    def delivery_counts(self, digest_id: int) -> dict[DeliveryStatus, int]:
        """How many ledger rows of this digest are in each status."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_d.c.status, func.count())
                .where(_d.c.digest_id == digest_id)
                .group_by(_d.c.status)
            ).all()
        counts = dict.fromkeys(DeliveryStatus, 0)
        for status, count in rows:
            counts[DeliveryStatus(status)] = count
        return counts

    def deliveries(self, digest_id: int) -> list[DeliveryRecord]:
        """Every ledger row of a digest, by id."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_d).where(_d.c.digest_id == digest_id).order_by(_d.c.id)
            ).all()
        return [_record(r) for r in rows]
