"""The Korean edition: catalogs, dates, titles, subject and ``lang``, as received by SMTP.

Issues are composed from a real SQLite/PostgreSQL store and delivered to the
real aiosmtpd server; a Korean subscriber's message must carry Korean chrome
and ``lang="ko"``, an English subscriber's none of it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from babel.messages.pofile import read_po
from selectolax.lexbor import LexborHTMLParser

from aggregator import i18n
from aggregator.config import Config, parse_config
from aggregator.deliver import deliver_digest
from aggregator.digest import compose
from aggregator.errors import ConfigError
from aggregator.models import Digest
from aggregator.render import render_confirmation
from aggregator.store import Store
from tests.test_mail_readers import PERIOD, SLOT, story

if TYPE_CHECKING:
    from tests.support.smtp import ReceivedMessage, SmtpFixture

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789abcdef"
NOW = datetime(2026, 11, 30, tzinfo=UTC)
KOREAN_CHROME = ("자세히 보기", "구독 해지", "브라우저에서 보기", "받을 소식 선택")
ENGLISH_CHROME = ("Read more", "Unsubscribe", "View in browser", "Choose what you get")


def config_yaml(*, subject: str = "", timezone: str = "Asia/Seoul") -> str:
    return f"""
site:
  title: Korean Film Digest
  url: https://digest.example.org/
  sender_email: digest@example.org
  timezone: {timezone}
sections:
  - id: ko-pick
    title: {{en: Ko-pick columns, ko: 코픽 칼럼}}
    match: {{title: "^Ko-pick"}}
  - {{id: previews, title: Film previews, match: {{title: "(?i)preview"}}}}
