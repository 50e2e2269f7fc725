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

from aggregator.store.migrations.rewrite import rewrite_rows
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


def _rebuild(key: Callable[[str], str]) -> None:
    op.drop_index("ix_items_canonical_url_hash", table_name="items")
    rewrite_rows(
        _items,
        ("canonical_url",),
        {"canonical_url_hash": lambda row: key(row.canonical_url)},
        batch=_BATCH,
    )
    op.create_index("ix_items_canonical_url_hash", "items", ["canonical_url_hash"])


def upgrade() -> None:
    _rebuild(link_key)


def downgrade() -> None:
    _rebuild(text_key)
