"""No dead ends: every page links on, and an unsubscribe link that fails still leads out.

Over HTTP against the whole app (uvicorn on 127.0.0.1) with a real SMTP sink:
the unsubscribe-by-address form mails an active subscriber a link that works,
answers the same for every address, and is limited like the subscribe form.
"""

from __future__ import annotations

import ast
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from aggregator.errors import RenderError
from aggregator.models import SubscriberStatus
from aggregator.render import css_value
from aggregator.store import Store
from aggregator.tokens import Tokens
from aggregator.web import subscribe
from tests.test_subscribe_web import SECRET, Web, form_token
from tests.test_subscribe_web import web as web

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

WEB_PACKAGE = Path(subscribe.__file__).parent


def unsubscribe_form_token(client: httpx.Client, path: str = "/unsubscribe") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, f"{path} has no unsubscribe form"
    return found.group(1)


def ask_for_link(web: Web, email: str, path: str = "/unsubscribe") -> httpx.Response:
    token = unsubscribe_form_token(web.client, path)
    return web.client.post("/unsubscribe", data={"email": email, "csrf": token})


def _answer_text(page: str) -> str:
    """The page's visible message, with the address itself taken out."""
    main = re.search(r"<main.*?</main>", page, re.DOTALL)
    assert main
    return re.sub(r"\S+@\S+", "ADDRESS", re.sub(r"<[^>]+>", " ", main.group(0)))


@pytest.mark.parametrize(
    "path",
    ["/", "/subscribe", "/digests/", "/unsubscribe", "/unsubscribe/not-a-token", "/confirm/x"],
)
def test_every_page_announces_the_feeds_and_links_the_subscribe_form(web: Web, path: str) -> None:
    page = web.client.get(path).text
    base = web.url
    atom = 'rel="alternate" type="application/atom+xml" title="Korean Film Digest"'
    assert f'<link {atom} href="{base}feed.atom">' in page
    assert 'type="application/feed+json"' in page and f'href="{base}feed.json"' in page
    assert f'<a href="{base}subscribe"' in page
    assert f'<a href="{base}digests/"' in page
    assert page.count("<main") == 1 and page.count("<h1") == 1


def test_font_stack_is_not_html_escaped_inside_style(web: Web) -> None:
    for path in ("/", "/digests/", "/subscribe"):
        style = re.search(r"<style>(.*?)</style>", web.client.get(path).text, re.DOTALL)
        assert style is not None
        assert "&#39;" not in style.group(1) and "&amp;" not in style.group(1), path
        assert "font-family: -apple-system, 'Segoe UI'" in style.group(1), path


