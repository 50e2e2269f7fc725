"""Column types shared by the schema and the migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    SQLite has no time zone type and silently drops offsets, so values are
    converted to UTC and stored naive there; PostgreSQL gets ``timestamptz``.
    Naive datetimes are refused: a naive value is a bug upstream.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"naive or invalid datetime {value!r} cannot be stored")
        # Most values are UTC already (normalize makes them so): skip the conversion.
        moment = value if value.tzinfo is UTC else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return moment.replace(tzinfo=None)
        return moment

    @staticmethod
    def sqlite_text(value: Any) -> str | None:
        """What this type binds on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), in one call.

        SQLAlchemy stacks two processors for it (this decorator's, then
        SQLite's DATETIME formatting through a dict and ``%``); the ingest
        binds three timestamps per item, and that was a sixth of the store's
        Python CPU. Same checks and the same text, to the character
        (``tests/test_store_hotpath.py`` compares the two on generated values).
        """
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"naive or invalid datetime {value!r} cannot be stored")
        moment = value if value.tzinfo is UTC else value.astimezone(UTC)
        return moment.replace(tzinfo=None).isoformat(" ", "microseconds")

    @staticmethod
    def sqlite_value(value: Any) -> datetime | None:
        """What a SQLite timestamp column reads back as: :meth:`sqlite_text` undone.

        SQLAlchemy parses SQLite's text with its DATETIME regex, then this
        type marks it UTC; ``fromisoformat`` reads the same text to the same
        value (``tests/test_store_hotpath.py``).
        """
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"unexpected value {value!r} in a timestamp column")
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise ValueError(f"unexpected value {value!r} in a timestamp column")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
