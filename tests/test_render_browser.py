"""The digest email in a real browser: headless Chromium at phone and desktop widths.

Each case writes the rendered HTML and a screenshot to ``tests/artifacts/`` (look
at them after a template change) and asks Chromium itself whether the page is
wider than the window, whether every image loaded and which fonts it needed.
Images come from a local HTTP server, as they would from a feed's CDN.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from aggregator.models import Digest, DigestSection
from aggregator.render import render_digest, render_home
from tests.support.chromium import run_chromium
from tests.support.http import FixtureServer
from tests.test_render import ENGLISH, KOREAN, SITE, VIEW_URL, make_item, sample_digest

pytestmark = pytest.mark.chromium

ARTIFACTS = Path(__file__).parent / "artifacts"
WIDTHS = (375, 800)

# A host page that loads the email in an iframe exactly ``width`` px wide (a
# headless window cannot be narrower than 500 px) and, once everything has
# loaded, writes its measurements into the DOM for --dump-dom to print.
_PROBE = """<!DOCTYPE html>
<html><body style="margin:0">
<iframe id="mail" src="{src}" style="width:{width}px;height:2400px;border:0"></iframe>
<script>
window.addEventListener("load", function () {{
  var frame = document.getElementById("mail");
  var doc = frame.contentDocument;
  var images = Array.prototype.slice.call(doc.images);
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({{
    scrollWidth: doc.documentElement.scrollWidth,
    innerWidth: frame.contentWindow.innerWidth,
    images: images.length,
    brokenImages: images.filter(function (i) {{ return !i.complete || i.naturalWidth === 0; }})
      .map(function (i) {{ return i.src; }}),
    charset: doc.characterSet
  }});
  document.body.appendChild(out);
}});
</script>
</body></html>
"""


def _still(label: str, hue: int) -> str:
    """A film-still-like SVG (16:9) standing in for a feed's article image."""
    return f"""<svg xmlns="http://www.w3.org/2000/svg"
  width="1104" height="621" viewBox="0 0 1104 621">
  <defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
    <stop offset="0" stop-color="hsl({hue},45%,28%)"/>
    <stop offset="1" stop-color="hsl({hue + 40},55%,12%)"/>
  </linearGradient></defs>
  <rect width="1104" height="621" fill="url(#g)"/>
  <circle cx="820" cy="210" r="120" fill="hsl({hue + 20},70%,70%)" opacity="0.35"/>
  <rect x="0" y="470" width="1104" height="151" fill="#000" opacity="0.35"/>
  <text x="56" y="560" font-family="sans-serif" font-size="44" fill="#f4efe6">{label}</text>
</svg>"""


@pytest.fixture
def images(http_server: FixtureServer) -> FixtureServer:
    for n, hue in ((1, 200), (3, 20), (5, 140)):
        http_server.add(f"/stills/{n}.svg", _still(f"Still {n}", hue), content_type="image/svg+xml")
    return http_server


def _with_local_images(digest: Digest, server: FixtureServer) -> Digest:
    sections = tuple(
        replace(
            section,
            items=tuple(
                replace(item, image_url=server.url(f"/stills/{item.id}.svg"))
                if item.image_url
                else item
                for item in section.items
            ),
        )
        for section in digest.sections
    )
    return replace(digest, sections=sections)


def _open(html: Path, width: int, screenshot: Path) -> dict[str, object]:
    """Screenshot ``html`` at ``width`` px and return what the probe script measured."""
    run_chromium(f"--window-size={width},2400", f"--screenshot={screenshot}", html.as_uri())
    probe_page = html.with_name(f"{html.stem}.probe-{width}.html")
    probe_page.write_text(_PROBE.format(src=html.name, width=width), encoding="utf-8")
    dom = run_chromium("--window-size=1000,2400", "--dump-dom", probe_page.as_uri())
    probe_page.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert match, "the probe script did not run"
    result: dict[str, object] = json.loads(match.group(1).replace("&quot;", '"'))
    return result


def _korean_font_installed() -> bool:
    listed = subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True)
    return bool(listed.stdout.strip())


CASES = {
    "en": lambda: sample_digest(ENGLISH),
    "ko": lambda: sample_digest(KOREAN, language="ko"),
}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("language", sorted(CASES))
def test_digest_fits_the_window_with_images_loaded(
    language: str, width: int, images: FixtureServer
) -> None:
    if language == "ko" and not _korean_font_installed():
        pytest.fail(
            "no Korean font installed, Hangul would render as boxes: "
            "apt-get install fonts-nanum (or fonts-noto-cjk)",
            pytrace=False,
        )
    digest = _with_local_images(CASES[language](), images)
    rendered = render_digest(digest, SITE, view_url=VIEW_URL)
    ARTIFACTS.mkdir(exist_ok=True)
    html = ARTIFACTS / f"digest-{language}.html"
    html.write_text(rendered.html, encoding="utf-8")
    screenshot = ARTIFACTS / f"digest-{language}-{width}.png"
    screenshot.unlink(missing_ok=True)

    measured = _open(html, width, screenshot)

    assert screenshot.stat().st_size > 10_000
    assert measured["charset"] == "UTF-8"
    assert measured["innerWidth"] == width
    assert measured["scrollWidth"] == width, f"page overflows horizontally: {measured}"
    assert measured["images"] == 2
    assert measured["brokenImages"] == []


@pytest.mark.parametrize("width", WIDTHS)
def test_long_unbroken_titles_and_links_do_not_overflow(width: int) -> None:
    word = "Supercalifragilistic" * 8
    item = make_item(1, f"Ko-pick: {word}", f"{word} {word}.", section="ko-pick")
    url_item = replace(make_item(2, "한국영화" * 30, "가" * 200, section="ko-pick"))
    digest = replace(
        sample_digest(), sections=(DigestSection("ko-pick", "Ko-pick", (item, url_item)),)
    )
    html = ARTIFACTS / "digest-long-words.html"
    ARTIFACTS.mkdir(exist_ok=True)
    html.write_text(render_digest(digest, SITE, view_url=VIEW_URL).html, encoding="utf-8")

    measured = _open(html, width, ARTIFACTS / f"digest-long-words-{width}.png")

    assert measured["scrollWidth"] == width, f"page overflows horizontally: {measured}"


@pytest.mark.parametrize("width", WIDTHS)
def test_home_page_fits_the_window(width: int) -> None:
    items = [
        make_item(n, title, excerpt, section=section)
        for n, (section, title, excerpt) in enumerate(ENGLISH + KOREAN, start=1)
    ]
    html = ARTIFACTS / "home.html"
    ARTIFACTS.mkdir(exist_ok=True)
    html.write_text(
        render_home(items, SITE, archive_url="https://digest.example.org/digests/"),
        encoding="utf-8",
    )

    measured = _open(html, width, ARTIFACTS / f"home-{width}.png")

    assert measured["scrollWidth"] == width, f"page overflows horizontally: {measured}"
