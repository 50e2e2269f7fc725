"""The store's part of the running service: the one-scheduler lock and the next-fetch cap.

On both SQLite and PostgreSQL, with two independent connections as two
``aggregator run`` processes would have.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from aggregator.errors import ServiceError
from aggregator.models import Source, utcnow
from aggregator.store import Store
from aggregator.store.service import acquire_service_lock, cap_next_fetch


def test_only_one_service_holds_a_database(db_url: str) -> None:
    first, second = Store.open(db_url), Store.open(db_url)
    try:
        held = acquire_service_lock(first, holder="pid 111")
        with pytest.raises(ServiceError) as refused:
            acquire_service_lock(second, holder="pid 222")
        assert "another `aggregator run`" in str(refused.value)
        if first.dialect == "sqlite":
            assert "(pid 111)" in str(refused.value)
        # Refused again and again without disturbing the holder.
        with pytest.raises(ServiceError):
            acquire_service_lock(second, holder="pid 222")

        held.release()
        held.release()  # twice is harmless
        taken = acquire_service_lock(second, holder="pid 222")
        with pytest.raises(ServiceError):
            acquire_service_lock(first, holder="pid 111")
        taken.release()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("hours_left", [2, 30, 24 * 6])
def test_next_fetch_is_pulled_back_never_pushed_forward(db_url: str, hours_left: int) -> None:
    store = Store.open(db_url)
    try:
        store.sync_sources([Source(id="a", url="https://a.example.org/feed.xml")])
        now = utcnow()
        later = now + timedelta(hours=hours_left)
        store.record_not_modified("a", fetched_at=now, next_fetch_at=later)

        assert cap_next_fetch(store, "a", now + timedelta(minutes=1))
        state = store.source_state("a")
        assert state is not None and state.next_fetch_at is not None
        assert abs(state.next_fetch_at - (now + timedelta(minutes=1))) < timedelta(seconds=1)

        assert not cap_next_fetch(store, "a", now + timedelta(hours=hours_left + 1))
        again = store.source_state("a")
        assert again is not None and again.next_fetch_at == state.next_fetch_at
        assert not cap_next_fetch(store, "missing", now)
    finally:
        store.close()
