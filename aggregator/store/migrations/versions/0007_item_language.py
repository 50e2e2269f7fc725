"""Mark stored Korean items ``ko``: items stored before languages were detected.

normalize now gives each new item a language (Korean when most of its
letters are Hangul). An unchanged item is never written again, so without
this its missing language would stay missing: the email, pages and feeds
would keep reading its Hangul with the site's English voice. The rule is
repeated here, not imported, so this migration means the same thing forever.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 1000
_SAMPLE = 600  # characters looked at, as normalize does
_HANGUL_SHARE = 0.5


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3
        or 0x1100 <= code <= 0x11FF
        or 0x3130 <= code <= 0x318F
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


def _korean(title: str, text: str) -> bool:
    letters = hangul = 0
    for ch in f"{title} {text[:_SAMPLE]}":
        if ch.isalpha():
            letters += 1
            hangul += _is_hangul(ch)
    return bool(letters) and hangul / letters >= _HANGUL_SHARE


def upgrade() -> None:
    conn = op.get_bind()
    items = sa.table(
        "items",
        sa.column("id", sa.Integer),
        sa.column("title", sa.Text),
        sa.column("text", sa.Text),
        sa.column("language", sa.String(16)),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(items.c.id, items.c.title, items.c.text)
            .where(items.c.language.is_(None), items.c.id > last)
            .order_by(items.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        korean = [r.id for r in rows if _korean(r.title or "", r.text or "")]
        if korean:
            conn.execute(sa.update(items).where(items.c.id.in_(korean)).values(language="ko"))


def downgrade() -> None:
    # Which languages were filled in here is not recorded; they are correct either way.
    pass
