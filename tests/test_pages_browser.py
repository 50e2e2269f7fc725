"""The public pages and the emails as a reader's browser shows them: axe-core, fonts, Korean.

The whole app runs under uvicorn on 127.0.0.1 with a SQLite store holding
English and Korean stories and one composed issue. Every page a reader can
reach (home, archive, an issue, subscribe with and without an error, confirm,
unsubscribe: valid, invalid, already done) and the digest and confirmation
emails are saved as files and opened in headless Chromium with axe-core
injected (the served pages forbid script by CSP, so axe runs on a file copy
of the exact HTML served, which has no CSP header). The test fails listing
each WCAG 2.1 A/AA violation with its rule id and the nodes.

The same run saves screenshots at 1280, 600 and 390 px into
``tests/artifacts/pages/`` for a person to look at.

axe-core comes from npm: ``scripts/test`` installs it into ``tests/.cache/npm``;
this module does the same on first use when it is missing (``$AXE_CORE_JS``
names another copy).
"""

from __future__ import annotations

import html as html_module
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from aggregator.config import Config, parse_config
from aggregator.digest import compose
from aggregator.models import Source, utcnow
from aggregator.render import render_confirmation, render_digest
from aggregator.store import Store
from aggregator.tokens import Tokens
from aggregator.web.app import WebContext, create_app
from aggregator.web.server import EmbeddedServer
from tests.support.chromium import run_chromium, screenshots
from tests.support.http import unused_port
from tests.support.items import make_item as build_item
from tests.test_render import ENGLISH, KOREAN, SITE, VIEW_URL, sample_digest

if False:  # pragma: no cover - typing only
    from tests.support.smtp import SmtpFixture

pytestmark = pytest.mark.chromium

ARTIFACTS = Path(__file__).parent / "artifacts" / "pages"
NPM_CACHE = Path(__file__).parent / ".cache" / "npm"
AXE_PACKAGE = "axe-core@4"
SECRET = "pages-test-secret-0123456789abcdef"
SCREENSHOT_WIDTHS = (1280, 600, 390)
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")
# Best-practice rules the issue asks for on the site's own pages (not in the WCAG tags).
PAGE_RULES = ("landmark-one-main", "page-has-heading-one")

CONFIG_YAML = """
site:
  title: Korean Film Digest
  description: Korean film news from KoBiz and the trade press, every week.
  url: https://digest.example.org/
  timezone: Asia/Seoul
  postal_address: "130 Suyeonggangbyeon-daero, Busan 48058"
sections:
  - {id: ko-pick, title: Ko-pick columns, match: {title: "^Ko-pick"}}
  - {id: previews, title: Film previews, match: {title: "(?i)preview|anticipated|개봉"}}
sources:
  - {id: kobiz, title: KoBiz, url: https://kobiz.example.org/feed.xml}
  - {id: cine21, title: 씨네21, url: https://cine21.example.org/feed.xml}
digest:
  schedule: "mon 09:00"
"""

# Runs in the page once axe has loaded: WCAG violations, the body's computed
# font, and every text node with Hangul whose nearest lang attribute is not Korean.
_RUNNER = """
(function () {
  var hangul = /[\\uac00-\\ud7a3]/;
  function unmarkedKorean() {
    var out = [];
    var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!hangul.test(node.data)) continue;
      var owner = node.parentElement.closest("[lang]");
      var lang = owner ? owner.getAttribute("lang") : "";
      if (lang.slice(0, 2) === "ko") continue;
      out.push(node.data.trim().slice(0, 40) + " (lang=" + lang + ")");
    }
    return out;
  }
  var options = {runOnly: {type: "tag", values: %(tags)s}, resultTypes: ["violations"]};
  var extra = %(rules)s;
  axe.run(document, options).then(function (result) {
    var violations = result.violations;
    if (!extra.length) return violations;
    return axe.run(document, {runOnly: {type: "rule", values: extra}, resultTypes: ["violations"]})
      .then(function (more) { return violations.concat(more.violations); });
  }).then(function (violations) {
    var out = document.createElement("pre");
    out.id = "axe-result";
    out.textContent = JSON.stringify({
      violations: violations.map(function (v) {
        return {id: v.id, help: v.help, nodes: v.nodes.map(function (n) {
          return n.target.join(" ") + ": " + (n.failureSummary || "").replace(/\\s+/g, " ");
        })};
      }),
      fontFamily: getComputedStyle(document.querySelector("h1") || document.body).fontFamily,
      unmarkedKorean: unmarkedKorean()
    });
    document.body.appendChild(out);
  }, function (error) {
    var out = document.createElement("pre");
    out.id = "axe-result";
    out.textContent = JSON.stringify({error: String(error)});
    document.body.appendChild(out);
  });
})();
"""


