"""Process metrics in the Prometheus text exposition format.

A dozen counters and one histogram do not justify a client library: this
module keeps them in memory (one process owns the scheduler, see DESIGN.md)
and renders ``/metrics`` on demand. Names follow Prometheus conventions
(``_total`` for counters, base units in seconds).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .models import IngestOutcome, IngestStats

# Fetch latency buckets (seconds): most feeds answer in well under a second,
# scraped listings and slow hosts take a few, the timeout caps the tail.
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(key)} {_number(value)}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for bound, n in zip(self.buckets, self.counts, strict=True):
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {n}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_number(self.total)}"
        yield f"{self.name}_count {self.count}"


@dataclass
class Gauge:
    name: str
    help: str
    read: Callable[[], float | None]

    def render(self) -> Iterable[str]:
        value = self.read()
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        if value is not None:
            yield f"{self.name} {_number(value)}"


class Metrics:
    """The service's metrics; thread-safe because store work runs in threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fetches = Counter(
            "aggregator_fetches_total", "Source fetches by result (ok, not_modified, error)."
        )
        self.items = Counter(
            "aggregator_items_stored_total", "Items written, by kind (new, updated, duplicate)."
        )
        self.fetch_seconds = Histogram(
            "aggregator_fetch_duration_seconds",
            "Time to fetch, parse and store one source.",
            FETCH_BUCKETS,
        )
        self.digest_sends = Counter(
            "aggregator_digest_sends_total", "Digest emails by result (sent, retry, failed)."
        )
        self.publishes = Counter(
            "aggregator_publishes_total", "Feed publishes by result (changed, unchanged, error)."
        )
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        with self._lock:
            self.gauges.append(Gauge(name, help, read))

    def record_ingest(self, stats: IngestStats) -> None:
        """Count one source's ingest pass (the Ingestor's ``on_done`` callback)."""
        result = {
            IngestOutcome.OK: "ok",
            IngestOutcome.NOT_MODIFIED: "not_modified",
            IngestOutcome.ERROR: "error",
            IngestOutcome.SKIPPED: "skipped",
        }[stats.outcome]
        with self._lock:
            self.fetches.inc(result=result)
            if stats.outcome is not IngestOutcome.SKIPPED:
                self.fetch_seconds.observe(stats.elapsed)
            for kind, amount in (
                ("new", stats.new),
                ("updated", stats.updated),
                ("duplicate", stats.duplicates),
            ):
                if amount:
                    self.items.inc(amount, kind=kind)

    def record_send(self, result: str, amount: int = 1) -> None:
        with self._lock:
            self.digest_sends.inc(amount, result=result)

    def record_publish(self, result: str) -> None:
        with self._lock:
            self.publishes.inc(result=result)

    def render(self) -> str:
        with self._lock:
            parts: list[Iterable[str]] = [
                self.fetches.render(),
                self.items.render(),
                self.fetch_seconds.render(),
                self.digest_sends.render(),
                self.publishes.render(),
            ]
            lines = [line for part in parts for line in part]
            gauges = list(self.gauges)
        for g in gauges:  # gauges read the store: outside the lock
            lines.extend(g.render())
        return "\n".join(lines) + "\n"
