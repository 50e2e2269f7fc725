"""items: index sha256 keys of guid and canonical link instead of the texts.

PostgreSQL's btree refuses an index row over ~2.7 KB, so one entry with a long
incompressible link or guid made the whole source's insert fail. The unique
key becomes (source_id, guid_hash) and the link index moves to
canonical_url_hash; the texts stay, unindexed. Existing rows are backfilled in
Python (the same ``text_key`` the store uses), so both dialects get identical
keys.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aggregator.store.migrations.rewrite import rewrite_rows
from aggregator.store.schema import KEY_HASH_CHARS, text_key

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Rows read and rewritten per round trip during the backfill.
_BACKFILL_BATCH = 1000

_items = sa.table(
    "items",
    sa.column("id", sa.Integer),
    sa.column("guid", sa.Text),
    sa.column("canonical_url", sa.Text),
    sa.column("guid_hash", sa.String),
    sa.column("canonical_url_hash", sa.String),
)


def _backfill() -> None:
    rewrite_rows(
        _items,
        ("guid", "canonical_url"),
        {
            "guid_hash": lambda row: text_key(row.guid),
            "canonical_url_hash": lambda row: text_key(row.canonical_url),
        },
        batch=_BACKFILL_BATCH,
    )


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("guid_hash", sa.String(KEY_HASH_CHARS)))
        batch.add_column(sa.Column("canonical_url_hash", sa.String(KEY_HASH_CHARS)))
    _backfill()
    op.drop_index("ix_items_canonical_url", table_name="items")
    # On SQLite this copies the table (the unique constraint is part of it);
    # Store.migrate turns foreign-key enforcement off around it.
    with op.batch_alter_table("items") as batch:
        batch.alter_column("guid_hash", existing_type=sa.String(KEY_HASH_CHARS), nullable=False)
        batch.alter_column(
            "canonical_url_hash", existing_type=sa.String(KEY_HASH_CHARS), nullable=False
        )
        batch.drop_constraint("uq_items_source_id_guid", type_="unique")
        batch.create_unique_constraint("uq_items_source_id_guid_hash", ["source_id", "guid_hash"])
    op.create_index("ix_items_canonical_url_hash", "items", ["canonical_url_hash"])


def downgrade() -> None:
    op.drop_index("ix_items_canonical_url_hash", table_name="items")
    with op.batch_alter_table("items") as batch:
        batch.drop_constraint("uq_items_source_id_guid_hash", type_="unique")
        batch.create_unique_constraint("uq_items_source_id_guid", ["source_id", "guid"])
        batch.drop_column("canonical_url_hash")
        batch.drop_column("guid_hash")
    op.create_index("ix_items_canonical_url", "items", ["canonical_url"])
