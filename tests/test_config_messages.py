"""What an admin reads for a bad feeds.yaml, word for word, and the keys no other test maps.

test_config_mapping.py compares a file setting the common keys with the whole
expected :class:`Config`; this module covers the rest of the file (DKIM,
bounces, templates, per-language titles, the queue, the demo flag) and the
messages of the checks made after pydantic (duplicate ids, unknown sections,
the queue on SQLite, a DKIM key that cannot be read, a templates folder that
is not there, an empty file). Each message is compared whole, with its
``file:line: key:`` prefix, because that line is all `aggregator check`
prints. The documented defaults are compared with the literal values the
README's configuration example shows, not with the code's constants.

Each test here was added to kill a mutant that survived ``scripts/mutation
config``; the ones no test can kill are explained in
``tests/mutation-equivalents.md``.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.config import load_config, parse_config
from aggregator.errors import ConfigError, ConfigErrors
from aggregator.models import (
    BounceSettings,
    DigestSettings,
    DkimSettings,
    ImapSettings,
    ReturnPath,
)

SITE = "site: {title: Digest, url: 'https://d.example.org/'}\n"


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # The queue check and storage.url read DATABASE_URL first.
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    """A throw-away unencrypted RSA key (1024 bits: the smallest a DKIM key may be)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def refused(text: str, path: Path | None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=path)
    return caught.value


# ------------------------------------------------------------ keys test_config_mapping leaves out


