"""Subscriber rows: add, confirm, unsubscribe, list, forget.

The one rule enforced here rather than in callers: an address that
unsubscribed stays unsubscribed until it confirms again through a signed link
(:meth:`SubscribersMixin.confirm_subscriber`). Adding or importing it again
never reactivates it, so nobody is mailed again against their wish.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from ..errors import SubscriberError
from ..models import DeliveryStatus, Subscriber, SubscriberStatus
from . import schema
from .base import StoreBase

_t = schema.subscribers


def _subscriber(row: Any) -> Subscriber:
    m = row._mapping
    return Subscriber(
        id=m["id"],
        email=m["email"],
        status=SubscriberStatus(m["status"]),
        created_at=m["created_at"],
        name=m["name"],
        confirmed_at=m["confirmed_at"],
        unsubscribed_at=m["unsubscribed_at"],
    )


def email_key(email: str) -> str:
    """What makes two addresses one subscriber: the address lower-cased.

    Mail systems treat local parts case-insensitively in practice, so
    ``Dup.Reader@`` and ``dup.reader@`` are one person. Addresses are ASCII
    (non-ASCII local parts are refused, domains are IDNA), so this equals SQL
    ``lower()`` as used by migration 0004.
    """
    return email.lower()


class SubscribersMixin(StoreBase):
    """Subscriber operations of :class:`aggregator.store.Store`.

    Emails arrive here already validated and normalized
    (:func:`aggregator.subscribers.normalize_email`); the store keeps them as
    typed and compares them by :func:`email_key`.
    """

    def add_subscriber(
        self,
        email: str,
        *,
        now: datetime,
        name: str | None = None,
        active: bool = False,
    ) -> tuple[Subscriber, bool]:
        """Add an address, or return the existing row; the flag says whether it was new.

        ``active=True`` (an administrator vouching for the address) activates a
        new or pending subscriber, but never one who unsubscribed. Without it, a
        pending subscriber's expiry window starts again (they are sent a new link).
        """
        status = SubscriberStatus.ACTIVE if active else SubscriberStatus.PENDING
        key = email_key(email)
        with self.transaction() as conn:
            inserted = conn.execute(
                self._insert(_t)
                .values(
                    email=email,
                    email_key=key,
                    name=name,
                    status=status.value,
                    created_at=now,
                    confirmed_at=now if active else None,
                )
                .on_conflict_do_nothing(index_elements=["email_key"])
                .returning(_t.c.id)
            ).first()
            if inserted is None:
                # Signing up again while pending (the web form mails a new link):
                # activated if vouched for, else the confirmation window restarts.
                values: dict[str, Any] = (
                    {"status": SubscriberStatus.ACTIVE.value, "confirmed_at": now}
                    if active
                    else {"created_at": now}
                )
                conn.execute(
                    update(_t)
                    .where(_t.c.email_key == key, _t.c.status == SubscriberStatus.PENDING.value)
                    .values(**values)
                )
            if inserted is None and name:
                conn.execute(
                    update(_t).where(_t.c.email_key == key, _t.c.name.is_(None)).values(name=name)
                )
            row = conn.execute(select(_t).where(_t.c.email_key == key)).one()
        return _subscriber(row), inserted is not None

    def add_subscribers(
        self,
        people: Iterable[tuple[str, str | None]],
        *,
        now: datetime,
        status: SubscriberStatus = SubscriberStatus.PENDING,
    ) -> int:
        """Add many ``(email, name)`` pairs in few statements; returns how many were new.

        Same rules as :meth:`add_subscriber`: existing rows keep their status,
        except that ``ACTIVE`` activates pending ones. ``UNSUBSCRIBED`` (an
        import of someone else's suppression list) adds the addresses as
        unsubscribed and unsubscribes those already here: the safe direction.
        """
        # The first spelling of an address wins, as in add_subscriber.
        by_key: dict[str, tuple[str, str | None]] = {}
        for email, name in people:
            by_key.setdefault(email_key(email), (email, name))
        unique = list(by_key.values())
        added = 0
        with self.transaction() as conn:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                emails = [email_key(email) for email, _ in chunk]
                before = conn.execute(select(func.count()).select_from(_t)).scalar_one()
                conn.execute(
                    self._insert(_t)
                    .values(
                        [
                            {
                                "email": email,
                                "email_key": email_key(email),
                                "name": name,
                                "status": status.value,
                                "created_at": now,
                                "confirmed_at": now if status is SubscriberStatus.ACTIVE else None,
                                "unsubscribed_at": (
                                    now if status is SubscriberStatus.UNSUBSCRIBED else None
                                ),
                            }
                            for email, name in chunk
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["email_key"])
                )
                added += conn.execute(select(func.count()).select_from(_t)).scalar_one() - before
                if status is SubscriberStatus.ACTIVE:
                    conn.execute(
                        update(_t)
                        .where(_t.c.email_key.in_(emails), _t.c.status == SubscriberStatus.PENDING)
                        .values(status=SubscriberStatus.ACTIVE.value, confirmed_at=now)
                    )
                elif status is SubscriberStatus.UNSUBSCRIBED:
                    ids = list(
                        conn.execute(
                            update(_t)
                            .where(
                                _t.c.email_key.in_(emails),
                                _t.c.status != SubscriberStatus.UNSUBSCRIBED,
                            )
                            .values(status=SubscriberStatus.UNSUBSCRIBED.value, unsubscribed_at=now)
                            .returning(_t.c.id)
                        ).scalars()
                    )
                    if ids:
                        self._cancel_pending(conn, ids, now)
        return int(added)

    @staticmethod
    def _cancel_pending(conn: Connection, subscriber_ids: list[int], now: datetime) -> None:
        # A row a sender holds right now ("sending") is left alone: the sender
        # owns it, and the claim query re-checks the status before each batch.
        d = schema.deliveries
        conn.execute(
            update(d)
            .where(d.c.subscriber_id.in_(subscriber_ids), d.c.status == DeliveryStatus.PENDING)
            .values(
                status=DeliveryStatus.FAILED.value,
                last_error="unsubscribed before sending",
                updated_at=now,
            )
        )

    def get_subscriber(self, subscriber_id: int) -> Subscriber | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_t).where(_t.c.id == subscriber_id)).first()
        return _subscriber(row) if row else None

    def subscriber_by_email(self, email: str) -> Subscriber | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_t).where(_t.c.email_key == email_key(email))).first()
        return _subscriber(row) if row else None

    def list_subscribers(self, status: SubscriberStatus | None = None) -> list[Subscriber]:
        """Subscribers in the order they signed up, optionally only one status."""
        query = select(_t).order_by(_t.c.id)
        if status is not None:
            query = query.where(_t.c.status == status.value)
        with self.engine.connect() as conn:
            return [_subscriber(r) for r in conn.execute(query)]

    def count_subscribers(self) -> dict[SubscriberStatus, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_t.c.status, func.count()).group_by(_t.c.status)).all()
        counts = dict.fromkeys(SubscriberStatus, 0)
        for status, count in rows:
            counts[SubscriberStatus(status)] = count
        return counts

    def confirm_subscriber(self, subscriber_id: int, email: str, *, now: datetime) -> Subscriber:
        """Activate a subscriber after a valid confirm link (also one who unsubscribed before).

        Raises :class:`SubscriberError` when no subscriber has this id *and*
        email, so a token can only ever act on the row it was made for.
        """
        with self.transaction() as conn:
            row = _token_row(conn, subscriber_id, email)
            _refuse_suppressed(conn, row.email)
            if row.status != SubscriberStatus.ACTIVE.value:
                conn.execute(
                    update(_t)
                    .where(_t.c.id == subscriber_id)
                    .values(
                        status=SubscriberStatus.ACTIVE.value,
                        confirmed_at=now,
                        unsubscribed_at=None,
                    )
                )
            row = conn.execute(select(_t).where(_t.c.id == subscriber_id)).one()
        return _subscriber(row)

    def unsubscribe_subscriber(
        self, subscriber_id: int, email: str, *, now: datetime
    ) -> Subscriber:
        """Unsubscribe at once; unsent ledger rows for this subscriber are cancelled.

        Idempotent: unsubscribing twice keeps the first time. Raises
        :class:`SubscriberError` when no subscriber has this id and email.
        """
        with self.transaction() as conn:
            row = _token_row(conn, subscriber_id, email)
            if row.status != SubscriberStatus.UNSUBSCRIBED.value:
                conn.execute(
                    update(_t)
                    .where(_t.c.id == subscriber_id)
                    .values(status=SubscriberStatus.UNSUBSCRIBED.value, unsubscribed_at=now)
                )
            self._cancel_pending(conn, [subscriber_id], now)
            row = conn.execute(select(_t).where(_t.c.id == subscriber_id)).one()
        return _subscriber(row)

    def unsubscribe_email(self, email: str, *, now: datetime) -> Subscriber | None:
        """Unsubscribe by address (the CLI's ``remove``); None if the address is unknown."""
        found = self.subscriber_by_email(email)
        if found is None:
            return None
        return self.unsubscribe_subscriber(found.id, found.email, now=now)

    def forget_subscriber(self, email: str) -> bool:
        """Delete an address and its delivery history (erasure on request).

        Unlike unsubscribing this leaves no trace, so a later import can add
        the address again. Returns False when the address is unknown.
        """
        with self.transaction() as conn:
            sid = conn.execute(select(_t.c.id).where(_t.c.email_key == email_key(email))).scalar()
            if sid is None:
                return False
            conn.execute(delete(schema.deliveries).where(schema.deliveries.c.subscriber_id == sid))
            b = schema.bounce_events
            conn.execute(delete(b).where(b.c.subscriber_id == sid))
            conn.execute(delete(_t).where(_t.c.id == sid))
        return True

    def expire_pending(self, *, added_before: datetime) -> list[str]:
        """Delete pending subscribers added before ``added_before``; their addresses.

        They never confirmed, so there is no consent to keep their address on
        (and a confirm link that old has expired anyway). Their ledger rows go
        too; a pending subscriber normally has none.
        """
        with self.transaction() as conn:
            rows = conn.execute(
                select(_t.c.id, _t.c.email).where(
                    _t.c.status == SubscriberStatus.PENDING.value, _t.c.created_at < added_before
                )
            ).all()
            ids = [row.id for row in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                d = schema.deliveries
                conn.execute(delete(d).where(d.c.subscriber_id.in_(chunk)))
                conn.execute(
                    delete(_t).where(
                        _t.c.id.in_(chunk), _t.c.status == SubscriberStatus.PENDING.value
                    )
                )
        return [row.email for row in rows]

    def restart_confirm_window(self, subscriber_ids: Iterable[int], *, now: datetime) -> None:
        """A confirmation link was just (re)sent: the expiry clock starts again from ``now``."""
        ids = list(subscriber_ids)
        with self.transaction() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(
                    update(_t)
                    .where(
                        _t.c.id.in_(ids[start : start + 500]),
                        _t.c.status == SubscriberStatus.PENDING.value,
                    )
                    .values(created_at=now)
                )

    def existing_emails(self, emails: Iterable[str]) -> set[str]:
        """Which of these addresses are already stored (any status, any letter case)."""
        given = list(dict.fromkeys(emails))
        keys = list(dict.fromkeys(email_key(e) for e in given))
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                found.update(
                    conn.execute(select(_t.c.email_key).where(_t.c.email_key.in_(chunk))).scalars()
                )
        return {e for e in given if email_key(e) in found}


def _refuse_suppressed(conn: Connection, email: str) -> None:
    """A hard-bounced or complaining address never comes back by a link: only an admin lifts it."""
    x = schema.suppressions
    if conn.execute(select(x.c.email).where(x.c.email == email.lower())).first() is not None:
        raise SubscriberError(
            "this address cannot be subscribed: mail to it bounced or was reported as spam "
            "(an administrator can lift this with: aggregator subscribers unsuppress EMAIL)"
        )


def _token_row(conn: Connection, subscriber_id: int, email: str) -> Row[Any]:
    """The row a signed link was made for: its id *and* its address must match."""
    row = conn.execute(
        select(_t).where(_t.c.id == subscriber_id, _t.c.email_key == email_key(email))
    ).first()
    if row is None:
        raise SubscriberError("no such subscription")
    return row
