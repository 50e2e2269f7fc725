"""Bounces, complaints and the suppression list, as rows.

The rules of list hygiene live here, in one transaction per report, so two
processes reading the same mailbox cannot both count a bounce:

- a report is recorded once (``bounce_events.key`` is unique);
- a hard bounce marks the subscriber ``bounced`` and suppresses the address;
- a complaint unsubscribes at once and suppresses the address;
- soft bounces in ``soft_limit`` different issues among the last
  ``soft_window_issues`` digests count as a hard bounce;
- a report about an address we never mailed is ignored (a forged or stray
  report must not be able to unsubscribe anyone).

Suppressed addresses get no ledger row for a new digest and cannot confirm
again, until :meth:`BouncesMixin.unsuppress` lifts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, distinct, func, select, update

from ..models import BounceEvent, BounceKind, BounceOutcome, DeliveryStatus, SubscriberStatus
from . import schema
from .base import StoreBase
from .schema import text_key

__all__ = ["BouncesMixin", "DeliveryRef", "IssueBounces", "Suppression"]

_b = schema.bounce_events
_x = schema.suppressions
_s = schema.subscribers
_d = schema.deliveries


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """Which digest went to which subscriber: what a bounce report is matched to."""

    digest_id: int
    subscriber_id: int
    email: str


@dataclass(frozen=True, slots=True)
class Suppression:
    email: str
    reason: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IssueBounces:
    """One digest's sent count and what came back about it."""

    digest_id: int
    sent: int
    hard: int
    soft: int
    complaints: int


