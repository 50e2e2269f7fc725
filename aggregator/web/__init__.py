"""The Starlette web app: feeds, home page, digest archive, subscribe flows, health.

Each concern is a small module exposing ``routes(ctx)``; :func:`create_app`
assembles them around one :class:`WebContext` (config, store, secrets), so a
route never reaches for globals.
"""

from __future__ import annotations

from .app import WebContext, create_app

__all__ = ["WebContext", "create_app"]
