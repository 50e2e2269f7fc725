"""Deterministic benchmark feeds: mixed RSS 2.0 and Atom, English and Korean, with duplicates.

``generate(directory, n)`` writes ``feed-0000.xml`` … and returns their names.
The same seed always gives the same bytes, so runs compare like with like.
Sizes follow the issue: 20-60 entries and 20-150 KB per feed; about one entry
in twenty is a story that also appears in another feed (same link and title),
so the cross-source deduplication has work to do.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

ENGLISH = (
    *("director", "premiere", "festival", "box", "office", "audience", "thriller", "drama"),
    *("release", "casting", "screenplay", "cinematographer", "distributor", "streaming"),
    *("independent", "documentary", "Busan", "Seoul", "award", "selection", "trailer"),
    *("sequel", "producer", "actress", "actor", "debut", "critics", "season"),
)
KOREAN = (
    *("영화", "감독", "배우", "개봉", "관객", "영화제", "작품", "제작", "배급", "흥행"),
    *("신작", "주연", "촬영", "시사회", "부산", "서울", "독립영화", "다큐멘터리", "수상"),
    *("예고편", "극장", "평론가", "데뷔", "장편"),
)
BASE_DATE = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _sentence(rng: random.Random, korean: bool) -> str:
    words = KOREAN if korean else ENGLISH
    text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 18)))
    return (text + ("다." if korean else ".")).capitalize()


def _body(rng: random.Random, korean: bool, size: int) -> str:
    paragraphs = []
    total = 0
    while total < size:
        para = " ".join(_sentence(rng, korean) for _ in range(rng.randint(3, 6)))
        paragraphs.append(f"<p>{para}</p>")
        total += len(para.encode())
    return "".join(paragraphs)


def _stories(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """A shared pool of (link, title) that several feeds publish."""
    return [
        (f"https://shared.example.kr/story/{n}", f"Shared story {n}: {_sentence(rng, False)}")
        for n in range(count)
    ]


def _feed(index: int, rng: random.Random, shared: list[tuple[str, str]]) -> str:
    atom = index % 2 == 1
    korean = index % 3 == 0
    entries = rng.randint(20, 60)
    target = rng.randint(20_000, 150_000)
    per_entry = max(200, target // entries - 400)
    host = f"outlet{index}.example.kr"
    parts = []
    for n in range(entries):
        if rng.random() < 0.05:
            link, title = rng.choice(shared)
        else:
            link, title = f"https://{host}/news/{n}", _sentence(rng, korean)[:90]
        when = BASE_DATE - timedelta(hours=n * 3 + index % 7)
        body = escape(_body(rng, korean, per_entry))
        if atom:
            parts.append(
                f"<entry><id>tag:{host},2026:{n}</id><title>{escape(title)}</title>"
                f'<link rel="alternate" href="{link}"/><updated>{when.isoformat()}</updated>'
                f"<published>{when.isoformat()}</published><author><name>Desk {index}</name>"
                f'</author><content type="html">{body}</content></entry>'
            )
        else:
            parts.append(
                f"<item><guid isPermaLink='false'>{host}-{n}</guid><title>{escape(title)}</title>"
                f"<link>{link}</link><pubDate>{format_datetime(when)}</pubDate>"
                f"<category>Film</category><description>{body}</description></item>"
            )
    if atom:
        return (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">'
            f"<title>Outlet {index}</title><id>tag:{host},2026:feed</id>"
            f'<link rel="alternate" href="https://{host}/"/>'
            f"<updated>{BASE_DATE.isoformat()}</updated>{''.join(parts)}</feed>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>Outlet {index}</title><link>https://{host}/</link>"
        f"<description>Korean film news {index}</description>{''.join(parts)}</channel></rss>"
    )


def generate(directory: Path, n_feeds: int, *, seed: int = 2026) -> list[str]:
    """Write ``n_feeds`` feeds into ``directory``; returns the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shared = _stories(rng, max(10, n_feeds // 5))
    names = []
    for index in range(n_feeds):
        name = f"feed-{index:04d}.xml"
        path = directory / name
        if not path.exists():
            feed_rng = random.Random(seed * 100_003 + index)
            path.write_text(_feed(index, feed_rng, shared), encoding="utf-8")
        names.append(name)
    return names
