"""Import a library without the optional modules it pulls in for nobody here.

Memory of the ingest's main process is mostly imported code, and some of it
is imported by our libraries only because it happens to be installed:

* ``httpx/__init__.py`` imports its command-line client (``httpx._main``)
  whenever click, rich and pygments are importable, for the ``httpx``
  console script; that is ~5 MB of PSS (rich's tables, progress bars,
  pygments) in a process that never runs it.
* ``httpcore`` imports ``trio`` when it is installed, to pick its locks
  under trio; ~8 MB of PSS (measured with ``/proc/self/smaps_rollup``), and
  nothing here runs under trio: the fetcher is asyncio.

Both imports are optional in those libraries (each is a ``try: import`` with
an ``except ImportError`` fallback), so hiding the module for the duration
of the import takes the documented fallback path; afterwards the name is
importable again for any code that does want it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["OPTIONAL_FOR_HTTPX", "hidden_modules"]

# What httpx and httpcore import only when installed and never need in an
# asyncio process that does not run httpx's command line.
OPTIONAL_FOR_HTTPX = ("httpx._main", "trio")


@contextlib.contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Within the block, ``import name`` raises ImportError for each of ``names``.

    A name already imported stays as it is (hiding it would not unload it).
    Meant for module-level imports at start-up: another thread importing one
    of ``names`` at the same moment would see the ImportError too.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        # A None entry in sys.modules is the import system's own "this
        # module cannot be imported" marker.
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