def test_invalid_link_offers_unsubscribe_by_address_which_mails_a_working_link(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("kim@example.org", now=now, active=True)

    broken = web.client.get("/unsubscribe/this-link-was-cut-by-a-mail-client")
    assert broken.status_code == 400
    assert "Link not valid" in broken.text
    assert f'action="{web.url}unsubscribe"' in broken.text

    answer = ask_for_link(web, "Kim@Example.org", "/unsubscribe/this-link-was-cut-by-a-mail-client")
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    (mail,) = smtp_server.wait_for(1)
    assert list(mail.recipients) == ["kim@example.org"]
    assert mail.message["Auto-Submitted"] == "auto-generated"
    body = mail.message.get_content()
    link = re.search(r"(http://\S+/unsubscribe/\S+)", body)
    assert link, body
    # The mailed link leads to the button; GET alone changes nothing.
    page = web.client.get(link.group(1))
    assert page.status_code == 200 and 'name="unsubscribe" value="yes"' in page.text
    assert store.subscriber_by_email("kim@example.org").status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    done = web.client.post(link.group(1), data={"unsubscribe": "yes"})
    assert done.status_code == 200
    assert store.subscriber_by_email("kim@example.org").status is SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    assert f'<a href="{web.url}subscribe">Subscribe again</a>' in done.text


def test_unsubscribe_by_address_answers_alike_for_every_address(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("active@example.org", now=now, active=True)
    store.add_subscriber("left@example.org", now=now, active=True)
    left = store.subscriber_by_email("left@example.org")
    assert left is not None
    store.unsubscribe_subscriber(left.id, left.email, now=now)

    answers = {
        email: ask_for_link(web, email)
        for email in ("active@example.org", "left@example.org", "nobody@example.org")
    }

    assert {r.status_code for r in answers.values()} == {200}
    assert len({_answer_text(r.text) for r in answers.values()}) == 1
    smtp_server.wait_for(1)
    assert [list(m.recipients) for m in smtp_server.messages] == [["active@example.org"]]


def test_unsubscribe_by_address_is_limited_per_client_and_per_mailbox(
    web: Web, store: Store, smtp_server: SmtpFixture
) -> None:
    store.add_subscriber("kim@example.org", now=datetime.now(UTC), active=True)
    asks = subscribe.SUBSCRIBE_LIMIT + 2

    statuses = [ask_for_link(web, "kim@example.org").status_code for _ in range(asks)]

    # Per client: the subscribe form's limit, then 429 with Retry-After.
    assert statuses == [200] * subscribe.SUBSCRIBE_LIMIT + [429] * 2
    # Per mailbox: at most the confirmation quota of mails, however often asked.
    smtp_server.wait_for(subscribe.CONFIRM_MAILS_PER_ADDRESS)
    time.sleep(0.3)  # a mail past the quota would arrive by now
    assert len(smtp_server.to("kim@example.org")) == subscribe.CONFIRM_MAILS_PER_ADDRESS
    assert subscribe.CONFIRM_MAILS_PER_ADDRESS < subscribe.SUBSCRIBE_LIMIT


def test_unsubscribe_form_refuses_a_missing_or_foreign_token(web: Web) -> None:
    missing = web.client.post("/unsubscribe", data={"email": "kim@example.org"})
    assert missing.status_code == 403
    subscribe_token = form_token(web.client)  # a token for another form
    foreign = web.client.post(
        "/unsubscribe", data={"email": "kim@example.org", "csrf": subscribe_token}
    )
    assert foreign.status_code == 403


def test_after_one_click_unsubscribe_the_page_says_already_unsubscribed(
    web: Web, store: Store
) -> None:
    subscriber, _ = store.add_subscriber("lee@example.org", now=datetime.now(UTC), active=True)
    url = f"/unsubscribe/{Tokens(SECRET).unsubscribe_token(subscriber.id, subscriber.email)}"
    assert web.client.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    page = web.client.get(url)

    assert page.status_code == 200
    assert "You are already unsubscribed" in page.text
    assert 'name="unsubscribe" value="yes"' not in page.text  # no button for nothing
    assert f'<a href="{web.url}subscribe">Subscribe again</a>' in page.text


def test_a_failed_confirmation_links_the_subscribe_form(web: Web) -> None:
    page = web.client.get("/confirm/expired-or-cut")
    assert page.status_code == 400
    assert f'<a href="{web.url}subscribe">Subscribe again</a>' in page.text


def test_one_click_is_promised_only_where_it_is_one_click(web: Web) -> None:
    # The web link leads to a page with a button: two steps, so no "one click" there.
    form = web.client.get("/subscribe").text
    assert "every issue has a one-click unsubscribe link" not in form
    assert "mail programs that show an Unsubscribe button stop it in one click" in form


def test_route_modules_import_the_context_not_the_app() -> None:
    """Imports go down: app imports the route modules, they import web/context.py."""
    for module in ("feeds", "pages", "archive", "subscribe", "health"):
        tree = ast.parse((WEB_PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        assert "app" not in imported, f"web/{module}.py imports web/app.py"
    context = ast.parse((WEB_PACKAGE / "context.py").read_text(encoding="utf-8"))
    assert not any(
        isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in {"app", "pages"}
        for node in ast.walk(context)
    )


@pytest.mark.parametrize(
    "value",
    [
        "-apple-system, 'Segoe UI', sans-serif",
        '"Noto Sans KR", 맑은 고딕, serif',
        "#9c2b23",
        "12.5px",
        "rgb(10, 20, 30)",
    ],
)
def test_css_filter_passes_css_values_unescaped(value: str) -> None:
    assert str(css_value(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "sans-serif; } body { display: none",
        "sans-serif</style><script>alert(1)</script>",
        "url(javascript:alert(1))",
        "a\\62 c",
        "x { }",
        "sans-serif\n@import 'x'",
    ],
)
def test_css_filter_refuses_what_could_leave_the_declaration(value: str) -> None:
    with pytest.raises(RenderError, match="not a safe CSS value"):
        css_value(value)
