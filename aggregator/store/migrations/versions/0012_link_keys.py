"""items: canonical link keys start with their host's digest (``link_key``).

``canonical_url_hash`` was the sha256 of the link, so each new item's entry
in ``ix_items_canonical_url_hash`` went to a random leaf page. Past the page
cache (10,000 feeds, ~400,000 items) every such page was read back, written
to the WAL and copied again by the checkpoint, and the store's cost per item
grew with the table. ``link_key`` keeps the key's length and the link's own
digest but puts 8 hex digits of the host first, so a source's new entries
share leaf pages. Stored keys are rewritten in Python (the same function the
store uses, as 0003 did) with the index dropped, then the index is built once.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from aggregator.store.schema import link_key, text_key

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Rows read and rewritten per round trip.
_BATCH = 2000

_items = sa.table(
    "items",
    sa.column("id", sa.Integer),
    sa.column("canonical_url", sa.Text),
    sa.column("canonical_url_hash", sa.String),
)


def _rekey(key: Callable[[str], str]) -> None:
    conn = op.get_bind()
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(_items.c.id, _items.c.canonical_url)
            .where(_items.c.id > last_id)
            .order_by(_items.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        conn.execute(
            sa.update(_items)
            .where(_items.c.id == sa.bindparam("row_id"))
            .values(canonical_url_hash=sa.bindparam("new_key")),
            [{"row_id": row.id, "new_key": key(row.canonical_url)} for row in rows],
        )
        last_id = rows[-1].id


def _rebuild(key: Callable[[str], str]) -> None:
    op.drop_index("ix_items_canonical_url_hash", table_name="items")
    _rekey(key)
    op.create_index("ix_items_canonical_url_hash", "items", ["canonical_url_hash"])


def upgrade() -> None:
    _rebuild(link_key)


def downgrade() -> None:
    _rebuild(text_key)
