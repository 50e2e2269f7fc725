"""The request context every route module shares, and the path convertor its routes use.

It sits one floor below :mod:`aggregator.web.app` and the route modules
(``feeds``, ``pages``, ``archive``, ``subscribe``, ``health``): they import it,
it imports none of them, so imports only go down. ``app`` re-exports these
names for code that imported them from there.

Numeric path parameters use the ``rowid`` convertor: only 0 to
:data:`ROW_ID_MAX` match, so every value that reaches the database fits its
id column on every backend; anything larger (or negative, or not ASCII
digits) does not match the route and is a 404, instead of overflowing in the
database (a 500). Importing this module registers it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.convertors import Convertor, register_url_convertor

from ..config import Config
from ..errors import ConfigError
from ..store import Store
from .ratelimit import RateLimiter

__all__ = [
    "ROW_ID_MAX",
    "SECRET_ENV",
    "RowIdConvertor",
    "WebContext",
    "digits_up_to",
    "load_secret",
]

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
    # Every limiter the routes keep, by name, so tests and diagnostics can read them.
    rate_limiters: dict[str, RateLimiter] = field(default_factory=dict)


ROW_ID_MAX = 2**31 - 1
"""The largest id every backend stores: ids are ``INTEGER``, 32-bit on PostgreSQL."""


def digits_up_to(limit: int) -> str:
    """A regex matching exactly the decimal numbers 0..``limit`` (no sign, ASCII digits).

    Built digit by digit from ``limit``: shorter numbers, then for each
    position a smaller digit followed by anything, then ``limit`` itself.
    """
    text = str(limit)
    options = [f"[0-9]{{1,{len(text) - 1}}}"] if len(text) > 1 else []
    for i, digit in enumerate(text):
        if digit != "0":
            low = "1" if i == 0 and len(text) > 1 else "0"
            if int(digit) - 1 >= int(low):
                rest = len(text) - i - 1
                tail = f"[0-9]{{{rest}}}" if rest else ""
                options.append(f"{text[:i]}[{low}-{int(digit) - 1}]{tail}")
    options.append(text)
    return "(?:" + "|".join(options) + ")"


class RowIdConvertor(Convertor[int]):
    """``{name:rowid}``: a database id; only values up to :data:`ROW_ID_MAX` match.

    The bound is in the pattern, not in ``convert`` (an exception there would
    be a 500): a number that cannot be an id does not match the route at all.
    """

    regex = digits_up_to(ROW_ID_MAX)

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        if not 0 <= value <= ROW_ID_MAX:
            raise ValueError(f"{value} is out of range for a row id")
        return str(value)


register_url_convertor("rowid", RowIdConvertor())
