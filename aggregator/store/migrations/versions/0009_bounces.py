"""Bounces, complaints and the suppression list.

- ``bounce_events``: one row per bounce or complaint report, unique by the
  report's key, so a mailbox processed twice counts nothing twice.
- ``suppressions``: addresses never mailed again (hard bounce, complaint)
  until an admin lifts it, kept by address so re-importing does not undo it.
- subscribers may now have the status ``bounced`` (a plain string column: no
  schema change needed for it).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aggregator.store.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("subscriber_id", sa.Integer),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(8), nullable=False),
        sa.Column("digest_id", sa.Integer),
        sa.Column("diagnostic", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bounce_events"),
        sa.UniqueConstraint("key", name="uq_bounce_events_key"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_bounce_events_subscriber_id_subscribers",
        ),
        sa.ForeignKeyConstraint(
            ["digest_id"], ["digests.id"], name="fk_bounce_events_digest_id_digests"
        ),
    )
    op.create_index("ix_bounce_events_subscriber_id", "bounce_events", ["subscriber_id"])
    op.create_table(
        "suppressions",
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("email", name="pk_suppressions"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("ix_bounce_events_subscriber_id", table_name="bounce_events")
    op.drop_table("bounce_events")
