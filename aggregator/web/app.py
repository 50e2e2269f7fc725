"""App assembly and the shared context handed to every route module."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute

from ..config import Config
from ..errors import ConfigError
from ..store import Store

SECRET_ENV = "AGGREGATOR_SECRET"


def load_secret(*, required: bool = True) -> str:
    """The HMAC secret for confirm/unsubscribe tokens, from the environment.

    Never from feeds.yaml or the repo. ``required=False`` (tests, the demo)
    makes a random per-process secret instead, which invalidates links at
    restart: acceptable there, never in production.
    """
    value = os.environ.get(SECRET_ENV, "")
    if value:
        if len(value) < 16:
            raise ConfigError(f"{SECRET_ENV} must be at least 16 characters long")
        return value
    if required:
        raise ConfigError(
            f"{SECRET_ENV} is not set: export a long random value "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return secrets.token_urlsafe(32)


@dataclass
class WebContext:
    """What route handlers need; mutable so a config reload can swap ``config``."""

    config: Config
    store: Store
    secret: str
    # Filled by the running service: extra health facts (scheduler running...).
    health_checks: dict[str, Callable[[], Any]] = field(default_factory=dict)
    metrics_text: Callable[[], str] | None = None


def create_app(ctx: WebContext) -> Starlette:
    """Build the ASGI app from every route module."""
    from . import feeds, pages

    routes: list[BaseRoute] = []
    routes += feeds.routes(ctx)
    routes += pages.routes(ctx)
    for name in ("archive", "subscribe", "health"):
        module = _optional(name)
        if module is not None:
            routes += module.routes(ctx)
    app = Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=500)])
    app.state.ctx = ctx
    return app


def _optional(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.{name}":
            return None
        raise