sources:
  - {{id: kobiz, title: KoBiz, url: https://kobiz.example.org/feed.xml}}
digest:
  other_section_title: {{en: More Korean film news, ko: 한국 영화 소식 더 보기}}
{subject}"""


def _issue(store: Store, config: Config) -> Digest:
    store.sync_sources(config.sources, now=PERIOD.start - timedelta(days=30))
    items = [
        story(s * 100 + n, section, korean=korean, at=PERIOD.start + timedelta(hours=n + 1))
        for s, (section, korean) in enumerate(
            [("ko-pick", True), ("previews", False), (None, False)]
        )
        for n in range(2)
    ]
    at = PERIOD.start + timedelta(hours=1)
    store.save_items("kobiz", items, fetched_at=at, next_fetch_at=at + timedelta(hours=1))
    digest = compose(config, store, now=SLOT, period=PERIOD)
    assert digest is not None
    return digest


def _send(store: Store, config: Config, smtp: SmtpFixture, people: dict[str, str | None]) -> None:
    for email, language in people.items():
        found, _ = store.add_subscriber(email, now=NOW, active=True)
        store.set_preferences(found.id, found.email, sections=None, language=language)
    digest = _issue(store, config)
    asyncio.run(
        deliver_digest(
            store, digest, site=config.site, smtp=smtp.settings(), secret=SECRET, config=config
        )
    )


def _parts(received: ReceivedMessage) -> tuple[str, str]:
    html = received.message.get_body(("html",))
    text = received.message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def test_a_korean_subscriber_gets_korean_chrome_and_an_english_one_does_not(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml())
    _send(store, config, smtp_server, {"ko@example.org": "ko", "en@example.org": None})

    (korean,) = smtp_server.to("ko@example.org")
    html, text = _parts(korean)
    page = LexborHTMLParser(html)
    root = page.css_first("html")
    assert root is not None and root.attributes.get("lang") == "ko"
    for phrase in KOREAN_CHROME:
        assert phrase in html, phrase
    for phrase in ("자세히 보기", "구독 해지", "브라우저에서 보기"):
        assert phrase in text, phrase
    assert "2026년 11월 9일 (월)" in html and "2026년 11월 9일 (월)" in text
    assert "코픽 칼럼" in html and "한국 영화 소식 더 보기" in html
    assert "Film previews" in html  # a plain-string title serves every language
    assert str(korean.message["Subject"]).startswith("Korean Film Digest: 2026년 11월 2일")
    # English items keep their own language inside the Korean page; Korean ones inherit it.
    titles = page.css('.item-title div[style*="overflow-wrap"]')
    assert len(titles) == 6
    for title in titles:
        korean_title = any("\uac00" <= ch <= "\ud7a3" for ch in title.text())
        assert title.attributes.get("lang") == (None if korean_title else "en"), title.text()

    (english,) = smtp_server.to("en@example.org")
    html, text = _parts(english)
    root = LexborHTMLParser(html).css_first("html")
    assert root is not None and root.attributes.get("lang") == "en"
    for phrase in ENGLISH_CHROME:
        assert phrase in html, phrase
    for phrase in KOREAN_CHROME:
        assert phrase not in html and phrase not in text, phrase
    assert "Mon, Nov 9, 2026" in html
    assert "Ko-pick columns" in html and "코픽 칼럼" not in html
    assert str(english.message["Subject"]) == "Korean Film Digest: week of Nov 02, 2026"


@pytest.mark.parametrize(
    ("subject", "korean_subject"),
    [
        (
            "  subject: {en: 'Week of {period_start:%b %d}', ko: '{period_start.month}월 소식'}\n",
            "11월 소식",
        ),
        ("  subject: 'One subject for {site_title}'\n", "Korean Film Digest: 2026년 11월 2일"),
    ],
    ids=["per-language", "plain-string-ko-default"],
)
def test_subject_per_language_with_a_default_for_each(
    store: Store, smtp_server: SmtpFixture, subject: str, korean_subject: str
) -> None:
    config = parse_config(config_yaml(subject=subject))
    _send(store, config, smtp_server, {"ko@example.org": "ko"})
    (korean,) = smtp_server.to("ko@example.org")
    assert str(korean.message["Subject"]).startswith(korean_subject)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [("Asia/Seoul", "2026년 11월 30일 (월)"), ("America/Los_Angeles", "2026년 11월 29일 (일)")],
)
def test_dates_are_in_the_readers_language_and_the_sites_time_zone(
    zone: str, expected: str
) -> None:
    from zoneinfo import ZoneInfo

    moment = datetime(2026, 11, 30, 2, tzinfo=UTC).astimezone(ZoneInfo(zone))
    assert i18n.format_issue_date(moment, "ko") == expected
    english = i18n.format_issue_date(moment, "en")
    assert english in ("Mon, Nov 30, 2026", "Sun, Nov 29, 2026")


def test_confirmation_mail_in_korean() -> None:
    site = parse_config(config_yaml()).site
    rendered = render_confirmation(
        site,
        name=None,
        email="reader@example.org",
        confirm_url="https://digest.example.org/confirm/abc",
        preferences_url="https://digest.example.org/preferences/xyz",
        language="ko",
    )
    assert rendered.subject == "Korean Film Digest 구독을 확인해 주세요"
    assert 'lang="ko"' in rendered.html and "구독 확인하기" in rendered.html
    assert "<strong>reader@example.org</strong>" in rendered.html
    assert "받을 섹션과 언어" in rendered.text


def test_section_title_per_language_is_checked_in_feeds_yaml() -> None:
    bad = config_yaml().replace("{en: Ko-pick columns, ko: 코픽 칼럼}", "{english: Ko-pick}")
    with pytest.raises(ConfigError, match="english"):
        parse_config(bad)


# ------------------------------------------------------------------ catalogs


def test_a_checkout_without_compiled_catalogs_still_speaks_korean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The .po is compiled in memory when no .mo was built (editable installs).
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    folder = tmp_path / "ko" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    source = ROOT / "aggregator" / "locale" / "ko" / "LC_MESSAGES" / "messages.po"
    (folder / "messages.po").write_bytes(source.read_bytes())
    i18n.translator.cache_clear()
    assert i18n.translator("ko").gettext("Unsubscribe") == "구독 해지"
    assert i18n.translator("ko-KR").gettext("Read more") == "자세히 보기"
    assert i18n.translator("en").gettext("Unsubscribe") == "Unsubscribe"
    assert i18n.translator("fr").gettext("Unsubscribe") == "Unsubscribe"
    assert not list(folder.glob("*.mo"))
    i18n.translator.cache_clear()


def test_build_hook_compiles_every_catalog(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("aggregator_setup", ROOT / "setup.py")
        assert spec is not None and spec.loader is not None
        # setup.py calls setup() at import: read only the function out of it.
        source = (ROOT / "setup.py").read_text(encoding="utf-8")
        namespace: dict[str, object] = {"__file__": str(ROOT / "setup.py")}
        exec(source.split("class BuildWithTemplates")[0], namespace)
    finally:
        sys.path.remove(str(ROOT))
    written = namespace["compile_catalogs"](tmp_path)  # type: ignore[operator]
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["ko/LC_MESSAGES/messages.mo"]
    import gettext

    with written[0].open("rb") as handle:
        assert gettext.GNUTranslations(handle).gettext("Subscribe") == "구독하기"


def test_the_korean_catalog_is_complete_and_in_step_with_the_sources(tmp_path: Path) -> None:
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "babel.messages.frontend",
            "extract",
            "-F",
            "babel.cfg",
            "-k",
            "gettext",
            "-k",
            "ngettext:1,2",
            "-k",
            "_",
            "-k",
            "N_",
            "-k",
            "say:2",
            "--no-location",
            "-o",
            str(pot),
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as handle:
        wanted = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(handle) if m.id}
    po = ROOT / "aggregator" / "locale" / "ko" / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as handle:
        catalog = read_po(handle)
    have = {
        (m.id if isinstance(m.id, str) else m.id[0]): m.string
        for m in catalog
        if m.id and not m.fuzzy
    }
    assert wanted - set(have) == set(), "run scripts/i18n and translate the new strings"
    untranslated = [k for k, v in have.items() if not (v if isinstance(v, str) else v[0])]
    assert untranslated == []
