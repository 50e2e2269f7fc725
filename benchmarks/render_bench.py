"""Render time of a 30-item weekly digest (MJML email + plain text), median of 100 runs.

    python -m benchmarks.render_bench [--items 30] [--runs 100]

Measures :func:`aggregator.render.render_digest` end to end: Jinja2 templating,
mjml-python and the plain-text part, with templates already loaded (as in a
long-running process). Items are synthetic but realistic in length, half with
images and some with Korean titles.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aggregator.models import Digest, DigestSection, Site, StoredItem
from aggregator.render import build_preheader, render_digest

SITE = Site(
    title="Korean Film Digest",
    url="https://digest.example.org/",
    postal_address="130 Suyeonggangbyeon-daero, Haeundae-gu, Busan 48058, Republic of Korea",
)
END = datetime(2026, 11, 9, tzinfo=UTC)
EXCERPT = (
    "The director's second feature follows a fisherman's widow on Jeju who refuses to sell "
    "her late husband's boat. It is a quiet film about stubbornness and grief, and one of "
    "the best Korean films of the year."
)
KOREAN_TITLE = "2027년 상반기 개봉 예정 한국 영화 기대작 {n}편"


def _item(n: int) -> StoredItem:
    url = f"https://www.koreanfilm.or.kr/eng/news/article.jsp?seq={1000 + n}"
    title = KOREAN_TITLE.format(n=n) if n % 3 == 0 else f"Ko-pick: a column about cinema no. {n}"
    published = END - timedelta(hours=5 * n)
    return StoredItem(
        id=n,
        source_id="kobiz",
        source_title="KoBiz Ko-pick",
        source_url="https://www.koreanfilm.or.kr/",
        guid=str(n),
        url=url,
        canonical_url=url,
        title=title,
        summary_html=f"<p>{EXCERPT}</p>",
        content_html=f"<p>{EXCERPT}</p>",
        text=EXCERPT,
        excerpt=EXCERPT,
        published_at=published,
        updated_at=published,
        first_seen_at=published,
        image_url=f"https://images.example.org/{n}.jpg" if n % 2 else None,
        author="Pierce Conran" if n % 4 == 0 else None,
    )


def digest_of(count: int) -> Digest:
    """``count`` items in three sections (Ko-pick, previews, more news)."""
    items = [_item(n) for n in range(1, count + 1)]
    thirds = [items[0::3], items[1::3], items[2::3]]
    titles = [("ko-pick", "Ko-pick columns"), ("previews", "Film previews")]
    titles.append(("more", "More Korean film news"))
    sections = tuple(
        DigestSection(sid, title, tuple(chunk))
        for (sid, title), chunk in zip(titles, thirds, strict=True)
    )
    digest = Digest(
        id=1,
        period_start=END - timedelta(days=7),
        period_end=END,
        subject="Korean Film Digest: week of Nov 02, 2026",
        sections=sections,
    )
    return replace(digest, preheader=build_preheader(digest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    digest = digest_of(args.items)
    view_url = "https://digest.example.org/digests/1"
    rendered = render_digest(digest, SITE, view_url=view_url)  # warm-up: loads templates
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        render_digest(digest, SITE, view_url=view_url)
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(
        f"render_digest, {digest.item_count} items, {args.runs} runs: "
        f"median {statistics.median(timings) * 1000:.2f} ms "
        f"(min {timings[0] * 1000:.2f}, p90 {timings[int(len(timings) * 0.9)] * 1000:.2f}); "
        f"HTML {len(rendered.html.encode()) / 1024:.1f} KB, text {len(rendered.text) / 1024:.1f} KB"
    )


if __name__ == "__main__":
    main()
