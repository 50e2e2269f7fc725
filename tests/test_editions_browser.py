"""Screenshots of the English and Korean editions, as the SMTP server received them.

One issue is delivered to an English and a Korean subscriber over real SMTP
(aiosmtpd); the HTML part of each received message is opened in headless
Chromium at 600 and 390 px (a desktop mail client's column and a phone), and
so is the Korean preferences page served by the app. The screenshots go to
``tests/artifacts/editions/`` for a person to look at; the test checks the
Korean one is really Korean (``lang="ko"``, the Korean footer) and that a
Korean font rendered it (the screenshot is not blank).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.config import parse_config
from aggregator.store import Store
from aggregator.tokens import Tokens
from tests.support.chromium import screenshots
from tests.test_korean_edition import _parts, _send, config_yaml
from tests.test_subscribe_web import SECRET as WEB_SECRET
from tests.test_subscribe_web import Web, serve_web

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

pytestmark = pytest.mark.chromium

ARTIFACTS = Path(__file__).parent / "artifacts" / "editions"
WIDTHS = (600, 390)


def _screenshots(page_html: str, name: str) -> list[Path]:
    """``page_html`` at each of :data:`WIDTHS`, in an iframe exactly that wide."""
    shots = screenshots(page_html, name, folder=ARTIFACTS, widths=WIDTHS, height=2400)
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot}: blank screenshot"
    return shots


@pytest.fixture
def web(store: Store, smtp_server: SmtpFixture, tmp_path: Path) -> Iterator[Web]:
    with serve_web(store, smtp_server, tmp_path / "public") as running:
        yield running


def test_screenshots_of_the_english_and_korean_editions(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml())
    _send(store, config, smtp_server, {"ko@example.org": "ko", "en@example.org": "en"})
    (korean,) = smtp_server.to("ko@example.org")
    (english,) = smtp_server.to("en@example.org")
    korean_html, _ = _parts(korean)
    english_html, _ = _parts(english)
    assert '<html lang="ko"' in korean_html and "구독 해지" in korean_html
    assert '<html lang="en"' in english_html and "구독 해지" not in english_html
    shots = _screenshots(korean_html, "digest-ko") + _screenshots(english_html, "digest-en")
    assert [s.name for s in shots] == [
        "digest-ko-600.png",
        "digest-ko-390.png",
        "digest-en-600.png",
        "digest-en-390.png",
    ]


def test_screenshot_of_the_korean_preferences_page(web: Web, store: Store) -> None:
    from datetime import UTC, datetime

    found, _ = store.add_subscriber("ko@example.org", now=datetime.now(UTC), active=True)
    store.set_preferences(found.id, found.email, sections=("ko-pick",), language="ko")
    token = Tokens(WEB_SECRET).preferences_token(found.id, found.email)
    page = web.client.get(f"/preferences/{token}")
    assert page.status_code == 200
    assert '<html lang="ko">' in page.text and "받을 소식 선택" in page.text
    assert 'value="ko" checked' in page.text
    _screenshots(page.text, "preferences-ko")
