"""pytest plugin for scripts/mutation: every test starts with normalize's value caches empty.

mutmut runs the selected tests once, then forks that process for each
mutant. Values cleaned or resolved in that first run stay in normalize's
per-worker caches (``clean_plain`` and ``_http_url`` keep short values), so
in the forks a cached title or link never reaches the mutated function and
its mutants survive unseen. Clearing the caches before each test makes the
mutated code run; outside the mutation run the caches only save time and
are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _fresh_normalize_caches() -> Iterator[None]:
    from aggregator import normalize  # the scratch copy's (mutated) module

    normalize._clean_plain_cached.cache_clear()
    normalize._http_url_cached.cache_clear()
    yield
