"""Sliding-window rate limits, in memory, with a bounded number of keys.

Used by the subscribe form twice: per client address (how often one client may
post) and per mailbox (how many confirmation mails one address may receive,
whoever asks). Both live in the web process; with several web processes each
keeps its own counts, so the bound multiplies by the number of processes.
"""

from __future__ import annotations

import time
from collections import deque

__all__ = ["MAX_KEYS", "RateLimiter"]

MAX_KEYS = 100_000
"""Most keys one limiter remembers; past it, a new key is refused (fail closed).

Forgetting old keys instead would let a flood of fresh keys wipe the count of
the one under attack; refusing newcomers only while the table is full of
recently active keys keeps every bound, and costs at most a few tens of MB.
"""


class RateLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float, *, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Count one hit; None if allowed, else seconds until ``key`` may hit again."""
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._forget_idle(now)
            if len(self._hits) >= self.max_keys:
                return self.window
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def snapshot(self) -> dict[str, int]:
        """The number of hits held per key (for tests and diagnostics)."""
        return {key: len(hits) for key, hits in self._hits.items() if hits}

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
