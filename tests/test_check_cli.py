"""``aggregator check`` refuses what ``run`` would refuse, with file:line and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import run_cli

GOOD_HEAD = "site:\n  title: Digest\n  url: https://digest.example.org/\n"
SOURCE = "sources:\n  - id: one\n    url: https://example.org/a.xml\n"


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_cli("-c", str(path), "check")
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())  # undo rich's wrapping


def located(output: str, tmp_path: Path) -> int:
    """The line number of the first ``file:line:`` the output names."""
    match = re.search(re.escape(str(tmp_path / "feeds.yaml")) + r":(\d+):", output)
    assert match, output
    return int(match.group(1))


@pytest.mark.parametrize(
    ("storage", "line"),
    [
        ("storage:\n  url: sqlite:///data/x.db\n  queue: procrastinate\n", 6),
        ("storage:\n  queue: procrastinate\n", 5),  # the default database is SQLite too
        ("storage: {url: 'sqlite:///x.db', queue: procrastinate}\n", 4),
    ],
)
def test_procrastinate_on_sqlite_fails_check(tmp_path: Path, storage: str, line: int) -> None:
    code, out = check(tmp_path, GOOD_HEAD + storage + SOURCE)
    assert code == 2
    assert located(out, tmp_path) == line
    assert "storage.queue: procrastinate needs PostgreSQL" in out


def test_procrastinate_on_postgresql_passes_check(tmp_path: Path) -> None:
    storage = "storage:\n  url: postgresql://digest@db.internal/digest\n  queue: procrastinate\n"
    code, out = check(tmp_path, GOOD_HEAD + storage + SOURCE)
    assert code == 0, out


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "  \n# x\n"])
def test_an_empty_file_fails_check(tmp_path: Path, text: str) -> None:
    code, out = check(tmp_path, text)
    assert code == 2
    assert located(out, tmp_path) == 1
    assert "the file is empty" in out


def test_unknown_sections_fail_check_at_their_lines(tmp_path: Path) -> None:
    text = (
        GOOD_HEAD
        + "sections:\n  - {id: news, title: News}\n"
        + "sources:\n"
        + "  - id: one\n    url: https://example.org/a.xml\n    section: reviews\n"
        + "digest:\n  sections:\n    - news\n    - interviews\n"
    )
    code, out = check(tmp_path, text)
    assert code == 2
    path = tmp_path / "feeds.yaml"
    assert f'{path}:9: sources[0].section: unknown section "reviews"' in out
    assert f'{path}:13: digest.sections[1]: unknown section "interviews"' in out


@pytest.mark.parametrize(
    ("body", "line", "phrase"),
    [
        # A quote never closed: PyYAML notices at the end of the file.
        ('  description: "Weekly\n', 4, "quoted string starts here and is never closed"),
        ("  description: [weekly, news\n", 4, 'list opened with "[" starts here'),
        ("  description: {a: b\n", 4, 'mapping opened with "{" starts here'),
    ],
)
def test_unclosed_constructs_point_at_where_they_start(
    tmp_path: Path, body: str, line: int, phrase: str
) -> None:
    filler = "".join(f"  - id: s{n}\n    url: https://example.org/{n}.xml\n" for n in range(5))
    code, out = check(tmp_path, GOOD_HEAD + body + "sources:\n" + filler)
    assert code == 2
    assert located(out, tmp_path) == line
    assert phrase in out


def test_a_misindented_list_item_is_pointed_at(tmp_path: Path) -> None:
    text = (
        GOOD_HEAD
        + "sources:\n"
        + "  - id: one\n    url: https://example.org/a.xml\n"
        + "  - id: two\n   url: https://example.org/b.xml\n"
    )
    code, out = check(tmp_path, text)
    assert code == 2
    assert located(out, tmp_path) == 8
    assert "indented differently" in out


def test_a_valid_file_passes_check(tmp_path: Path) -> None:
    code, out = check(tmp_path, GOOD_HEAD + SOURCE)
    assert code == 0, out
    assert "1 sources" in out
