"""Every key of feeds.yaml reaches the running configuration, with the value written.

test_config.py checks validation (what is refused, and how the error reads);
here a file that sets every key to a non-default value is compared with the
whole expected :class:`Config`, field by field, and a minimal file with the
documented defaults and fallbacks. A key that is parsed but dropped on the way
(or mixed up with a neighbour) fails here.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config import (
    Config,
    load_config,
    parse_config,
    parse_duration,
    parse_schedule,
    resolve_database_url,
)
from aggregator.errors import ConfigError
from aggregator.models import (
    DigestSettings,
    SectionRule,
    Selectors,
    Site,
    SmtpSettings,
    Source,
    WebSettings,
)

FULL = """\
site:
  title: Korean Film Digest
  url: https://digest.example.org/news
  description: Weekly Korean film news.
  language: ko
  timezone: Europe/Berlin
  postal_address: 130 Suyeonggangbyeon-daero, Busan
  author_name: Desk
  author_email: desk@example.org
  sender_email: digest@example.org
  sender_name: The Digest
  hub: https://hub.example.org/
  feed_size: 42
  output_dir: out
defaults:
  interval: 2h
  timeout: 15s
  timezone: Asia/Tokyo
  max_items: 77
storage:
  url: sqlite:///db/agg.db
sections:
  - id: ko-pick
    title: Ko-pick columns
    match: {title: "^Ko-pick", text: "column", sources: [kobiz], category: "opinion"}
  - {id: previews, title: Film previews, match: {title: preview}}
sources:
  - id: kobiz
    title: KoBiz Ko-pick
    type: html
    url: https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp?blbdComCd=601029
    interval: 6h
    timeout: 40s
    section: ko-pick
    identity_params: [blbdComCd, seq]
    drop_params: [pageIndex]
    max_pages: 3
    max_items: 12
    timezone: Asia/Seoul
    date_format: "%Y.%m.%d"
    full_text: true
    enabled: false
    encoding: euc-kr
    priority: 5
    language: ko
    select:
      item: "ul.list > li"
      title: "p.tit a"
      link: "p.tit a@href"
      summary: "p.txt"
      date: "span.date"
      image: "img@src"
      author: "span.writer"
      next_page: "a.next@href"
  - id: yonhap
    url: https://en.yna.co.kr/RSS/culture.xml
digest:
  schedule: "thu 18:05"
  subject: "{site_title} weekly"
  sections: [previews, ko-pick]
  other_section_title: Other news
  max_items_per_section: 7
  when_empty: note
smtp:
  host: smtp.example.org
  port: 2525
  starttls: true
  username_env: RELAY_USER
  password_env: RELAY_PASSWORD
  timeout: 45s
  rate: 2.5
  max_attempts: 5
web:
  trusted_proxies: [10.0.0.0/8, 192.168.1.7]
