"""This database's installation id: random, minted once, never changed.

Every Message-ID carries it, so two installations that share
``AGGREGATOR_SECRET``, or one installation after its database was reset,
never mint the same Message-ID for different messages (Gmail drops a
message whose Message-ID it has already seen). It lives in the database,
not the environment, because the database is what numbers digests and
subscribers: a new database starts those numbers again, and gets a new id.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select

from . import schema
from .base import StoreBase

__all__ = ["InstallationMixin"]

_ROW = 1  # the table has exactly one row


class InstallationMixin(StoreBase):
    """The installation id of :class:`aggregator.store.Store`."""

    _install_id: str | None = None

    def install_id(self) -> str:
        """The random id of this database (16 hex digits), created by the migration.

        A database whose row went missing gets a new id here; concurrent
        callers agree on one (the insert does nothing when a row exists).
        """
        if self._install_id is not None:
            return self._install_id
        t = schema.installation
        with self.transaction() as conn:
            found = conn.execute(select(t.c.install_id).where(t.c.id == _ROW)).scalar()
            if found is None:
                conn.execute(
                    self._insert(t)
                    .values(id=_ROW, install_id=secrets.token_hex(8))
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                found = conn.execute(select(t.c.install_id).where(t.c.id == _ROW)).scalar_one()
        self._install_id = str(found)
        return self._install_id