class BouncesMixin(StoreBase):
    """Bounce and suppression operations of :class:`aggregator.store.Store`."""

    # ------------------------------------------------------------ matching reports

    def delivery_by_message_id(self, message_id: str) -> DeliveryRef | None:
        """The delivery whose message carried this Message-ID (with or without ``<>``)."""
        wanted = message_id.strip()
        if not wanted.startswith("<"):
            wanted = f"<{wanted}>"
        query = (
            select(_d.c.digest_id, _d.c.subscriber_id, _s.c.email)
            .join(_s, _s.c.id == _d.c.subscriber_id)
            .where(_d.c.message_id == wanted)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DeliveryRef(row.digest_id, row.subscriber_id, row.email) if row else None

    def delivery_ref(self, digest_id: int, subscriber_id: int) -> DeliveryRef | None:
        """The ledger row of (digest, subscriber), if that delivery exists."""
        query = (
            select(_d.c.digest_id, _d.c.subscriber_id, _s.c.email)
            .join(_s, _s.c.id == _d.c.subscriber_id)
            .where(_d.c.digest_id == digest_id, _d.c.subscriber_id == subscriber_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DeliveryRef(row.digest_id, row.subscriber_id, row.email) if row else None

    def last_delivery_to(self, email: str) -> DeliveryRef | None:
        """The newest digest actually sent to ``email``; None if we never mailed it."""
        query = (
            select(_d.c.digest_id, _d.c.subscriber_id, _s.c.email)
            .join(_s, _s.c.id == _d.c.subscriber_id)
            .where(
                func.lower(_s.c.email) == email.strip().lower(),
                # Only mail the relay accepted can bounce later.
                _d.c.status == DeliveryStatus.SENT.value,
            )
            .order_by(_d.c.digest_id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DeliveryRef(row.digest_id, row.subscriber_id, row.email) if row else None

    # ------------------------------------------------------------------ recording

    def record_bounce(
        self, event: BounceEvent, *, now: datetime, soft_limit: int = 3, soft_window: int = 5
    ) -> BounceOutcome:
        """Record one bounce or complaint and apply its consequence (see the module doc)."""
        with self.transaction() as conn:
            if event.subscriber_id is not None:
                row = conn.execute(
                    select(_s.c.id, _s.c.email, _s.c.status).where(_s.c.id == event.subscriber_id)
                ).first()
            else:
                row = conn.execute(
                    select(_s.c.id, _s.c.email, _s.c.status).where(
                        func.lower(_s.c.email) == event.email.lower()
                    )
                ).first()
            if row is None:
                return BounceOutcome("unknown", email=event.email)
            inserted = conn.execute(
                self._insert(_b)
                .values(
                    key=text_key(event.key),
                    subscriber_id=row.id,
                    email=row.email,
                    kind=event.kind.value,
                    origin=event.origin,
                    digest_id=event.digest_id,
                    diagnostic=event.diagnostic[:1000],
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(_b.c.id)
            ).first()
            if inserted is None:
                return BounceOutcome("duplicate", row.id, row.email)
            if event.kind is BounceKind.COMPLAINT:
                self._suppress(conn, row.email, "complaint (marked as spam)", now)
                if row.status != SubscriberStatus.UNSUBSCRIBED.value:
                    conn.execute(
                        update(_s)
                        .where(_s.c.id == row.id)
                        .values(status=SubscriberStatus.UNSUBSCRIBED.value, unsubscribed_at=now)
                    )
                self._cancel_unsent(conn, row.id, now, "complaint")
                return BounceOutcome("unsubscribed", row.id, row.email)
            if event.kind is BounceKind.SOFT:
                issues = self._soft_issues(conn, row.id, soft_window)
                if issues < soft_limit:
                    return BounceOutcome("counted", row.id, row.email)
                reason = f"{issues} soft bounces in the last {soft_window} issues"
            else:
                reason = f"hard bounce: {event.diagnostic}".strip().rstrip(":")[:300]
            self._suppress(conn, row.email, reason, now)
            if row.status in (SubscriberStatus.ACTIVE.value, SubscriberStatus.PENDING.value):
                conn.execute(
                    update(_s)
                    .where(_s.c.id == row.id)
                    .values(status=SubscriberStatus.BOUNCED.value)
                )
            self._cancel_unsent(conn, row.id, now, "bounced")
            return BounceOutcome("bounced", row.id, row.email)

    @staticmethod
    def _soft_issues(conn: Connection, subscriber_id: int, window: int) -> int:
        """In how many of the last ``window`` digests this subscriber soft-bounced."""
        # Fetched first: a LIMIT inside "IN (SELECT ...)" is not portable.
        recent_ids = list(
            conn.execute(
                select(schema.digests.c.id).order_by(schema.digests.c.id.desc()).limit(window)
            ).scalars()
        )
        return int(
            conn.execute(
                select(func.count(distinct(_b.c.digest_id))).where(
                    _b.c.subscriber_id == subscriber_id,
                    _b.c.kind == BounceKind.SOFT.value,
                    _b.c.digest_id.in_(recent_ids),
                )
            ).scalar_one()
        )

    @staticmethod
    def _cancel_unsent(conn: Connection, subscriber_id: int, now: datetime, why: str) -> None:
        conn.execute(
            update(_d)
            .where(_d.c.subscriber_id == subscriber_id, _d.c.status == DeliveryStatus.PENDING)
            .values(
                status=DeliveryStatus.FAILED.value,
                last_error=f"{why} before sending",
                updated_at=now,
            )
        )

    def _suppress(self, conn: Connection, email: str, reason: str, now: datetime) -> None:
        conn.execute(
            self._insert(_x)
            .values(email=email.lower(), reason=reason, created_at=now)
            .on_conflict_do_nothing(index_elements=["email"])
        )

    # ---------------------------------------------------------------- suppression

    def suppress(self, email: str, reason: str, *, now: datetime) -> None:
        """Put an address on the suppression list by hand (kept if already there)."""
        with self.transaction() as conn:
            self._suppress(conn, email, reason, now)

    def is_suppressed(self, email: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(_x.c.email).where(_x.c.email == email.lower())).first()
        return found is not None

    def suppressions(self) -> list[Suppression]:
        """The suppression list, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_x).order_by(_x.c.created_at, _x.c.email)).all()
        return [Suppression(r.email, r.reason, r.created_at) for r in rows]

    def unsuppress(self, email: str) -> bool:
        """Lift a suppression: the address may be mailed again; False if it was not listed.

        A subscriber marked ``bounced`` becomes ``active`` again (the admin
        vouches that the mailbox works now); one who complained stays
        unsubscribed and may subscribe again through the form.
        """
        with self.transaction() as conn:
            removed = conn.execute(delete(_x).where(_x.c.email == email.lower())).rowcount
            conn.execute(
                update(_s)
                .where(
                    func.lower(_s.c.email) == email.lower(),
                    _s.c.status == SubscriberStatus.BOUNCED.value,
                )
                .values(status=SubscriberStatus.ACTIVE.value)
            )
        return bool(removed)

    # -------------------------------------------------------------------- reports

    def bounce_counts(self) -> dict[BounceKind, int]:
        """All bounces and complaints recorded, by kind."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_b.c.kind, func.count()).group_by(_b.c.kind)).all()
        counts = dict.fromkeys(BounceKind, 0)
        for kind, count in rows:
            counts[BounceKind(kind)] = int(count)
        return counts

    def subscriber_bounce_counts(self) -> dict[int, dict[BounceKind, int]]:
        """Per subscriber id, how many bounces and complaints of each kind."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_b.c.subscriber_id, _b.c.kind, func.count())
                .where(_b.c.subscriber_id.is_not(None))
                .group_by(_b.c.subscriber_id, _b.c.kind)
            ).all()
        out: dict[int, dict[BounceKind, int]] = {}
        for subscriber_id, kind, count in rows:
            out.setdefault(subscriber_id, dict.fromkeys(BounceKind, 0))[BounceKind(kind)] = count
        return out

    def issue_bounces(self, limit: int = 10) -> list[IssueBounces]:
        """The last ``limit`` digests: sent count and bounces/complaints per kind."""
        with self.engine.connect() as conn:
            ids = list(
                conn.execute(
                    select(schema.digests.c.id).order_by(schema.digests.c.id.desc()).limit(limit)
                ).scalars()
            )
            sent: dict[int, int] = dict(
                conn.execute(
                    select(_d.c.digest_id, func.count())
                    .where(_d.c.digest_id.in_(ids), _d.c.status == DeliveryStatus.SENT.value)
                    .group_by(_d.c.digest_id)
                ).all()
            )
            kinds: dict[tuple[int, str], int] = {
                (d, k): c
                for d, k, c in conn.execute(
                    select(_b.c.digest_id, _b.c.kind, func.count(distinct(_b.c.subscriber_id)))
                    .where(_b.c.digest_id.in_(ids))
                    .group_by(_b.c.digest_id, _b.c.kind)
                ).all()
            }
        return [
            IssueBounces(
                digest_id=i,
                sent=int(sent.get(i, 0)),
                hard=kinds.get((i, BounceKind.HARD.value), 0),
                soft=kinds.get((i, BounceKind.SOFT.value), 0),
                complaints=kinds.get((i, BounceKind.COMPLAINT.value), 0),
            )
            for i in ids
        ]