@pytest.fixture(scope="session")
def axe_js() -> Path:
    """axe.min.js: ``$AXE_CORE_JS``, the npm cache, or installed there now with npm."""
    named = os.environ.get("AXE_CORE_JS")
    if named:
        return Path(named)
    path = NPM_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: run scripts/test (it installs it)", pytrace=False)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_CACHE), AXE_PACKAGE],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 or not path.exists():
            pytest.fail(f"npm install {AXE_PACKAGE} failed: {done.stderr[-500:]}", pytrace=False)
    return path


@dataclass
class AxeReport:
    violations: list[dict[str, object]]
    font_family: str
    unmarked_korean: list[str]


def run_axe(page_html: str, name: str, axe: Path, *, page_rules: bool) -> AxeReport:
    """Save ``page_html`` as ``<name>.html`` with axe injected; run it in Chromium; the result."""
    folder = ARTIFACTS / "axe"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(axe, folder / "axe.min.js")
    runner = _RUNNER % {
        "tags": json.dumps(list(AXE_TAGS)),
        "rules": json.dumps(list(PAGE_RULES) if page_rules else []),
    }
    (folder / "run-axe.js").write_text(runner, encoding="utf-8")
    scripts = '<script src="axe.min.js"></script><script src="run-axe.js"></script>'
    assert page_html.count("</body>") == 1, f"{name}: not one </body>"
    target = folder / f"{name}.html"
    target.write_text(page_html.replace("</body>", scripts + "</body>"), encoding="utf-8")
    dom = run_chromium("--window-size=1280,2000", "--dump-dom", target.as_uri())
    match = re.search(r'<pre id="axe-result">(.*?)</pre>', dom, re.DOTALL)
    assert match, f"{name}: axe did not report (is {axe} a working axe.min.js?)"
    result = json.loads(html_module.unescape(match.group(1)))
    assert "error" not in result, f"{name}: axe failed: {result['error']}"
    return AxeReport(result["violations"], result["fontFamily"], result["unmarkedKorean"])


def screenshot(page_html: str, name: str) -> list[Path]:
    """Screenshots of ``page_html`` at each of :data:`SCREENSHOT_WIDTHS`."""
    return screenshots(page_html, name, folder=ARTIFACTS, widths=SCREENSHOT_WIDTHS, height=2200)


# ------------------------------------------------------------------------- the site


@dataclass
class LiveSite:
    base: str
    config: Config
    store: Store
    digest_id: int


