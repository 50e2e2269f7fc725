"""Where templates come from: the bundled set, overridden per file by ``site.templates``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config import load_config
from aggregator.errors import ConfigError
from aggregator.mail_confirm import confirmation_message
from aggregator.models import Site, Subscriber, SubscriberStatus
from aggregator.render import (
    TEMPLATES_ENV_VAR,
    render_archive_index,
    render_home,
    template_dirs,
    templates_dir,
)

REPO = Path(__file__).resolve().parent.parent

HOME_OVERRIDE = "<!doctype html><title>{{ site_title }}</title><p>our own home page</p>\n"
CONFIRM_OVERRIDE = "Bitte bestätigen: {{ confirm_url }}\n"


def _feeds_yaml(directory: Path, templates: str | None) -> Path:
    path = directory / "feeds.yaml"
    line = f"  templates: {templates}\n" if templates is not None else ""
    path.write_text(
        f"site:\n  title: Test\n  url: https://digest.example.org/\n{line}sources: []\n",
        encoding="utf-8",
    )
    return path


def _theme(directory: Path) -> Path:
    """An override directory holding only the home page and the confirmation text."""
    (directory / "mail").mkdir(parents=True)
    (directory / "home.html.j2").write_text(HOME_OVERRIDE, encoding="utf-8")
    (directory / "mail" / "confirm.txt.j2").write_text(CONFIRM_OVERRIDE, encoding="utf-8")
    return directory


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEMPLATES_ENV_VAR, raising=False)


def test_bundled_templates_in_a_checkout_are_the_top_level_directory() -> None:
    assert templates_dir() == REPO / "templates"
    assert template_dirs() == (REPO / "templates",)


@pytest.mark.parametrize("spelling", ["theme", "./theme", "theme/", "{abs}"])
def test_relative_templates_path_starts_at_feeds_yaml(tmp_path: Path, spelling: str) -> None:
    theme = _theme(tmp_path / "conf" / "theme")
    config = load_config(
        _feeds_yaml(tmp_path / "conf", spelling.format(abs=theme)),
    )
    assert config.site.templates is not None
    assert Path(config.site.templates).resolve() == theme.resolve()


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda d: None, "is not a directory"),
        (lambda d: (d / "missing").write_text("a file", encoding="utf-8"), "is not a directory"),
        (lambda d: (d / "missing").mkdir(), "holds none of the templates"),
        (
            lambda d: ((d / "missing").mkdir(), (d / "missing" / "digest.html").write_text("x")),
            "holds none of the templates",
        ),
    ],
    ids=["absent", "a file", "empty", "wrong names"],
)
def test_bad_templates_directory_is_a_config_error_with_its_line(
    tmp_path: Path, setup: Callable[[Path], object], problem: str
) -> None:
    setup(tmp_path)
    path = _feeds_yaml(tmp_path, "missing")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4: site.templates: "), message
    assert problem in message


def test_override_replaces_only_the_templates_it_holds(tmp_path: Path) -> None:
    site = Site(title="Test", url="https://digest.example.org/", templates=str(_theme(tmp_path)))

    home = render_home([], site)
    archive = render_archive_index([], site)

    assert "our own home page" in home
    assert "<html" in archive.lower() and "our own home page" not in archive  # bundled one


def test_override_reaches_the_confirmation_mail(tmp_path: Path) -> None:
    site = Site(
        title="Test",
        url="https://digest.example.org/",
        sender_email="digest@example.org",
        templates=str(_theme(tmp_path)),
    )
    subscriber = Subscriber(
        id=1, email="kim@example.org", status=SubscriberStatus.PENDING, created_at=datetime.now(UTC)
    )
    raw = confirmation_message(site, subscriber, "https://digest.example.org/confirm/t")
    text = raw.decode("ascii")
    assert "Bitte best=C3=A4tigen" in text  # the override's text part, quoted-printable
    assert "text/html" in text  # the HTML part still comes from the bundled set


def test_environment_variable_wins_over_feeds_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "home.html.j2").write_text("<p>from the environment</p>\n", encoding="utf-8")
    monkeypatch.setenv(TEMPLATES_ENV_VAR, str(env_dir))
    site = Site(title="Test", url="https://digest.example.org/", templates=str(_theme(tmp_path)))

    assert template_dirs(site)[0] == env_dir
    assert "from the environment" in render_home([], site)
