"""feeds.yaml validation: every problem names file, line and key; good files load."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config import load_config, parse_config, parse_duration, parse_schedule
from aggregator.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_feeds_yaml_is_valid() -> None:
    config = load_config(REPO / "feeds.yaml")
    ids = [s.id for s in config.sources]
    assert "kobiz-kopick" in ids
    assert any(s.type == "html" for s in config.sources)
    assert any(s.type == "feed" for s in config.sources)
    assert [s.id for s in config.sections] == ["ko-pick", "previews"]


def test_bad_duration_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n"
        "  - id: one\n"
        "    url: https://example.org/a.xml\n"
        "  - id: two\n"
        "    url: https://example.org/b.xml\n"
        "    interval: fortnightly\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f'{path}:6: sources[1].interval: "fortnightly" is not a duration '
        "(use e.g. 30m, 1h, 1h30m, 2d)"
    )


def test_unknown_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "site:\n  title: X\n  titel: Y\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:3: site.titel: unknown key" in str(info.value)


def test_several_problems_are_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n"
        "  - id: a\n"
        "    url: ftp://example.org/\n"
        "  - id: b\n"
        "    url: https://example.org/\n"
        "    type: html\n",
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}:3: sources[0].url:")
    assert lines[1].startswith(f"{path}:4: sources[1]:")
    assert "select" in lines[1]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "site:\n  title: [unclosed\nsources: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:")
    assert "YAML syntax error" in str(info.value)


def test_duplicate_ids_and_unknown_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sections:\n"
        "  - {id: ko-pick, title: Ko-pick}\n"
        "sources:\n"
        "  - {id: a, url: 'https://example.org/1'}\n"
        "  - {id: a, url: 'https://example.org/2'}\n"
        "digest:\n"
        "  sections: [ko-pick, nope]\n",
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    text = str(info.value)
    assert f'{path}:5: sources[1].id: duplicate source id "a"' in text
    assert f'{path}:7: digest.sections[1]: unknown section "nope"' in text


def test_duplicate_key_in_a_block(tmp_path: Path) -> None:
    path = write(tmp_path, "site:\n  title: A\n  title: B\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f'{path}:3: site.title: key "title" appears twice' in str(info.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)


def test_defaults_apply_and_database_url_is_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    path = write(
        tmp_path,
        "defaults: {interval: 2h, timeout: 5s, timezone: Europe/Paris}\n"
        "sources:\n  - {id: a, url: 'https://example.org/1', interval: 30m}\n"
        "  - {id: b, url: 'https://example.org/2'}\n",
    )
    config = load_config(path)
    a, b = config.sources
    assert a.interval == timedelta(minutes=30)
    assert b.interval == timedelta(hours=2)
    assert b.timeout == 5.0
    assert b.timezone == "Europe/Paris"
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'aggregator.db'}"


def test_database_url_from_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    config = load_config(write(tmp_path, "site: {title: X}\n"))
    assert config.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1h30m", 5400), ("2d", 172800), (45, 45), ("1w", 604800)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "fortnightly", "10 parsecs", "-5s", "0s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_schedule_uses_day_names_not_cron_numbers() -> None:
    assert parse_schedule("mon 09:00") == ("mon", 9, 0)
    assert parse_schedule("Friday 18:30") == ("fri", 18, 30)
    with pytest.raises(ValueError):
        parse_schedule("1 09:00")
    with pytest.raises(ValueError):
        parse_schedule("mon 25:00")


def test_bad_regex_and_timezone(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(
            "site: {timezone: Mars/Olympus}\n"
            "sections:\n  - {id: x, title: X, match: {title: '('}}\n",
            path=tmp_path / "f.yaml",
        )
    text = str(info.value)
    assert "site.timezone" in text and "not a known time zone" in text
    assert "sections[0].match.title" in text and "invalid regular expression" in text


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]

    config = parse_config(example, path=tmp_path / "feeds.yaml")

    assert [s.id for s in config.sources] == ["kobiz-kopick", "yonhap-culture"]
    assert config.source("kobiz-kopick").select is not None


def test_the_shipped_feeds_yaml_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "feeds.yaml")
    assert {"kobiz-kopick", "kobiz-news"} <= {s.id for s in config.sources}
