"""Headless Chromium for the tests that look at pages and emails as a reader does.

One runner and one screenshot helper, shared by the render, pages and editions
browser tests, so the flags that make headless Chromium usable here (no
sandbox as root, no GPU, local files reading each other) live in one place.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# A page is shown in an iframe exactly ``width`` px wide: a headless window lays
# pages out at 500 px at least, so a 390 px window alone would crop.
_FRAME = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe src="{src}" style="display:block;width:{width}px;height:{height}px;border:0"></iframe>
</body></html>
"""


def run_chromium(*args: str) -> str:
    """Run headless Chromium with ``args``; its standard output (``--dump-dom``)."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run scripts/test (it installs it)", pytrace=False)
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def screenshots(
    page_html: str, name: str, *, folder: Path, widths: Sequence[int], height: int
) -> list[Path]:
    """``page_html`` saved as ``folder/name.html`` and shot at each width as ``name-W.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{name}.html"
    source.write_text(page_html, encoding="utf-8")
    shots = []
    for width in widths:
        frame = folder / f"{name}.frame-{width}.html"
        frame.write_text(_FRAME.format(src=source.name, width=width, height=height), "utf-8")
        shot = folder / f"{name}-{width}.png"
        shot.unlink(missing_ok=True)
        run_chromium(f"--window-size={width},{height}", f"--screenshot={shot}", frame.as_uri())
        frame.unlink()
        shots.append(shot)
    return shots
