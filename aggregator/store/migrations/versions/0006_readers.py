"""What readers see: which copy of a story is kept, its stable feed id, the install id.

- ``sources.priority``: feeds.yaml's per-source ``priority``, so the store can
  pick the best copy of a story without the config at hand.
- ``items.story_source_id`` / ``items.story_guid``: the (source, guid) whose
  feed id readers know for this story. Set when a better copy takes over from
  an earlier one, so the Atom/JSON Feed id does not change; NULL means the
  item's own (source_id, guid).
- ``installation``: one row with a random id minted on first migrate, part of
  every Message-ID, so two databases never mint the same one.

Revision ID: 0006
Revises: 0003
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("story_source_id", sa.String(64)))
        batch.add_column(sa.Column("story_guid", sa.Text))
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("install_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_installation"),
    )
    op.bulk_insert(installation, [{"id": 1, "install_id": secrets.token_hex(8)}])


def downgrade() -> None:
    op.drop_table("installation")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("story_guid")
        batch.drop_column("story_source_id")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("priority")