def test_the_rest_of_the_file_reaches_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_pem: bytes
) -> None:
    conf = tmp_path / "conf"
    (conf / "theme").mkdir(parents=True)
    (conf / "theme" / "digest.txt.j2").write_text("{{ site.title }}\n", encoding="utf-8")
    (conf / "keys").mkdir()
    (conf / "keys" / "k.private").write_bytes(rsa_pem)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths are beside feeds.yaml, not here
    path = conf / "feeds.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            site:
              title: Digest
              url: https://d.example.org/
              language: ko
              templates: theme
            storage: {url: 'postgresql://digest@db/digest', queue: procrastinate}
            sections:
              - id: ko-pick
                title: {en: Ko-pick columns, ko: 코픽 칼럼}
              - id: previews
                title: {en: Film previews, ko-KR: 기대작}
            sources: []
            digest:
              subject: {en: "{site_title} weekly", ko: "{site_title} 주간"}
              other_section_title: {en: Other news, ko: 다른 소식}
              period: 14d
            smtp:
              host: smtp.example.org
              port: 465
              ssl: true
              dkim: {domain: Example.ORG, selector: kfd2026, key_file: keys/k.private}
            bounces:
              address: bounces@example.org
              verp_domain: bounce.example.org
              imap: {host: imap.example.org, username_env: IMAP_USER, password_env: IMAP_PASS,
                     folder: Bounces, timeout: 10s}
              soft_limit: 2
              soft_window_issues: 4
              poll: 30m
            subscribers: {expire_pending_after: 3d}
            demo: true
            """
        ),
        encoding="utf-8",
    )
    config = load_config(path)

    assert config.site.url == "https://d.example.org/"  # already ends in "/": kept as it is
    assert config.site.templates == str(conf / "theme")
    ko_pick, previews = config.sections
    # The site's language picks the main title; every language is kept.
    assert (ko_pick.title, ko_pick.titles) == (
        "코픽 칼럼",
        (("en", "Ko-pick columns"), ("ko", "코픽 칼럼")),
    )
    assert (previews.title, previews.titles) == (
        "기대작",
        (("en", "Film previews"), ("ko", "기대작")),
    )
    digest = config.digest
    assert (digest.subject, digest.subjects) == (
        "{site_title} 주간",
        (("en", "{site_title} weekly"), ("ko", "{site_title} 주간")),
    )
    assert (digest.other_section_title, digest.other_section_titles) == (
        "다른 소식",
        (("en", "Other news"), ("ko", "다른 소식")),
    )
    assert digest.period == timedelta(days=14)
    assert digest.sections == ("ko-pick", "previews")  # the default list: both exist
    assert (config.smtp.port, config.smtp.ssl, config.smtp.starttls) == (465, True, False)
    assert config.smtp.dkim == DkimSettings(
        domain="example.org", selector="kfd2026", key_file=str(conf / "keys" / "k.private")
    )
    assert config.smtp.return_path == ReturnPath(
        address="bounces@example.org", verp_domain="bounce.example.org"
    )
    assert config.bounces == BounceSettings(
        address="bounces@example.org",
        verp_domain="bounce.example.org",
        imap=ImapSettings(
            host="imap.example.org",
            port=993,  # TLS without a port: the IMAPS port
            username_env="IMAP_USER",
            password_env="IMAP_PASS",
            folder="Bounces",
            timeout=10.0,
        ),
        soft_limit=2,
        soft_window_issues=4,
        poll_interval=timedelta(minutes=30),
    )
    assert config.pending_expiry == timedelta(days=3)
    assert config.demo is True
    assert config.queue == "procrastinate"
    assert config.database_url == "postgresql://digest@db/digest"


def test_a_dkim_key_in_the_environment_is_not_read_by_the_file_check(tmp_path: Path) -> None:
    # The variable is not set here: it is checked where the sender starts, not by parse_config.
    config = parse_config(
        SITE + "sources: []\n"
        "smtp: {dkim: {domain: example.org, selector: s1, key_env: DKIM_PEM}}\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.smtp.dkim == DkimSettings(domain="example.org", selector="s1", key_env="DKIM_PEM")
    assert config.smtp.return_path is None and config.bounces is None


def test_bounces_without_a_mailbox_to_read(tmp_path: Path) -> None:
    config = parse_config(
        SITE + "sources: []\nbounces: {address: bounces@example.org}\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.bounces == BounceSettings(address="bounces@example.org")
    assert config.smtp.return_path == ReturnPath(address="bounces@example.org")


def test_a_templates_folder_without_a_file_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "theme").mkdir()
    (tmp_path / "theme" / "home.html.j2").write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = parse_config("site: {title: T, templates: theme}\nsources: []\n")
    assert config.site.templates == str(tmp_path / "theme")


@pytest.mark.parametrize(
    ("language", "titles", "chosen"),
    [
        ("ko-KR", "{en: Previews, ko: 기대작}", "기대작"),  # the site's language, region aside
        ("ja", "{ko: 기대작, en: Previews}", "Previews"),  # not given: English
        ("fr", "{ko: 기대작, ja: 期待作}", "기대작"),  # neither: the first given
    ],
)
def test_a_per_language_title_in_the_site_language_else_english_else_the_first(
    language: str, titles: str, chosen: str, tmp_path: Path
) -> None:
    config = parse_config(
        f"site: {{title: T, language: {language}}}\nsources: []\n"
        f"sections:\n  - {{id: previews, title: {titles}}}\n"
        f"digest: {{subject: {titles}, other_section_title: {titles}}}\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.sections[0].title == chosen
    assert config.digest.subject == chosen
    assert config.digest.other_section_title == chosen


def test_the_default_digest_sections_are_the_ones_defined(tmp_path: Path) -> None:
    # The README's digest.sections default is [ko-pick, previews]; a site that
    # defines only one of them gets that one, and no error for the other.
    config = parse_config(
        SITE + "sections:\n  - {id: previews, title: Film previews}\n"
        "  - {id: reviews, title: Reviews}\nsources: []\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.digest.sections == ("previews",)


def test_other_news_left_out_with_an_empty_title(tmp_path: Path) -> None:
    # README: "other_section_title: ...  # empty to leave other news out"
    config = parse_config(
        SITE + "sources: []\ndigest:\n  other_section_title:\n", path=tmp_path / "feeds.yaml"
    )
    assert (config.digest.other_section_title, config.digest.other_section_titles) == (None, ())


def test_the_documented_defaults_read_as_the_readme_shows_them(tmp_path: Path) -> None:
    """The values the README's feeds.yaml example and Deliverability block write out."""
    config = parse_config(
        SITE + "sources: [{id: a, url: 'https://a.example.org/feed'}]\n"
        "bounces:\n  verp_domain: example.org\n"
        "  imap: {host: imap.example.org, tls: false, username_env: U, password_env: P}\n",
        path=tmp_path / "feeds.yaml",
    )
    assert config.digest == DigestSettings(
        schedule_day="mon",
        schedule_time="09:00",
        subject="{site_title}: week of {period_start:%b %d, %Y}",
        sections=(),  # [ko-pick, previews], but this site defines neither
        other_section_title="More Korean film news",
        max_items_per_section=10,
        when_empty="skip",
        period=timedelta(days=7),
    )
    # defaults: "max_items: 500  # entries kept per fetch (1-10000)"
    assert config.sources[0].max_items == 500
    assert config.web.trusted_proxies == ()  # "(default: none)"
    assert config.pending_expiry == timedelta(days=7)
    assert config.queue == "none"
    assert config.demo is False
    assert config.site.templates is None
    assert config.bounces is not None
    assert (config.bounces.soft_limit, config.bounces.soft_window_issues) == (3, 5)
    assert config.bounces.poll_interval == timedelta(minutes=15)
    # Without TLS and a port: plain IMAP on 143; the folder INBOX, a 30 s timeout.
    assert config.bounces.imap == ImapSettings(
        host="imap.example.org",
        port=143,
        username_env="U",
        password_env="P",
        tls=False,
        folder="INBOX",
        timeout=30.0,
    )
    assert config.smtp.return_path == ReturnPath(verp_domain="example.org")


