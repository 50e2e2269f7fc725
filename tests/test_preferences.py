"""Subscriber preferences: sections and language, over the web form, the CLI and CSV.

Real parts: uvicorn on 127.0.0.1 for the form, aiosmtpd for the mail that
carries the link, SQLite/PostgreSQL for the rows.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from aggregator.errors import SubscriberError
from aggregator.preferences import check_preferences
from aggregator.store import Store
from aggregator.subscribers import export_text, import_csv
from aggregator.tokens import Tokens
from tests.support.cli import run_cli
from tests.test_subscribe_web import SECRET, Web, _subscribe, confirm, serve_web, web_config

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

NOW = datetime(2026, 11, 30, 9, tzinfo=UTC)
ALL_SECTIONS = ("ko-pick", "previews", "more")


@pytest.fixture
def web(store: Store, smtp_server: SmtpFixture, tmp_path: Path) -> Iterator[Web]:
    with serve_web(store, smtp_server, tmp_path / "public") as running:
        yield running


def _preferences_path(store: Store, email: str) -> str:
    found = store.subscriber_by_email(email)
    assert found is not None
    return f"/preferences/{Tokens(SECRET).preferences_token(found.id, found.email)}"


def _form_csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


# ------------------------------------------------------------------ choices


@pytest.mark.parametrize(
    ("sections", "language", "stored"),
    [
        (None, None, (None, None)),
        (["previews", "ko-pick"], "ko", (("ko-pick", "previews"), "ko")),
        (["more", "more"], "en", (("more",), "en")),
        ([], None, ((), None)),
        (list(ALL_SECTIONS), None, (None, None)),  # every section today = every section later
    ],
)
def test_choices_are_stored_in_digest_order_and_all_means_all(
    store: Store,
    smtp_server: SmtpFixture,
    tmp_path: Path,
    sections: list[str] | None,
    language: str | None,
    stored: tuple[tuple[str, ...] | None, str | None],
) -> None:
    config = web_config(store, smtp_server, "http://127.0.0.1/", tmp_path)
    chosen = check_preferences(config, sections, language)
    assert (chosen.sections, chosen.language) == stored


@pytest.mark.parametrize(
    ("sections", "language", "named"),
    [(["ko-pick", "bogus"], None, "'bogus'"), (None, "fr", "'fr'"), (["KO-PICK"], "ko", "KO")],
)
def test_unknown_choices_are_refused_by_name(
    store: Store,
    smtp_server: SmtpFixture,
    tmp_path: Path,
    sections: list[str] | None,
    language: str | None,
    named: str,
) -> None:
    config = web_config(store, smtp_server, "http://127.0.0.1/", tmp_path)
    with pytest.raises(SubscriberError, match=named):
        check_preferences(config, sections, language)


# ------------------------------------------------------------------ web form


def test_preferences_link_from_the_confirmed_page_saves_sections_and_language(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    _subscribe(web, "reader@example.org")
    mail = smtp_server.wait_for(1)[0].message
    text = mail.get_body(("plain",))
    assert text is not None
    # The confirmation mail carries the subscriber's own preferences link.
    assert _preferences_path(store, "reader@example.org") in text.get_content()
    confirmed = confirm(web.client, web.confirm_url(smtp_server, "reader@example.org"))
    link = re.search(r'href="(http://[^"]+/preferences/[^"]+)"', confirmed.text)
    assert link, confirmed.text

    form = web.client.get(link.group(1))
    assert form.status_code == 200
    for sid in ALL_SECTIONS:  # defaults: every section ticked, the site's language
        assert f'value="{sid}" checked' in form.text
    assert 'value="en" checked' in form.text
    saved = web.client.post(
        link.group(1), data={"csrf": _form_csrf(form), "section": "ko-pick", "language": "ko"}
    )
    assert saved.status_code == 200, saved.text
    after = store.subscriber_by_email("reader@example.org")
    assert after is not None
    assert (after.sections, after.language) == (("ko-pick",), "ko")
    assert 'value="ko-pick" checked' in saved.text
    assert 'value="previews" checked' not in saved.text
    assert 'value="ko" checked' in saved.text


def test_preferences_post_without_a_valid_form_token_changes_nothing(
    web: Web, store: Store
) -> None:
    store.add_subscriber("reader@example.org", now=NOW, active=True)
    path = _preferences_path(store, "reader@example.org")
    form = web.client.get(path)
    token = _form_csrf(form)
    cases: list[tuple[httpx.Client, dict[str, str], dict[str, str]]] = [
        (web.client, {}, {}),
        (web.client, {"csrf": "forged" + token}, {}),
        (httpx.Client(base_url=web.url), {"csrf": token}, {}),  # no cookie
        (web.client, {"csrf": token}, {"Origin": "https://evil.example"}),
    ]
    for client, data, headers in cases:
        answer = client.post(path, data={**data, "section": "previews"}, headers=headers)
        assert answer.status_code == 403, (data, headers)
    after = store.subscriber_by_email("reader@example.org")
    assert after is not None and (after.sections, after.language) == (None, None)


def test_preferences_form_refuses_unknown_choices_and_bad_links(web: Web, store: Store) -> None:
    store.add_subscriber("reader@example.org", now=NOW, active=True)
    path = _preferences_path(store, "reader@example.org")
    for data in ({"section": "bogus"}, {"language": "fr"}):
        token = _form_csrf(web.client.get(path))
        answer = web.client.post(path, data={"csrf": token, **data})
        assert answer.status_code == 400
        assert "Unknown" in answer.text
    other = Tokens(SECRET)
    forged = [
        "/preferences/not-a-token",
        f"/preferences/{other.unsubscribe_token(1, 'reader@example.org')}",
        f"/preferences/{Tokens('another-secret-0123456789').preferences_token(1, 'x@y.org')}",
        f"/preferences/{other.preferences_token(1, 'someone.else@example.org')}",
    ]
    for bad in forged:
        assert web.client.get(bad).status_code == 400, bad
    after = store.subscriber_by_email("reader@example.org")
    assert after is not None and (after.sections, after.language) == (None, None)


def test_ticking_nothing_is_stored_as_no_sections(web: Web, store: Store) -> None:
    store.add_subscriber("reader@example.org", now=NOW, active=True)
    path = _preferences_path(store, "reader@example.org")
    token = _form_csrf(web.client.get(path))
    answer = web.client.post(path, data={"csrf": token, "language": "en"})
    assert answer.status_code == 200
    assert "no sections" in answer.text
    after = store.subscriber_by_email("reader@example.org")
    assert after is not None and after.sections == ()


# ------------------------------------------------------------------ CSV and CLI


def test_preferences_survive_export_then_import(store: Store, tmp_path: Path) -> None:
    wanted = {
        "all@example.org": (None, None),
        "kopick@example.org": (("ko-pick",), "ko"),
        "two@example.org": (("ko-pick", "previews"), "en"),
        "none@example.org": ((), "ko"),
        "more@xn--9n2bp8q.example": (("more",), None),
    }
    for email, (sections, language) in wanted.items():
        found, _ = store.add_subscriber(email, now=NOW, active=True)
        store.set_preferences(found.id, found.email, sections=sections, language=language)
    exported = export_text(store.list_subscribers())
    fresh = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        report = import_csv(fresh, io.StringIO(exported), now=NOW, confirmed=True)
        assert report.errors == []
        got = {s.email: (s.sections, s.language) for s in fresh.list_subscribers()}
    finally:
        fresh.close()
    assert got == wanted


def test_import_keeps_a_known_subscribers_own_choice_and_names_bad_rows(
    store: Store, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    config = web_config(store, smtp_server, "http://127.0.0.1/", tmp_path)
    known, _ = store.add_subscriber("known@example.org", now=NOW, active=True)
    store.set_preferences(known.id, known.email, sections=("previews",), language="en")
    text = (
        "email,sections,language\n"
        "known@example.org,ko-pick,ko\n"
        "new@example.org,ko-pick,ko\n"
        "typo@example.org,ko-pik,\n"
        "french@example.org,,fr\n"
    )
    report = import_csv(store, text, now=NOW, config=config)
    assert [line for line, _ in report.errors] == [4, 5]
    assert "'ko-pik'" in report.errors[0][1] and "'fr'" in report.errors[1][1]
    by_email = {s.email: (s.sections, s.language) for s in store.list_subscribers()}
    assert by_email == {
        "known@example.org": (("previews",), "en"),
        "new@example.org": (("ko-pick",), "ko"),
    }


def _config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site:\n"
        "  title: Korean Film Digest\n"
        "  url: https://digest.example.org/\n"
        "  sender_email: digest@example.org\n"
        f"storage:\n  url: {url}\n"
        "sections:\n"
        "  - {id: ko-pick, title: Ko-pick columns}\n"
        "  - {id: previews, title: Film previews}\n"
        "digest: {sections: [ko-pick, previews]}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    return path


def test_cli_set_stores_choices_and_refuses_unknown_ones_in_one_line(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = str(_config_file(tmp_path, sqlite_url))
    assert run_cli("-c", config, "subscribers", "add", "kim@example.org", "--active").exit_code == 0
    ok = run_cli(
        "-c", config, "subscribers", "set", "Kim@Example.org", "--sections", "ko-pick,previews"
    )
    assert ok.exit_code == 0, ok.output
    lang = run_cli("-c", config, "subscribers", "set", "kim@example.org", "--lang", "ko")
    assert lang.exit_code == 0, lang.output
    assert "sections ko-pick, previews; language ko" in lang.output
    for bad in (
        ["--sections", "ko-pick,nope"],
        ["--lang", "fr"],
        [],
    ):
        result = run_cli("-c", config, "subscribers", "set", "kim@example.org", *bad)
        assert result.exit_code == 2, (bad, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output
    assert "'nope'" in run_cli(
        "-c", config, "subscribers", "set", "kim@example.org", "--sections", "nope"
    ).stderr.replace("\n", "")
    unknown = run_cli("-c", config, "subscribers", "set", "who@example.org", "--lang", "ko")
    assert unknown.exit_code == 1 and "not a subscriber" in unknown.stderr
    store = Store.open(sqlite_url)
    try:
        kim = store.subscriber_by_email("kim@example.org")
        assert kim is not None
        # "more" (other news) is a section too, so these two are not "all".
        assert (kim.sections, kim.language) == (("ko-pick", "previews"), "ko")
        exported = run_cli("-c", config, "subscribers", "export").stdout
    finally:
        store.close()
    assert exported.splitlines()[1].endswith(',"ko-pick,previews",ko')


# ------------------------------------------------------------------ the link in every issue


def test_every_issue_carries_the_readers_own_preferences_link_and_the_web_copy_none(
    store: Store, smtp_server: SmtpFixture
) -> None:
    from aggregator.deliver import deliver_digest
    from aggregator.models import Digest
    from aggregator.render import PREFERENCES_PLACEHOLDER, public_issue_html, render_digest
    from tests.test_deliver import SECRET as DELIVER_SECRET
    from tests.test_deliver import SITE

    emails = ["kim@example.org", "Lee@Example.org", "park+film@example.org"]
    for email in emails:
        store.add_subscriber(email, now=NOW, active=True)
    end = datetime(2026, 11, 23, tzinfo=UTC)
    frozen = Digest(period_start=end.replace(day=16), period_end=end, subject="S", sections=())

    def render(digest: Digest) -> tuple[str, str]:
        rendered = render_digest(digest, SITE, view_url="https://digest.example.org/digests/1/")
        return rendered.html, rendered.text

    digest = store.save_digest(frozen, render, now=end)
    assert PREFERENCES_PLACEHOLDER in digest.html and PREFERENCES_PLACEHOLDER in digest.text
    asyncio.run(
        deliver_digest(store, digest, site=SITE, smtp=smtp_server.settings(), secret=DELIVER_SECRET)
    )
    tokens = Tokens(DELIVER_SECRET)
    for email in emails:
        (received,) = smtp_server.to(email)
        found = store.subscriber_by_email(email)
        assert found is not None
        own = f"https://digest.example.org/preferences/{tokens.preferences_token(found.id, email)}"
        for subtype in ("plain", "html"):
            body = received.message.get_body((subtype,))
            assert body is not None
            content = body.get_content()
            assert own in content and PREFERENCES_PLACEHOLDER not in content
        claims = tokens.read_preferences(own.rsplit("/", 1)[1])
        assert (claims.subscriber_id, claims.email) == (found.id, email)
    public = public_issue_html(digest.html, subscribe_url="https://digest.example.org/subscribe")
    assert PREFERENCES_PLACEHOLDER not in public and "Choose what you get" not in public


# ------------------------------------------------------------------ migration 0010


def test_migration_0010_downgrades_and_upgrades_keeping_subscribers_and_ledger(
    db_url: str,
) -> None:
    """Rows survive 0010 both ways; after it, old rows read as "everything, site language"."""
    from alembic import command
    from sqlalchemy import inspect, text

    from aggregator.store.engine import _alembic_config
    from tests.test_deliver import make_digest

    store = Store.open(db_url)
    try:
        found, _ = store.add_subscriber("kim@example.org", now=NOW, active=True)
        store.set_preferences(found.id, found.email, sections=("ko-pick",), language="ko")
        digest = make_digest(store)
        assert digest.id is not None
        store.create_deliveries(
            digest.id, message_id_tag="t", message_id_domain="example.org", now=NOW
        )
        assert [d.variant for d in store.deliveries(digest.id)] == ['["ko-pick"]|ko']
        cfg = _alembic_config()
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0009")
        columns = {c["name"] for c in inspect(store.engine).get_columns("subscribers")}
        assert not {"sections", "language"} & columns
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one() == 1
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        again = store.subscriber_by_email("kim@example.org")
        assert again is not None and (again.sections, again.language) == (None, None)
        assert [d.variant for d in store.deliveries(digest.id)] == [None]
    finally:
        store.close()