@pytest.fixture
def live_site(sqlite_url: str, smtp_server: SmtpFixture) -> Iterator[LiveSite]:
    """The app on 127.0.0.1 with English and Korean stories and one composed issue."""
    port = unused_port()
    base = f"http://127.0.0.1:{port}/"
    config = parse_config(CONFIG_YAML)
    config = replace(
        config,
        site=replace(config.site, url=base, sender_email="digest@example.org"),
        smtp=smtp_server.settings(),
    )
    store = Store.open(sqlite_url)
    now = utcnow()
    slot = now + timedelta(minutes=1)
    store.sync_sources(
        [Source(id=s.id, url=s.url, title=s.title) for s in config.sources],
        now=now - timedelta(days=30),
    )
    seen = now - timedelta(days=2)
    english = [
        build_item("kobiz", n, title=title, text=text, section=section, published=seen)
        for n, (section, title, text) in enumerate(ENGLISH, start=1)
    ]
    korean = [
        replace(
            build_item("cine21", n, title=title, text=text, section=section, published=seen),
            language="ko",
        )
        for n, (section, title, text) in enumerate(KOREAN, start=1)
    ]
    store.save_items("kobiz", english, fetched_at=seen, next_fetch_at=now)
    store.save_items("cine21", korean, fetched_at=seen, next_fetch_at=now)
    digest = compose(config, store, now=slot)
    assert digest is not None and digest.id is not None
    ctx = WebContext(config=config, store=store, secret=SECRET)
    server = EmbeddedServer(
        uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield LiveSite(base, config, store, digest.id)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF token in the form"
    return match.group(1)


def served_pages(site: LiveSite) -> dict[str, str]:
    """Every page a reader reaches, as served (status checked), by name."""
    tokens = Tokens(SECRET)
    pages: dict[str, str] = {}
    with httpx.Client(base_url=site.base, timeout=10) as client:

        def get(name: str, path: str, status: int = 200) -> None:
            response = client.get(path)
            assert response.status_code == status, f"{path}: {response.status_code}"
            pages[name] = response.text

        get("home", "/")
        get("subscribe", "/subscribe")
        error = client.post(
            "/subscribe",
            data={"csrf": _csrf(pages["subscribe"]), "email": "not an address", "name": ""},
            headers={"Origin": site.base.rstrip("/")},
        )
        assert error.status_code == 400
        pages["subscribe-error"] = error.text
        sent = client.post(
            "/subscribe",
            data={"csrf": _csrf(pages["subscribe"]), "email": "reader@example.org"},
            headers={"Origin": site.base.rstrip("/")},
        )
        assert sent.status_code == 200
        pages["subscribe-sent"] = sent.text
        get("archive", "/digests/")
        get("issue", f"/digests/{site.digest_id}")

        pending, _ = site.store.add_subscriber("new@example.org", now=utcnow())
        get("confirm", f"/confirm/{tokens.confirm_token(pending.id, pending.email)}")
        get("confirm-invalid", "/confirm/not-a-token", 400)

        active, _ = site.store.add_subscriber("kim@example.org", now=utcnow())
        site.store.confirm_subscriber(active.id, active.email, now=utcnow())
        get("preferences", f"/preferences/{tokens.preferences_token(active.id, active.email)}")
        korean, _ = site.store.add_subscriber("lee@example.org", now=utcnow(), active=True)
        site.store.set_preferences(korean.id, korean.email, sections=None, language="ko")
        get("preferences-ko", f"/preferences/{tokens.preferences_token(korean.id, korean.email)}")
        unsubscribe = f"/unsubscribe/{tokens.unsubscribe_token(active.id, active.email)}"
        get("unsubscribe", unsubscribe)
        get("unsubscribe-invalid", "/unsubscribe/not-a-token", 400)
        get("unsubscribe-form", "/unsubscribe")
        done = client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200
        pages["unsubscribed"] = done.text
        get("unsubscribe-again", unsubscribe)
    return pages


def email_pages() -> dict[str, str]:
    """The digest (English, Korean) and the confirmation email, as a mail client gets them."""
    return {
        "email-digest-en": render_digest(sample_digest(ENGLISH), SITE, view_url=VIEW_URL).html,
        "email-digest-ko": render_digest(
            sample_digest(KOREAN, language="ko"), SITE, view_url=VIEW_URL
        ).html,
        "email-confirm": render_confirmation(
            SITE,
            name="김지원",
            email="jiwon.kim@example.org",
            confirm_url="https://digest.example.org/confirm/" + "Ab3_" * 40,
        ).html,
    }


# ---------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_every_page_and_email_has_no_axe_violations(live_site: LiveSite, axe_js: Path) -> None:
    pages = served_pages(live_site)
    emails = email_pages()
    problems = []
    checked = {}
    for name, page in {**pages, **emails}.items():
        report = run_axe(page, name, axe_js, page_rules=name in pages)
        checked[name] = len(report.violations)
        for violation in report.violations:
            nodes = "\n      ".join(str(n) for n in violation["nodes"])  # type: ignore[union-attr]
            problems.append(f"{name}: {violation['id']} ({violation['help']})\n      {nodes}")
        if report.unmarked_korean:
            problems.append(f"{name}: Korean text without lang=ko: {report.unmarked_korean[:5]}")
        # The font stack reaches the browser (a <style> block is not HTML-escaped away).
        if "Apple SD Gothic Neo" not in report.font_family:
            problems.append(f"{name}: the heading is set in {report.font_family}")
    assert not problems, "axe-core (WCAG 2.1 AA) found:\n" + "\n".join(problems)
    assert len(checked) == 18


def test_korean_stories_are_marked_in_pages_and_email(live_site: LiveSite) -> None:
    pages = served_pages(live_site)
    for name in ("home", "issue"):
        assert 'lang="ko"' in pages[name], name
        assert "남산의 부장들" in pages[name]
    assert 'lang="ko"' in email_pages()["email-digest-ko"]


def test_form_errors_are_tied_to_their_field(live_site: LiveSite) -> None:
    page = served_pages(live_site)["subscribe-error"]
    field = re.search(r'<input id="email"[^>]*>', page)
    assert field is not None
    assert 'aria-invalid="true"' in field.group(0)
    assert 'aria-describedby="form-error"' in field.group(0)
    assert 'id="form-error"' in page and "does not look like an email address" in page


@pytest.mark.slow
def test_screenshots_of_pages_and_emails_at_three_widths(live_site: LiveSite) -> None:
    pages = served_pages(live_site)
    wanted = {
        **{k: pages[k] for k in ("home", "subscribe", "subscribe-error", "subscribe-sent")},
        **{k: pages[k] for k in ("unsubscribe", "unsubscribe-invalid", "unsubscribed")},
        **email_pages(),
    }
    for name, page in wanted.items():
        for shot in screenshot(page, name):
            assert shot.stat().st_size > 5_000, shot
