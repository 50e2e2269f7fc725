"""``aggregator opml import|export`` on real feeds.yaml files, through the command line."""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from aggregator.config import load_config
from aggregator.opml import source_id
from tests.support.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def opml(*outlines: tuple[str | None, str]) -> str:
    body = "".join(
        f"<outline {'title=' + quoteattr(t) if t is not None else ''} xmlUrl={quoteattr(u)}/>\n"
        for t, u in outlines
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<opml version="2.0"><head><title>x</title>'
        f'</head><body><outline text="folder">\n{body}</outline></body></opml>\n'
    )


def import_into(tmp_path: Path, config_text: str, opml_text: str) -> tuple[Path, str]:
    config = tmp_path / "feeds.yaml"
    config.write_text(config_text, encoding="utf-8")
    source = tmp_path / "in.opml"
    source.write_text(opml_text, encoding="utf-8")
    result = run_cli("-c", str(config), "opml", "import", str(source))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return config, " ".join(result.output.split())


def assert_kept_in_order(before: str, after: str) -> None:
    """Every line of ``before`` is still in ``after``, unchanged and in the same order."""
    lines = iter(after.splitlines())
    for line in before.splitlines():
        assert any(line == candidate for candidate in lines), f"lost or changed: {line!r}"


def checks(config: Path) -> None:
    result = run_cli("-c", str(config), "check")
    assert result.exit_code == 0, result.output


NEW = opml(
    ("씨네21 뉴스", "http://www.cine21.com/rss/news"),
    ("Busan Film Festival", "https://www.biff.kr/rss"),
)


def test_import_into_the_shipped_feeds_yaml_keeps_every_line(tmp_path: Path) -> None:
    shipped = (REPO / "feeds.yaml").read_text(encoding="utf-8")
    config, out = import_into(tmp_path, shipped, NEW)
    after = config.read_text(encoding="utf-8")
    assert_kept_in_order(shipped, after)
    assert len(after.splitlines()) == len(shipped.splitlines()) + 6  # two entries, 3 lines each
    comments = [ln for ln in shipped.splitlines() if ln.lstrip().startswith("#")]
    assert comments and all(c in after.splitlines() for c in comments)
    checks(config)
    ids = [s.id for s in load_config(config).sources]
    assert ids[-2:] == ["ssine21-nyuseu", "busan-film-festival"]
    assert "added 2 sources" in out
    # The blank line that separated sources: from digest: still does.
    assert "    title: Busan Film Festival\n\ndigest:" in after


