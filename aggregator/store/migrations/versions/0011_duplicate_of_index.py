"""items: index ``duplicate_of`` (only the rows that have one).

When a better copy of a story arrives, every copy marked a duplicate of the
old original is repointed at the new one (``store.copies.take_over``).
Without an index that UPDATE scanned the whole table: on the 500-feed
benchmark corpus the takeovers alone cost 1.6 s of the 5 s store write, and
the cost grows with the table. Originals (NULL) are left out of the index.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_WHERE = sa.text("duplicate_of IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_items_duplicate_of",
        "items",
        ["duplicate_of"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_items_duplicate_of", table_name="items")
