"""Subscriber preferences: which sections of the digest, and in which language.

- ``subscribers.sections``: a JSON list of section ids; NULL means every
  section (including sections added to feeds.yaml later), an empty list none.
- ``subscribers.language``: ``en`` or ``ko``; NULL means the site's language.

- ``deliveries.variant``: those preferences as they were when the ledger
  row was written (the issue's first send), so a resend after a kill sends
  the same edition; NULL is the whole issue in the site's language.

The columns are nullable and NULL keeps the old behaviour, so existing
subscribers keep getting the whole digest in the site's language.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN (SQLite 3.35+ has both): a batch copy of
    # ``subscribers`` would have to drop a table other tables point at.
    op.add_column("subscribers", sa.Column("sections", sa.Text))
    op.add_column("subscribers", sa.Column("language", sa.String(16)))
    op.add_column("deliveries", sa.Column("variant", sa.Text))


def downgrade() -> None:
    op.drop_column("deliveries", "variant")
    op.drop_column("subscribers", "language")
    op.drop_column("subscribers", "sections")