HEAD = "site:\n  title: T\n  url: https://t.example/\n"
LAYOUTS = {
    "dash indented": HEAD + "sources:\n  - id: a\n    url: https://a.example/f\n",
    "dash at key column": HEAD + "sources:\n- id: a\n  url: https://a.example/f\n",
    "four spaces": "site:\n    title: T\n    url: https://t.example/\nsources:\n    -   id: a\n"
    "        url: https://a.example/f\n",
    "end-of-line comment": HEAD
    + "sources:\n  - id: a\n    url: https://a.example/f  # the main one\n\n# mail\ndigest:\n"
    "  schedule: mon 09:00\n",
    "comment block after": HEAD
    + "sources:\n  - id: a\n    url: https://a.example/f\n"
    + "\n  # more to come\n\n# the digest\ndigest: {schedule: mon 09:00}\n",
    "nested last value": HEAD + "sources:\n  - id: a\n    type: html\n    url: https://a.example/\n"
    "    select:\n      item: li\n      title: a   # link text\n\nsmtp:\n  port: 2525\n",
    "flow items": HEAD
    + "sources:\n  - {id: a, url: 'https://a.example/f'}   # one\n\ndigest: {}\n",
    "no sources key": HEAD + "# no feeds yet\n",
    "empty sources": HEAD + "sources:\n# none yet\n",
    "empty flow list": HEAD + "sources: []\n",
    "sources first": "sources:\n  - id: a\n    url: https://a.example/f\n\n" + HEAD,
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_import_keeps_each_layout_and_loads(tmp_path: Path, layout: str) -> None:
    before = LAYOUTS[layout]
    config, _ = import_into(tmp_path, before, NEW)
    after = config.read_text(encoding="utf-8")
    if "[]" not in before and "sources:\n#" not in before:
        assert_kept_in_order(before, after)
    checks(config)
    urls = [s.url for s in load_config(config).sources]
    assert urls[-2:] == ["http://www.cine21.com/rss/news", "https://www.biff.kr/rss"]
    for comment in re.findall(r"#[^\n]*", before):
        assert comment in after


HANGUL_TITLES = [
    "씨네21 뉴스",
    "영화진흥위원회",
    "맥스무비 - 영화 뉴스",
    "KOFIC 영화 소식",
    "부산국제영화제!!",
    "한국영상자료원 KOFA",
    "뉴스",
    "뉴스",  # the same title twice
    "ㅋㅋ",  # jamo only, no syllables
    "2024",  # digits only
    "映画ニュース",  # a script we do not spell
    "",
    None,
    "Ünïcödé Fïlm",
    "-" * 70,
    "가" * 80,
    "Cine21: 뉴스 #1 'quoted' \"double\"",  # YAML-significant characters in a title
    "null",
    "yes",
]


def test_non_ascii_titles_give_valid_unique_readable_ids(tmp_path: Path) -> None:
    outlines = [(t, f"https://news{n}.example.kr/rss") for n, t in enumerate(HANGUL_TITLES)]
    config, _ = import_into(tmp_path, LAYOUTS["dash indented"], opml(*outlines))
    checks(config)
    ids = [s.id for s in load_config(config).sources][1:]
    assert len(ids) == len(HANGUL_TITLES) == len(set(ids))
    assert all(_ID.match(i) for i in ids), ids
    assert all(re.search("[a-z]", i) for i in ids), ids
    assert ids[0] == "ssine21-nyuseu"
    assert ids[1] == "yeonghwajinheungwiwonhoe"
    assert ids[6:8] == ["nyuseu", "nyuseu-2"]
    assert ids[10] == "news10-example-kr"  # Japanese title: the host name instead
    assert ids[13] == "unicode-film"
    assert ids[16:] == ["cine21-nyuseu-1-quoted-double", "null", "yes"]
    # Titles come back exactly as the OPML had them, as strings.
    titles = [s.title for s in load_config(config).sources][1:]
    assert titles == [t or None for t in HANGUL_TITLES]


def test_source_id_never_reuses_a_taken_id() -> None:
    taken = {"ssine21-nyuseu", "ssine21-nyuseu-2"}
    assert source_id("씨네21 뉴스", "http://www.cine21.com/rss", taken) == "ssine21-nyuseu-3"
    assert source_id(None, "http://www.cine21.com/rss", taken) == "cine21-com"
    assert source_id(None, "http://www.cine21.com/other", taken) == "cine21-com-2"


def test_configured_and_repeated_urls_are_skipped(tmp_path: Path) -> None:
    shipped = (REPO / "feeds.yaml").read_text(encoding="utf-8")
    again = opml(
        ("Yonhap", "https://en.yna.co.kr/RSS/culture.xml"),
        ("New", "https://new.example/rss"),
        ("New again", "https://new.example/rss"),
    )
    config, out = import_into(tmp_path, shipped, again)
    urls = [s.url for s in load_config(config).sources]
    assert urls.count("https://en.yna.co.kr/RSS/culture.xml") == 1
    assert urls.count("https://new.example/rss") == 1
    assert "added 1 sources" in out and "skipped 2 feeds already configured" in out
    # Importing the same file twice adds nothing and leaves the file untouched.
    before = config.read_bytes()
    _, out = import_into(tmp_path, config.read_text(encoding="utf-8"), again)
    assert "added 0 sources" in out
    assert config.read_bytes() == before


def test_an_import_that_would_break_the_config_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    original = (REPO / "feeds.yaml").read_bytes()
    config.write_bytes(original)
    bad = tmp_path / "bad.opml"
    bad.write_text(opml(("FTP", "ftp://files.example/feed.xml")), encoding="utf-8")
    result = run_cli("-c", str(config), "opml", "import", str(bad))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "left unchanged" in " ".join(result.output.split())
    assert config.read_bytes() == original
    # No temporary file is left behind.
    assert {p.name for p in tmp_path.iterdir()} == {"feeds.yaml", "bad.opml"}


def test_broken_opml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(LAYOUTS["dash indented"], encoding="utf-8")
    broken = tmp_path / "broken.opml"
    broken.write_text("<opml>\n<body>\n<outline xmlUrl='x'>\n</opml>\n", encoding="utf-8")
    result = run_cli("-c", str(config), "opml", "import", str(broken))
    assert result.exit_code == 2
    assert f"{broken}:4" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_export_names_the_sources_it_leaves_out_and_round_trips(tmp_path: Path) -> None:
    shipped = tmp_path / "feeds.yaml"
    shipped.write_bytes((REPO / "feeds.yaml").read_bytes())
    result = run_cli("-c", str(shipped), "opml", "export")
    assert result.exit_code == 0
    assert "left out 2 HTML listings" in result.stderr
    assert "kobiz-kopick" in result.stderr and "kobiz-news" in result.stderr
    feeds = [s for s in load_config(shipped).sources if s.type == "feed"]

    empty = tmp_path / "other"
    empty.mkdir()
    config, _ = import_into(empty, HEAD + "sources: []\n", result.stdout)
    again = load_config(config).sources
    assert [(s.url, s.title) for s in again] == [(s.url, s.title) for s in feeds]
