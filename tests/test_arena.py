"""An ingest pass's threads allocate from one malloc arena (glibc), not one each.

Each check runs a real pass (fixture HTTP server on 127.0.0.1, real SQLite)
in a fresh interpreter, so no thread of this test process has an arena yet,
and reads glibc's own account of its arenas (``malloc_info``).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from tests.support.child import INGEST_PASS, run_python
from tests.support.http import FixtureServer
from tests.test_ingest import rss


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


pytestmark = pytest.mark.skipif(not _glibc(), reason="malloc arenas are glibc's")

PASS = (
    INGEST_PASS
    + """
import ctypes, re
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(str(tmp / "malloc.xml").encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
info = (tmp / "malloc.xml").read_text()
print(sorted(s.outcome.value for s in stats))
print(len(re.findall(r'<heap nr="', info)))
"""
)


@pytest.mark.parametrize("sources", [3, 12])
def test_an_ingest_pass_s_threads_share_the_main_arena(
    http_server: FixtureServer, tmp_path: Path, sources: int
) -> None:
    yaml = ""
    for n in range(sources):
        entries = [(f"a{n}-{i}", f"기사 {n}/{i}", "본문 " * (50 + 40 * i)) for i in range(20)]
        http_server.add(f"/arena{n}.xml", rss(entries))
        yaml += f"  - {{id: s{n}, url: '{http_server.url(f'/arena{n}.xml')}'}}\n"

    out = run_python("-c", PASS, str(tmp_path), yaml)

    # Every source stored (3 parse in threads, 12 in the pool), by threads
    # that allocated from the one arena the process started with.
    assert out == [str(["ok"] * sources), "1"]
