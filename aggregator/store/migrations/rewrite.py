"""Columns computed in Python, rewritten on every row: for the migrations that need it.

A key made by the store's own code (``text_key``, ``link_key``) cannot be
computed in SQL the same way on both dialects, so such a migration reads the
rows and writes the new values back, a batch per round trip, keyed on
``id`` so each batch starts where the last ended (no OFFSET scan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op


def rewrite_rows(
    table: sa.TableClause,
    read: Sequence[str],
    write: Mapping[str, Callable[[Any], str]],
    *,
    batch: int,
) -> None:
    """Set each column of ``write`` to its function of the row's ``read`` columns, on every row.

    ``table`` must have an integer ``id``; the functions get a row with
    ``id`` and the ``read`` columns as attributes.
    """
    conn = op.get_bind()
    ids = table.c.id
    query = sa.select(ids, *(table.c[name] for name in read)).order_by(ids).limit(batch)
    # A bound name may not be a column's own name in an UPDATE's SET.
    update = (
        sa.update(table)
        .where(ids == sa.bindparam("row_id"))
        .values({name: sa.bindparam(f"new_{name}") for name in write})
    )
    last_id = 0
    while True:
        rows = conn.execute(query.where(ids > last_id)).all()
        if not rows:
            return
        conn.execute(
            update,
            [
                {"row_id": row.id, **{f"new_{name}": make(row) for name, make in write.items()}}
                for row in rows
            ],
        )
        last_id = rows[-1].id