# ---------------------------------------------------------------- messages, word for word


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "the file is empty: it needs at least site: and sources: "),
        ("# every line commented out\n", 1, "the file is empty: "),
        ("---\n", 1, "the file is empty: "),
    ],
)
def test_an_empty_file_is_refused_at_line_one(
    text: str, line: int, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "feeds.yaml"
    error = refused(text, path)
    assert str(error).startswith(f"{path}:{line}: {message}"), str(error)
    assert str(error).endswith("(see the feeds.yaml shipped with the project)")


@pytest.mark.parametrize("text", ["hello\n", "[site, sources]\n", "'site: x'\n"])
def test_a_top_level_that_is_not_a_mapping_says_so(text: str, tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    assert str(refused(text, path)) == (
        f"{path}: the top level must be a mapping (site:, sources:, ...)"
    )


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    error = refused(SITE + "sources:\n  - id: a\n    title: A\n", path)
    assert str(error) == f"{path}:3: sources[0].url: required key is missing"
    # One problem is one ConfigError with its own place, not a list of one.
    assert type(error) is ConfigError
    assert (error.line, error.key) == (3, "sources[0].url")


def test_several_problems_come_in_line_order_whatever_the_order_of_the_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "feeds.yaml"
    text = (
        "sources:\n  - {id: a, url: 'https://a/', interval: soon}\n"
        "digest: {when_empty: never}\n"
        "site: {title: T, url: 'ftp://x/'}\n"
    )
    error = refused(text, path)
    assert isinstance(error, ConfigErrors)
    assert [(e.line, e.key) for e in error.errors] == [
        (2, "sources[0].interval"),
        (3, "digest.when_empty"),
        (4, "site.url"),
    ]
    assert str(error).splitlines()[0] == (
        f'{path}:2: sources[0].interval: "soon" is not a duration (use e.g. 30m, 1h, 1h30m, 2d)'
    )


def test_a_duplicate_source_id_points_at_its_id_line_and_the_first_use(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    text = SITE + (
        "sources:\n"
        "  - id: a\n    url: https://a.example.org/feed\n"
        "  - id: b\n    url: https://b.example.org/feed\n"
        "  - url: https://c.example.org/feed\n    title: C\n    id: a\n"
    )
    error = refused(text, path)
    assert str(error) == (
        f'{path}:9: sources[2].id: duplicate source id "a" (first used in sources[0])'
    )
    assert type(error) is ConfigError
    assert (error.line, error.key) == (9, "sources[2].id")


@pytest.mark.parametrize(
    ("sections", "defined"),
    [
        ("", "none"),
        ("sections:\n  - {id: reviews, title: R}\n  - {id: news, title: N}\n", "news, reviews"),
    ],
)
def test_an_unknown_digest_section_lists_the_defined_ones(
    sections: str, defined: str, tmp_path: Path
) -> None:
    path = tmp_path / "feeds.yaml"
    text = SITE + sections + "sources: []\ndigest:\n  sections:\n    - interviews\n"
    error = refused(text, path)
    line = text.count("\n")  # the last line
    assert str(error) == (
        f'{path}:{line}: digest.sections[0]: unknown section "interviews" (defined: {defined})'
    )


def test_procrastinate_on_sqlite_is_refused_at_the_queue_line(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    error = refused(SITE + "storage:\n  url: sqlite:///x.db\n  queue: procrastinate\n", path)
    assert str(error) == (
        f"{path}:4: storage.queue: procrastinate needs PostgreSQL, but the database is sqlite "
        "(set storage.url or DATABASE_URL to a postgresql:// URL, or use queue: none)"
    )


def test_procrastinate_accepts_both_postgresql_url_schemes(tmp_path: Path) -> None:
    for url in ("postgresql://digest@db/digest", "postgres://digest@db/digest"):
        config = parse_config(
            SITE + f"storage: {{url: '{url}', queue: procrastinate}}\nsources: []\n",
            path=tmp_path / "feeds.yaml",
        )
        assert (config.queue, config.database_url) == ("procrastinate", url)


def test_the_queue_error_names_the_database_kind_not_its_password(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    error = refused(
        SITE + "storage: {url: 'mysql://digest:s3cret@db:3306/digest', queue: procrastinate}\n",
        path,
    )
    assert str(error) == (
        f"{path}:2: storage.queue: procrastinate needs PostgreSQL, but the database is mysql "
        "(set storage.url or DATABASE_URL to a postgresql:// URL, or use queue: none)"
    )


def test_a_dkim_key_variable_must_be_a_variable_name(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    text = SITE + "smtp:\n  dkim:\n    domain: example.org\n    selector: s1\n    key_env: 1-KEY\n"
    assert str(refused(text, path)) == (
        f'{path}:6: smtp.dkim.key_env: "1-KEY" is not an environment variable name '
        "(e.g. IMAP_PASSWORD)"
    )


def test_a_dkim_key_file_that_cannot_be_read_is_named_beside_the_config(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    text = SITE + "smtp:\n  dkim:\n    domain: example.org\n    selector: s1\n    key_file: k.pem\n"
    error = refused(text, path)
    assert str(error) == (
        f"{path}:6: smtp.dkim.key_file: cannot read the DKIM key {tmp_path / 'k.pem'}: "
        "No such file or directory"
    )


def test_without_a_file_a_relative_dkim_key_is_looked_for_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_pem: bytes
) -> None:
    monkeypatch.chdir(tmp_path)
    text = SITE + "smtp: {dkim: {domain: example.org, selector: s1, key_file: k.pem}}\n"
    assert str(refused(text, None)) == (
        f"<config>:2: smtp.dkim.key_file: cannot read the DKIM key {tmp_path / 'k.pem'}: "
        "No such file or directory"
    )
    (tmp_path / "k.pem").write_bytes(rsa_pem)
    dkim = parse_config(text).smtp.dkim
    assert dkim is not None and dkim.key_file == str(tmp_path / "k.pem")


def test_a_templates_folder_that_is_not_there_is_named_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (tmp_path / "theme").mkdir()  # the same name in the working directory does not count
    (tmp_path / "theme" / "digest.txt.j2").write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    path = conf / "feeds.yaml"
    text = "site:\n  title: Digest\n  templates: theme\nsources: []\n"
    error = refused(text, path)
    assert str(error) == f"{path}:3: site.templates: {conf / 'theme'} is not a directory"
    assert type(error) is ConfigError
    assert (error.line, error.key) == (3, "site.templates")


def test_a_non_utf8_byte_after_a_blank_first_line_is_on_line_two(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_bytes(b"\nsite: {title: \xff}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:2: not UTF-8 text (byte 0xff); save it as UTF-8"


def test_max_items_takes_the_documented_range_1_to_10000(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"

    def text(value: int) -> str:
        return SITE + f"defaults:\n  max_items: {value}\nsources: []\n"

    for value in (1, 10000):
        assert parse_config(text(value), path=path).sources == ()
    assert str(refused(text(10001), path)) == (
        f"{path}:3: defaults.max_items: Input should be less than or equal to 10000"
    )
    assert str(refused(text(0), path)) == (
        f"{path}:3: defaults.max_items: Input should be greater than or equal to 1"
    )
