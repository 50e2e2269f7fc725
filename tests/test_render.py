"""Rendering the weekly digest: MJML → HTML email, plain-text part, archive and home pages."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aggregator.errors import RenderError
from aggregator.models import Digest, DigestSection, DigestSettings, Site, StoredItem
from aggregator.render import (
    HTML_BUDGET_BYTES,
    TEMPLATES_ENV_VAR,
    UNSUBSCRIBE_PLACEHOLDER,
    build_preheader,
    format_subject,
    public_issue_html,
    render_archive_index,
    render_digest,
    render_home,
    templates_dir,
)

SITE = Site(
    title="Korean Film Digest",
    url="https://digest.example.org/",
    postal_address="130 Suyeonggangbyeon-daero, Haeundae-gu, Busan 48058, Republic of Korea",
)
PERIOD_END = datetime(2026, 11, 9, 0, 0, tzinfo=UTC)  # Monday 09:00 in Seoul
VIEW_URL = "https://digest.example.org/digests/7"

ENGLISH = [
    (
        "ko-pick",
        "Ko-pick: Why 'The Land of Morning Calm' lingers long after the credits",
        "Park Ji-yoon's second feature follows a fisherman's widow on Jeju who refuses "
        "to sell her late husband's boat. It is a quiet film about stubbornness and grief.",
    ),
    (
        "ko-pick",
        "Ko-pick: The restless camera of director Yoon Ga-eun",
        "From The World of Us to The House of Us, Yoon Ga-eun keeps her camera at a "
        "child's eye level. We look at how that choice shapes her films.",
    ),
    (
        "previews",
        "Most anticipated Korean films of the winter season",
        "Six releases to watch between December and February, from a Busan-set noir "
        "to a period drama that has been in production for three years.",
    ),
    (
        "previews",
        "Busan International Film Festival announces its 2027 line-up",
        "The festival opens with a debut feature and closes with a restored 1960s classic.",
    ),
    (
        None,
        "Korean box office: 'Harbin' crosses four million admissions",
        "The historical thriller passed the mark on its third weekend, ahead of "
        "Hollywood competition.",
    ),
    (
        None,
        "KOFIC opens applications for independent film production support",
        "Grants of up to 300 million won are available to first and second features.",
    ),
]

KOREAN = [
    (
        "ko-pick",
        "Ko-pick: 「남산의 부장들」 이후, 정치 스릴러는 어디로 가는가",
        "우민호 감독의 신작은 1970년대를 배경으로 권력의 심장부를 다시 들여다본다. "
        "배우들의 절제된 연기가 돋보인다.",
    ),
    (
        "previews",
        "2027년 상반기 개봉 예정 한국 영화 기대작 10편",
        "봉준호, 박찬욱 감독의 신작부터 신인 감독들의 데뷔작까지, 올해 극장가를 달굴 작품들을 "
        "미리 살펴본다.",
    ),
    (
        None,
        "부산국제영화제, 아시아 콘텐츠 어워즈 수상작 발표",
        "올해 시상식에서는 한국 드라마와 영화가 주요 부문을 휩쓸었다.",
    ),
]


def make_item(
    n: int,
    title: str,
    excerpt: str,
    *,
    section: str | None = None,
    image: bool = False,
    language: str | None = None,
    source: str = "KoBiz Ko-pick",
) -> StoredItem:
    published = PERIOD_END - timedelta(hours=6 * n + 3)
    url = f"https://www.koreanfilm.or.kr/eng/news/article.jsp?seq={1000 + n}"
    return StoredItem(
        id=n,
        source_id="kobiz",
        source_title=source,
        source_url="https://www.koreanfilm.or.kr/",
        guid=f"kobiz-{n}",
        url=url,
        canonical_url=url,
        title=title,
        summary_html=f"<p>{excerpt}</p>",
        content_html=f"<p>{excerpt}</p>",
        text=excerpt,
        excerpt=excerpt,
        published_at=published,
        updated_at=published,
        first_seen_at=published + timedelta(minutes=20),
        image_url=f"https://images.example.org/stills/{n}.jpg" if image else None,
        author="Pierce Conran" if n % 2 else None,
        section=section,
        language=language,
    )


def sample_digest(
    entries: list[tuple[str | None, str, str]] | None = None,
    *,
    language: str | None = None,
    images: bool = True,
    digest_id: int | None = 7,
) -> Digest:
    """A realistic issue: Ko-pick columns, previews and other news, newest first."""
    titles = {"ko-pick": "Ko-pick columns", "previews": "Film previews", None: "More news"}
    grouped: dict[str | None, list[StoredItem]] = {"ko-pick": [], "previews": [], None: []}
    for n, (section, title, excerpt) in enumerate(entries or ENGLISH, start=1):
        item = make_item(
            n,
            title,
            excerpt,
            section=section,
            image=images and n in (1, 3),
            language=language,
            source="KoBiz Ko-pick" if section == "ko-pick" else "Korean Film Biz Zone",
        )
        grouped[section].append(item)
    sections = tuple(
        DigestSection(key or "more", titles[key], tuple(items))
        for key, items in grouped.items()
        if items
    )
    digest = Digest(
        id=digest_id,
        period_start=PERIOD_END - timedelta(days=7),
        period_end=PERIOD_END,
        subject="Korean Film Digest: week of Nov 02, 2026",
        sections=sections,
    )
    return replace(digest, preheader=build_preheader(digest))


def big_digest(count: int = 30) -> Digest:
    """``count`` items spread over three sections, for size and speed checks."""
    entries = [ENGLISH[n % len(ENGLISH)] for n in range(count)]
    entries = [(s, f"{t} (part {n})", e) for n, (s, t, e) in enumerate(entries)]
    return sample_digest(entries)


class _LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"] or "")
        if tag == "img":
            self.images.append(values)


def parse(html: str) -> _LinkCollector:
    collector = _LinkCollector()
    collector.feed(html)
    return collector


# ------------------------------------------------------------------------- email


def test_html_links_every_item_and_has_header_footer() -> None:
    digest = sample_digest()
    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    page = parse(rendered.html)
    for section in digest.sections:
        for item in section.items:
            # Title and "Read more" button both link to the original article.
            assert page.hrefs.count(item.url) >= 2, item.title
    assert "Korean Film Digest" in rendered.html
    assert "November 9, 2026" in rendered.html  # issue date in the site's time zone
    assert SITE.postal_address in rendered.html
    assert VIEW_URL in page.hrefs
    assert UNSUBSCRIBE_PLACEHOLDER in page.hrefs
    assert rendered.html.count("Read more") == digest.item_count


def test_html_has_preheader_utf8_and_korean_font_fallbacks() -> None:
    rendered = render_digest(sample_digest(KOREAN), SITE, view_url=VIEW_URL)

    assert rendered.preheader == "1 Ko-pick column, 1 film preview and 1 more story"
    # The preheader is the first text of the body (hidden), so inbox previews show it.
    body = rendered.html.split("<body", 1)[1]
    assert body.index(rendered.preheader) < body.index("Weekly digest")
    assert re.search(r'<meta[^>]+charset="?utf-8', rendered.html, re.IGNORECASE)
    for font in ("Apple SD Gothic Neo", "Malgun Gothic", "Noto Sans KR"):
        assert font in rendered.html
    assert "2027년 상반기 개봉 예정 한국 영화 기대작 10편" in rendered.html
    assert "fonts.googleapis.com" not in rendered.html


def test_images_have_alt_and_width_and_only_http_urls() -> None:
    rendered = render_digest(sample_digest(), SITE, view_url=VIEW_URL)

    images = parse(rendered.html).images
    assert len(images) == 2
    for image in images:
        assert (image.get("src") or "").startswith("https://images.example.org/")
        assert image.get("alt")
        assert image.get("width") == "552"
        assert image.get("height")


def test_hostile_item_fields_appear_as_text() -> None:
    evil_title = "<script>alert(1)</script> {{ config }} </mj-text><mj-raw><b>x</b></mj-raw>"
    evil_excerpt = "Great film.<img src=x onerror=alert(2)> {% if true %}yes{% endif %}"
    item = make_item(1, evil_title, evil_excerpt, section="ko-pick", image=False)
    item = replace(
        item,
        source_title="<i>Source</i>",
        author='"><svg onload=alert(3)>',
        image_url="javascript:alert(4)",
    )
    hostile_link = replace(
        make_item(2, "Second", "Fine.", section="ko-pick"), url="javascript:alert(5)"
    )
    digest = Digest(
        id=3,
        period_start=PERIOD_END - timedelta(days=7),
        period_end=PERIOD_END,
        subject="Issue <b>3</b>",
        sections=(DigestSection("ko-pick", "Ko-pick <columns>", (item, hostile_link)),),
    )

    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    page = parse(rendered.html)
    assert "script" not in page.tags
    assert "svg" not in page.tags
    assert "<mj-" not in rendered.html and "<b>x</b>" not in rendered.html
    assert not [img for img in page.images if img.get("src") == "x"]
    assert "javascript:" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ config }}" in rendered.html
    assert "{% if true %}yes{% endif %}" in rendered.html
    assert "&lt;i&gt;Source&lt;/i&gt;" in rendered.html
    # The plain-text part shows the same characters, unescaped.
    assert evil_title in rendered.text
    assert "javascript:" not in rendered.text


def test_feed_text_cannot_forge_the_unsubscribe_placeholder() -> None:
    item = make_item(1, f"Click {UNSUBSCRIBE_PLACEHOLDER}", "x", section="ko-pick")
    item = replace(item, url=f"https://evil.example/?u={UNSUBSCRIBE_PLACEHOLDER}")
    digest = replace(sample_digest(), sections=(DigestSection("ko-pick", "Ko-pick", (item,)),))

    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    # Only the footer's own link carries the placeholder.
    assert rendered.html.count(UNSUBSCRIBE_PLACEHOLDER) == 1
    assert rendered.text.count(UNSUBSCRIBE_PLACEHOLDER) == 1
    assert "evil.example" not in rendered.html


def test_text_part_has_every_full_url_and_the_same_content() -> None:
    digest = sample_digest()
    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    for section in digest.sections:
        assert section.title.upper() in rendered.text
        for item in section.items:
            assert f"Read more: {item.url}" in rendered.text
            assert item.title in rendered.text
    assert f"View in browser: {VIEW_URL}" in rendered.text
    assert f"Unsubscribe: {UNSUBSCRIBE_PLACEHOLDER}" in rendered.text
    assert SITE.postal_address in rendered.text
    assert "<" not in rendered.text.replace("<b>", "")  # no markup leaks into text


def test_text_part_keeps_urls_whole_and_excerpts_wrapped() -> None:
    long_excerpt = " ".join(["A sentence about a film festival programme."] * 6)
    digest = sample_digest([("ko-pick", "Ko-pick: long", long_excerpt)])
    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    lines = rendered.text.splitlines()
    excerpt_lines = [line for line in lines if "festival" in line or "sentence" in line]
    assert len(excerpt_lines) > 1
    assert all(len(line) <= 72 for line in excerpt_lines)
    assert any(line.endswith("article.jsp?seq=1001") for line in lines)


def test_empty_issue_with_note_renders_a_short_message() -> None:
    digest = Digest(
        id=1,
        period_start=PERIOD_END - timedelta(days=7),
        period_end=PERIOD_END,
        subject="Korean Film Digest: a quiet week",
        sections=(),
    )
    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    assert "No new Ko-pick columns" in rendered.html
    assert "No new Ko-pick columns" in rendered.text
    assert "Read more" not in rendered.html
    assert UNSUBSCRIBE_PLACEHOLDER in rendered.html


def test_thirty_items_stay_under_gmail_clipping_size() -> None:
    rendered = render_digest(big_digest(30), SITE, view_url=VIEW_URL)

    assert len(rendered.html.encode()) <= HTML_BUDGET_BYTES


def test_oversized_issue_drops_items_from_html_but_not_from_text() -> None:
    long_excerpt = "A long paragraph about Korean cinema. " * 40
    entries = [("ko-pick", f"Ko-pick column {n}", long_excerpt) for n in range(60)]
    digest = sample_digest(entries, images=False)

    rendered = render_digest(digest, SITE, view_url=VIEW_URL)

    assert len(rendered.html.encode()) <= HTML_BUDGET_BYTES
    match = re.search(r"(\d+) more on the website", rendered.html)
    assert match is not None
    shown = rendered.html.count("Read more")
    assert shown + int(match.group(1)) == 60
    assert rendered.text.count("Read more: ") == 60


def test_invalid_view_url_is_refused() -> None:
    with pytest.raises(RenderError, match="view_url"):
        render_digest(sample_digest(), SITE, view_url="javascript:alert(1)")


def test_broken_mjml_raises_render_error_naming_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for template in templates_dir().glob("*.j2"):
        (tmp_path / template.name).write_text(template.read_text(encoding="utf-8"))
    broken = (tmp_path / "digest.mjml.j2").read_text().replace("</mj-body>", "", 1)
    (tmp_path / "digest.mjml.j2").write_text(broken)
    monkeypatch.setenv(TEMPLATES_ENV_VAR, str(tmp_path))

    with pytest.raises(RenderError) as caught:
        render_digest(sample_digest(), SITE, view_url=VIEW_URL)

    message = str(caught.value)
    assert "digest.mjml.j2" in message and "MJML could not be rendered" in message


def test_template_syntax_error_raises_render_error_with_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "digest.mjml.j2").write_text("<mjml>\n{% if %}\n</mjml>\n")
    monkeypatch.setenv(TEMPLATES_ENV_VAR, str(tmp_path))

    with pytest.raises(RenderError, match=r"digest\.mjml\.j2:2: template syntax error"):
        render_digest(sample_digest(), SITE, view_url=VIEW_URL)


# ----------------------------------------------------------------------- subject


def test_subject_uses_site_time_zone_dates() -> None:
    settings = DigestSettings(subject="{site_title}: week of {period_start:%b %d}")
    start = datetime(2026, 11, 1, 15, 30, tzinfo=UTC)  # already Nov 2 in Seoul

    subject = format_subject(settings, SITE, start, start + timedelta(days=7))

    assert subject == "Korean Film Digest: week of Nov 02"


def test_subject_with_unknown_placeholder_names_it() -> None:
    settings = DigestSettings(subject="{site_title} {week}")

    with pytest.raises(RenderError, match=r"unknown placeholder \{week\}"):
        format_subject(settings, SITE, PERIOD_END, PERIOD_END)


# ------------------------------------------------------------------------- pages


def test_public_issue_html_replaces_the_unsubscribe_link() -> None:
    html = render_digest(sample_digest(), SITE, view_url=VIEW_URL).html

    page = public_issue_html(html, subscribe_url="https://digest.example.org/subscribe")

    assert UNSUBSCRIBE_PLACEHOLDER not in page
    assert "Unsubscribe</a>" not in page
    assert "https://digest.example.org/subscribe" in parse(page).hrefs
    without = public_issue_html(html, subscribe_url=None)
    assert UNSUBSCRIBE_PLACEHOLDER not in without and "Unsubscribe</a>" not in without


def test_archive_index_lists_issues_newest_first() -> None:
    older = replace(
        sample_digest(digest_id=1),
        subject="Week one <b>",
        period_end=PERIOD_END - timedelta(days=7),
    )
    newer = replace(sample_digest(digest_id=2), subject="Week two")

    html = render_archive_index([older, newer], SITE)

    assert html.index("Week two") < html.index("Week one &lt;b&gt;")
    hrefs = parse(html).hrefs
    assert "https://digest.example.org/digests/2" in hrefs
    assert "https://digest.example.org/digests/1" in hrefs
    assert "6 stories" in html


def test_home_page_announces_both_feeds_and_escapes_items() -> None:
    items = [
        make_item(1, "<script>x</script> Ko-pick", "Fine.", section="ko-pick"),
        make_item(2, "부산국제영화제 개막", "개막작이 발표되었다.", language="ko"),
    ]

    html = render_home(items, SITE, archive_url="https://digest.example.org/digests/")

    assert re.search(
        r'<link rel="alternate" type="application/atom\+xml"[^>]*'
        r'href="https://digest.example.org/feed.atom"',
        html,
    )
    assert re.search(
        r'<link rel="alternate" type="application/feed\+json"[^>]*'
        r'href="https://digest.example.org/feed.json"',
        html,
    )
    assert "<script>" not in html
    assert 'lang="ko"' in html
    assert "부산국제영화제 개막" in html


def test_home_page_rejects_unknown_feed_kind() -> None:
    with pytest.raises(RenderError, match="unknown feed type 'rss'"):
        render_home([], SITE, feed_urls={"rss": "https://digest.example.org/rss.xml"})