"""


def test_every_key_reaches_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    path = tmp_path / "feeds.yaml"
    config = parse_config(FULL, path=path)
    expected_site = Site(
        title="Korean Film Digest",
        url="https://digest.example.org/news/",  # a trailing slash added for links
        description="Weekly Korean film news.",
        language="ko",
        timezone="Europe/Berlin",
        postal_address="130 Suyeonggangbyeon-daero, Busan",
        author_name="Desk",
        author_email="desk@example.org",
        sender_email="digest@example.org",
        sender_name="The Digest",
        hub_url="https://hub.example.org/",
        feed_size=42,
        output_dir=config.site.output_dir,
        templates=None,
    )
    assert config.site == expected_site
    assert Path(config.site.output_dir).name == "out"
    kobiz = Source(
        id="kobiz",
        url="https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp?blbdComCd=601029",
        type="html",
        title="KoBiz Ko-pick",
        interval=timedelta(hours=6),
        timeout=40.0,
        select=Selectors(
            item="ul.list > li",
            title="p.tit a",
            link="p.tit a@href",
            summary="p.txt",
            date="span.date",
            image="img@src",
            author="span.writer",
            next_page="a.next@href",
        ),
        identity_params=("blbdComCd", "seq"),
        drop_params=("pageIndex",),
        timezone="Asia/Seoul",
        date_format="%Y.%m.%d",
        max_pages=3,
        max_items=12,
        full_text=True,
        section="ko-pick",
        enabled=False,
        encoding="euc-kr",
        priority=5,
        language="ko",
    )
    yonhap = Source(
        id="yonhap",
        url="https://en.yna.co.kr/RSS/culture.xml",
        interval=timedelta(hours=2),  # from defaults
        timeout=15.0,
        timezone="Asia/Tokyo",
        max_items=77,
    )
    assert config.sources == (kobiz, yonhap)
    assert config.sections == (
        SectionRule(
            id="ko-pick",
            title="Ko-pick columns",
            title_pattern="^Ko-pick",
            text_pattern="column",
            source_ids=("kobiz",),
            category_pattern="opinion",
        ),
        SectionRule(id="previews", title="Film previews", title_pattern="preview"),
    )
    assert config.digest == DigestSettings(
        schedule_day="thu",
        schedule_time="18:05",
        subject="{site_title} weekly",
        sections=("previews", "ko-pick"),
        other_section_title="Other news",
        max_items_per_section=7,
        when_empty="note",
        period=config.digest.period,
    )
    assert config.smtp == SmtpSettings(
        host="smtp.example.org",
        port=2525,
        starttls=True,
        ssl=False,
        username_env="RELAY_USER",
        password_env="RELAY_PASSWORD",
        timeout=45.0,
        rate_per_second=2.5,
        max_attempts=5,
    )
    assert config.web == WebSettings(
        trusted_proxies=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.7/32"),
        )
    )
    assert config.database_url == f"sqlite:///{tmp_path / 'db' / 'agg.db'}"
    assert config.queue == "none"
    assert config.path == path


def test_minimal_file_gets_the_documented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config: Config = parse_config(
        "site: {title: Digest, url: 'https://d.example.org'}\n"
        "sources:\n  - {id: a, url: 'https://a.example.org/feed'}\n",
        path=tmp_path / "feeds.yaml",
    )
    site = config.site
    assert (site.url, site.author_name, site.sender_name) == (
        "https://d.example.org/",
        "Digest",  # both fall back to the title
        "Digest",
    )
    assert (site.language, site.timezone, site.feed_size) == ("en", "Asia/Seoul", 100)
    [source] = config.sources
    assert (source.type, source.interval, source.timeout) == ("feed", timedelta(hours=1), 20.0)
    assert (source.timezone, source.max_pages, source.enabled, source.priority) == (
        "Asia/Seoul",
        1,
        True,
        0,
    )
    assert (config.digest.schedule_day, config.digest.schedule_time) == ("mon", "09:00")
    assert config.digest.sections == ()  # the defaults name no section that does not exist
    assert (config.digest.max_items_per_section, config.digest.when_empty) == (10, "skip")
    # The README's example sets 587 and STARTTLS; unset, it is plain port 25, unlimited.
    assert (config.smtp.port, config.smtp.starttls, config.smtp.max_attempts) == (25, False, 3)
    assert config.smtp.rate_per_second == 0.0
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'aggregator.db'}"


def test_database_url_from_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://digest@db/digest")
    config = parse_config(
        "site: {title: D, url: 'https://d.example.org/'}\nstorage: {url: 'sqlite:///x.db'}\n"
        "sources: []\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.database_url == "postgresql://digest@db/digest"


# ------------------------------------------------------- syntax errors and reading the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "site: {title: T, url: 'https://x/'\nsources: []\n",
            ':1: YAML syntax error: a mapping opened with "{" starts here and is never closed'
            " (expected ',' or '}', but got '<scalar>' at line 2)",
        ),
        (
            "site: {title: T, url: 'https://x/'}\nsources: [\n  {id: a, url: 'https://a/'}\n",
            ':2: YAML syntax error: a list opened with "[" starts here and is never closed'
            " (expected ',' or ']', but got '<stream end>' at line 4)",
        ),
        (
            "site: {title: T, url: 'https://x/'}\nsources:\n  - {id: a, url: 'https://a/'}\n"
            "   - {id: b, url: 'https://b/'}\n",
            ":4: YAML syntax error: this line is indented differently from the lines above it"
            " (the block starting at line 3)",
        ),
        ("site:\n\ttitle: T\n", ":2: YAML syntax error: found character '\\t' that cannot start"),
        (
            "site: {title: 'T, url: https://x/}\nsources: []\n",
            ":1: YAML syntax error: a quoted string starts here and is never closed"
            " (found unexpected end of stream at line 3)",
        ),
    ],
)
def test_a_yaml_syntax_error_points_at_the_line_to_fix(
    text: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "feeds.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=path)
    assert str(caught.value).startswith(f"{path}{message}")


def test_reading_the_file_missing_not_utf8_bom_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: file not found (create it, or pass --config PATH)"

    korean = tmp_path / "cp949.yaml"
    korean.write_bytes("site: {title: '한국', url: 'https://x/'}\nsources: []\n".encode("cp949"))
    with pytest.raises(ConfigError) as caught:
        load_config(korean)
    assert str(caught.value) == (
        f"{korean}:1: not UTF-8 text (byte 0xc7); it looks like CP949/EUC-KR: save it as UTF-8"
    )
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"site: {title: T}\nsources: []\n# \xff\xfe\xfd\n")
    with pytest.raises(ConfigError) as caught:
        load_config(garbage)
    assert str(caught.value) == f"{garbage}:3: not UTF-8 text (byte 0xff); save it as UTF-8"

    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffsite: {title: BOM, url: 'https://x/'}\nsources: []\n".encode())
    assert load_config(bom).site.title == "BOM"
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(bom))
    assert load_config().path == bom


# --------------------------------------------------------------- values at their edges


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(1, 1), ("1s", 1), ("1 h 30 m", 5400), ("2D", 172800), (" 45m ", 2700)],
)
def test_durations_down_to_one_second(value: object, seconds: int) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", '"0s" is not a duration (use e.g. 30m, 1h, 1h30m, 2d)'),
        ("", '"" is not a duration (use e.g. 30m, 1h, 1h30m, 2d)'),
        ("1h x", '"1h x" is not a duration (use e.g. 30m, 1h, 1h30m, 2d)'),
        (0, "0 is not a positive duration"),
    ],
)
def test_durations_that_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


def test_schedule_times_from_00_00_to_23_59() -> None:
    assert parse_schedule("mon 23:59") == ("mon", 23, 59)
    assert parse_schedule("sun 00:00") == ("sun", 0, 0)
    assert parse_schedule("fri 23:00") == ("fri", 23, 0)
    for impossible in ("mon 24:00", "mon 23:60"):
        with pytest.raises(ValueError) as caught:
            parse_schedule(impossible)
        assert str(caught.value) == f'"{impossible}" has an impossible time'
    with pytest.raises(ValueError) as caught:
        parse_schedule("someday")
    assert (
        str(caught.value) == '"someday" is not a schedule (use a day and a time, e.g. "mon 09:00")'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "site: {title: T, url: ftp://x/}\nsources: []\n",
            ':1: site.url: "ftp://x/" is not an http(s) URL',
        ),
        (
            "site: {title: T, url: https://x/, colour: red}\nsources: []\n",
            ":1: site.colour: unknown key (check the spelling; see README for the allowed keys)",
        ),
        (
            "site: {title: T, url: https://x/}\ndigest: {schedule: 'mon 25:00'}\nsources: []\n",
            ':2: digest.schedule: "mon 25:00" has an impossible time',
        ),
    ],
)
def test_refused_values_read_as_documented(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=path)
    assert str(caught.value) == f"{path}{message}"


def test_a_trusted_proxy_given_with_host_bits_is_its_network(tmp_path: Path) -> None:
    config = parse_config(
        "site: {title: T, url: https://x/}\nweb: {trusted_proxies: [192.168.1.7/24]}\n"
        "sources: []\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.web.trusted_proxies == (ipaddress.ip_network("192.168.1.0/24"),)


def test_sqlite_urls_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config_path = tmp_path / "conf" / "feeds.yaml"
    assert resolve_database_url("sqlite:///:memory:", config_path) == "sqlite:///:memory:"
    assert resolve_database_url("sqlite:////abs/x.db", config_path) == "sqlite:////abs/x.db"
    assert resolve_database_url("sqlite:///rel.db", config_path) == (
        f"sqlite:///{tmp_path / 'conf' / 'rel.db'}"
    )
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url("sqlite:///rel.db", None) == f"sqlite:///{tmp_path / 'rel.db'}"
    assert resolve_database_url(None, config_path) == (
        f"sqlite:///{tmp_path / 'conf' / 'data' / 'aggregator.db'}"
    )


def test_text_without_a_file_is_named_config_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("site: {title: T, url: ftp://x/}\nsources: []\n")
    assert str(caught.value) == '<config>:1: site.url: "ftp://x/" is not an http(s) URL'
