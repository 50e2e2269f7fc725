"""The web app under attack: every route walked, over real HTTP, with a real SMTP server.

Each test enumerates the app's own routes (``app.routes``), so a route added
later is covered without editing the test, and a route with a path parameter
this file has no sample for fails loudly until one is added.

- Safe methods (HEAD, GET) change nothing: not the database (every row of
  every table), not a rate-limit counter.
- Every answer carries the security headers, HTML or not, success or error.
- Numeric path parameters out of range are 404, never 500.
- Every POST route answers junk, huge and forged bodies with a short 4xx.
- The subscribe form: CSRF, spoofed ``X-Forwarded-For``, the per-mailbox mail
  quota and URL-free names.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import itsdangerous.timed
import pytest
from sqlalchemy import MetaData, select
from starlette.datastructures import Headers
from starlette.routing import Route

from aggregator.config import load_config, parse_config
from aggregator.errors import ConfigError
from aggregator.models import WebSettings
from aggregator.store import Store
from aggregator.tokens import Tokens
from aggregator.web import subscribe
from aggregator.web.app import ROW_ID_MAX, create_app, digits_up_to
from aggregator.web.ratelimit import RateLimiter
from aggregator.web.security import FormTokens, client_address, cross_site_reason
from tests.support.smtp import SmtpFixture
from tests.test_deliver import make_digest
from tests.test_subscribe_web import SECRET, Web, form_token, serve_web

PROXY = WebSettings(trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
PARAM = re.compile(r"{(\w+)(?::\w+)?}")


# ------------------------------------------------------------------ helpers


def database_rows(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: the whole persistent state of the app."""
    metadata = MetaData()
    metadata.reflect(store.engine)
    with store.engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for name, table in metadata.tables.items()
        }


def state(web: Web) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, dict[str, int]]]:
    limits = {name: limiter.snapshot() for name, limiter in web.ctx.rate_limiters.items()}
    return database_rows(web.ctx.store), limits


def seed(store: Store) -> dict[str, list[str]]:
    """Subscribers in each state, an issue with its ledger; sample values per path parameter."""
    now = datetime.now(UTC)
    tokens = Tokens(SECRET)
    samples: dict[str, list[str]] = {"token": ["not-a-token", "x" * 2000]}
    for i, email in enumerate(["pending@example.org", "영화.팬@example.org", "p+tag@example.org"]):
        pending, _ = store.add_subscriber(email, name=f"Reader {i}", now=now)
        samples["token"] += [
            tokens.confirm_token(pending.id, pending.email),
            tokens.unsubscribe_token(pending.id, pending.email),
            tokens.preferences_token(pending.id, pending.email),
        ]
    for email in ("active@example.org", "second@example.org"):
        active, _ = store.add_subscriber(email, now=now, active=True)
        samples["token"] += [
            tokens.unsubscribe_token(active.id, active.email),
            tokens.confirm_token(active.id, active.email),
            tokens.preferences_token(active.id, active.email),
        ]
    digest = make_digest(store)
    store.create_deliveries(
        digest.id, message_id_tag="digest", message_id_domain="example.org", now=now
    )
    samples["digest_id"] = [str(digest.id), "0", str(ROW_ID_MAX)]
    return samples


def routes_of(web: Web) -> list[Route]:
    app = create_app(web.ctx)
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert len(routes) == len(app.routes), "a mount or websocket route: extend this test"
    return routes


def paths(route: Route, samples: dict[str, list[str]]) -> list[str]:
    """``route.path`` with each parameter set to each of its sample values."""
    names = PARAM.findall(route.path)
    if not names:
        return [route.path]
    assert len(names) == 1, f"{route.path}: more than one parameter, extend this test"
    (name,) = names
    if name not in samples:
        pytest.fail(f"{route.path}: no sample values for {{{name}}}; add some to seed()")
    return [PARAM.sub(value, route.path) for value in samples[name]]


@pytest.fixture
def web(store: Store, smtp_server: SmtpFixture, tmp_path: Path) -> Iterator[Web]:
    with serve_web(store, smtp_server, tmp_path / "public") as running:
        yield running


@pytest.fixture
def proxied(store: Store, smtp_server: SmtpFixture, tmp_path: Path) -> Iterator[Web]:
    """The app behind a proxy on 127.0.0.1 (``web.trusted_proxies: [127.0.0.1]``)."""
    with serve_web(store, smtp_server, tmp_path / "public", web=PROXY) as running:
        yield running


# ------------------------------------------------------------------ 1. safe methods


def test_head_and_get_change_nothing_on_any_route(web: Web, smtp_server: SmtpFixture) -> None:
    samples = seed(web.ctx.store)
    before = state(web)
    visited: set[str] = set()
    # What link scanners send, besides plain requests.
    scanner_headers = [{}, {"Accept": "*/*", "Purpose": "prefetch"}, {"Sec-Purpose": "prefetch"}]
    for route in routes_of(web):
        if not {"GET", "HEAD"} & (route.methods or set()):
            continue
        for path in paths(route, samples):
            for method in ("HEAD", "GET"):
                for headers in scanner_headers:
                    response = web.client.request(method, path, headers=headers)
                    assert response.status_code < 500, (method, path, response.text)
            visited.add(route.path)
    assert {
        "/subscribe",
        "/confirm/{token}",
        "/unsubscribe/{token}",
        "/preferences/{token}",
    } <= visited
    web.settle()  # every request done, a background mail included had one been queued
    assert state(web) == before
    assert smtp_server.messages == []


# ------------------------------------------------------------------ 2. headers


def _assert_security_headers(response: httpx.Response, where: str) -> None:
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy"), where
    if headers.get("content-type", "").startswith("text/html"):
        assert "script-src 'none'" in csp, where
        # No page relies on inline script: nothing for the policy to break.
        assert "<script" not in response.text.lower(), where
    else:
        assert "default-src 'none'" in csp and "sandbox" in csp, where


def test_every_answer_carries_the_security_headers(web: Web) -> None:
    samples = seed(web.ctx.store)
    for route in routes_of(web):
        for path in paths(route, samples):
            for method in sorted(route.methods or ()):
                response = web.client.request(
                    method, path, data={"x": "1"} if method == "POST" else None
                )
                _assert_security_headers(response, f"{method} {path} -> {response.status_code}")
    for method, path in [("GET", "/no/such/page"), ("DELETE", "/subscribe"), ("GET", "/digests/x")]:
        response = web.client.request(method, path)
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"].startswith("text/html")
        _assert_security_headers(response, f"{method} {path}")
    # A method the path does not take: 405, naming every method it does.
    for route in routes_of(web):
        path = paths(route, samples)[0]
        for method in ("PUT", "DELETE", "PATCH"):
            response = web.client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert set(response.headers["allow"].split(", ")) == set(route.methods or ()), path


# ------------------------------------------------------------------ 4. numeric parameters


NUMBERS_OUT_OF_RANGE = [
    "-1",
    str(2**31),  # one past PostgreSQL's INTEGER
    str(2**32),
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    str(10**18),
    str(10**40),
    "9" * 400,
    "0" * 19 + "1",
    "1e3",
    "0x10",
    "1.0",
    "%201",
    "١٢",  # Arabic-Indic digits: str.isdigit() says yes
    "１２",  # full-width digits
    "+1",
]


def test_numeric_path_parameters_out_of_range_are_404(web: Web) -> None:
    numeric = [r for r in routes_of(web) if any(":" in p for p in re.findall(r"{[^}]*}", r.path))]
    assert numeric, "no numeric route left to test?"
    rng = random.Random(14)
    generated = [str(rng.randrange(ROW_ID_MAX + 1, 10 ** rng.randint(10, 60))) for _ in range(30)]
    generated += [str(-rng.randrange(1, 10**30)) for _ in range(5)]
    for route in numeric:
        for value in NUMBERS_OUT_OF_RANGE + generated:
            path = PARAM.sub(value, route.path)
            for method in ("GET", "HEAD"):
                response = web.client.request(method, path)
                assert response.status_code == 404, (method, path, response.status_code)


def test_rowid_pattern_matches_exactly_zero_to_the_limit() -> None:
    rng = random.Random(31)
    for limit in [0, 7, 9, 10, 99, 100, 305, 1099, 2000, ROW_ID_MAX, 2**63 - 1]:
        pattern = re.compile(digits_up_to(limit))
        values = [*range(0, 2100), limit - 1, limit, limit + 1, limit * 10]
        values += [rng.randrange(0, 10 * limit + 10) for _ in range(2000)]
        for value in values:
            if value >= 0:
                assert bool(pattern.fullmatch(str(value))) == (value <= limit), (limit, value)


# ------------------------------------------------------------------ hostile POST bodies


def _raw_request(url: str, head: bytes, chunks: Iterator[bytes] | None = None) -> tuple[int, bytes]:
    """Send ``head`` and then ``chunks`` on a raw socket until the server answers; (status, body).

    A client that keeps writing after the server has answered and closed would
    get a reset and could lose the answer, so this stops writing as soon as
    anything comes back.
    """
    parts = httpx.URL(url)
    with socket.create_connection((parts.host, parts.port or 80), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks or iter(()):
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    head_end = answer.index(b"\r\n\r\n")
                    declared = re.search(rb"(?i)content-length: *(\d+)", answer[:head_end])
                    if declared and len(answer) - head_end - 4 >= int(declared.group(1)):
                        break
        except ConnectionResetError:
            pass
    status = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    assert status, f"no HTTP answer: {answer[:200]!r}"
    return int(status.group(1)), answer.split(b"\r\n\r\n", 1)[-1]


def junk_bodies(rng: random.Random) -> list[tuple[str, bytes]]:
    """(content type, body) pairs no form ever sends; all under the size cap."""
    printable = "".join(rng.choice(string.printable) for _ in range(3000)).encode()
    return [
        ("application/x-www-form-urlencoded", rng.randbytes(4000)),
        ("application/x-www-form-urlencoded", printable),
        ("application/x-www-form-urlencoded", b"%%%&&&==" * 500),
        ("application/x-www-form-urlencoded", b"a=" + b"%FF%FE" * 2000),
        ("application/x-www-form-urlencoded", b"&".join(b"k%d=v" % i for i in range(2000))),
        ("multipart/form-data; boundary=xyz", rng.randbytes(5000)),
        ("multipart/form-data", b"--\r\n\r\n"),
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="email"'),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="email"; filename="a.txt"\r\n\r\n'
            b"x@example.org\r\n--b--\r\n",
        ),
        ("application/json", b'{"email": "x@example.org"}'),
        ("text/plain", "한국어".encode("euc-kr") * 100),
        ("", b"\x00" * 1000),
    ]


def test_post_routes_answer_junk_huge_and_forged_bodies_with_a_short_4xx(
    web: Web, smtp_server: SmtpFixture
) -> None:
    samples = seed(web.ctx.store)
    rng = random.Random(8058)
    forged = Tokens("another-secret-0123456789abcdef")
    samples["token"] += [
        forged.confirm_token(1, "active@example.org"),
        forged.unsubscribe_token(4, "active@example.org"),
        forged.preferences_token(4, "active@example.org"),
    ]
    before = database_rows(web.ctx.store)
    posts = [r for r in routes_of(web) if "POST" in (r.methods or ())]
    assert len(posts) >= 3
    host = b"Host: 127.0.0.1\r\n"
    for route in posts:
        for path in paths(route, samples):
            for content_type, body in junk_bodies(rng):
                response = web.client.post(
                    path, content=body, headers={"Content-Type": content_type}
                )
                assert 400 <= response.status_code < 500, (path, content_type, response.status_code)
                # Short: the page in the site's layout (about 5 KB), never an echo of the body.
                assert len(response.content) < 8192
            # 10 MB declared up front: refused before it is read.
            status, answer = _raw_request(
                web.url + path.lstrip("/"),
                b"POST "
                + path.encode()
                + b" HTTP/1.1\r\n"
                + host
                + b"Content-Type: application/x-www-form-urlencoded\r\n"
                + b"Content-Length: 10485760\r\n\r\n",
            )
            assert status == 413 and len(answer) < 4096, (path, status)
            # 10 MB without a length (chunked): refused once the cap is passed.
            chunk = b"a=" + b"b" * 65534
            chunks = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(160))
            status, answer = _raw_request(
                web.url,
                b"POST "
                + path.encode()
                + b" HTTP/1.1\r\n"
                + host
                + b"Content-Type: application/x-www-form-urlencoded\r\n"
                + b"Transfer-Encoding: chunked\r\n\r\n",
                chunks,
            )
            assert status == 413 and len(answer) < 4096, (path, status)
    web.settle()
    assert database_rows(web.ctx.store) == before
    assert smtp_server.messages == []


# ------------------------------------------------------------------ CSRF


def _forged_tokens(rng: random.Random, web: Web) -> list[str]:
    own = FormTokens(SECRET, salt=subscribe.FORM_SALT, max_age=subscribe.FORM_MAX_AGE)
    other = FormTokens("another-secret-0123456789abcdef", salt=subscribe.FORM_SALT, max_age=60)
    valid = form_token(web.client)
    _, someone_elses = own.issue()  # ours, but signed for another browser's cookie
    nonce = valid.split(".", 1)[0]
    return [
        "",
        "x",
        valid + "x",
        valid[:-3],
        nonce,
        other.issue()[1],
        someone_elses,
        "".join(rng.choice(string.ascii_letters + ".-_") for _ in range(60)),
        "\u202e" + valid,
        valid.upper(),
    ]


def test_subscribe_refuses_forged_missing_or_stale_csrf_tokens(
    web: Web, smtp_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(9)
    tokens = _forged_tokens(rng, web)

    class TwoDaysAgo:
        @staticmethod
        def time() -> float:
            return time.time() - 2 * 86400

    with monkeypatch.context() as patch:
        patch.setattr(itsdangerous.timed, "time", TwoDaysAgo)
        old_client = httpx.Client(base_url=web.url)
        stale = form_token(old_client)
    cases: list[tuple[httpx.Client, dict[str, str]]] = [(web.client, {"csrf": t}) for t in tokens]
    cases.append((web.client, {}))  # no token field at all
    cases.append((old_client, {"csrf": stale}))
    cases.append((httpx.Client(base_url=web.url), {"csrf": form_token(web.client)}))  # no cookie
    before = state(web)
    for client, extra in cases:
        response = client.post("/subscribe", data={"email": "victim@example.org", **extra})
        assert response.status_code == 403, extra
        assert "could not be accepted" in response.text
        assert 'name="csrf"' in response.text  # a fresh form to try again with
    old_client.close()
    web.settle()
    assert state(web) == before
    assert smtp_server.messages == []


CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1.evil.example"},
    {"Referer": "https://evil.example/page"},
    {"Sec-Fetch-Site": "cross-site"},
]


def test_subscribe_refuses_posts_from_other_sites_even_with_a_valid_token(
    web: Web, smtp_server: SmtpFixture
) -> None:
    for headers in CROSS_SITE:
        response = web.client.post(
            "/subscribe",
            data={"email": "victim@example.org", "csrf": form_token(web.client)},
            headers=headers,
        )
        assert response.status_code == 403, headers
        assert "another site" in response.text
    own = web.url.rstrip("/")
    for headers in (
        {"Origin": own},
        {"Referer": web.url + "subscribe"},
        {"Sec-Fetch-Site": "same-origin"},
    ):
        response = web.client.post(
            "/subscribe",
            data={"email": "reader@example.org", "csrf": form_token(web.client)},
            headers=headers,
        )
        assert response.status_code == 200, headers
    assert web.ctx.store.subscriber_by_email("victim@example.org") is None


def test_cross_site_reason_accepts_the_site_and_its_own_host_only() -> None:
    site = "https://films.example.org/digest/"
    allowed = [{}, {"origin": "https://films.example.org"}, {"origin": "HTTPS://Films.Example.org"}]
    allowed += [{"origin": "http://10.0.0.5:8080", "host": "10.0.0.5:8080"}]
    allowed += [{"referer": "https://films.example.org/digest/subscribe?x=1"}]
    for headers in allowed:
        assert cross_site_reason(Headers(headers), site) is None, headers
    refused = [
        {"origin": "https://films.example.org.evil.example"},
        {"origin": "http://films.example.org"},
    ]
    refused += [{"origin": ""}, {"referer": "not a url"}, {"referer": "https://evil.example/"}]
    refused += [{"origin": "https://evil.example", "host": "films.example.org"}]
    for headers in refused:
        assert cross_site_reason(Headers(headers), site) is not None, headers


# ------------------------------------------------------------------ client address


def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_bypass_the_limit(
    web: Web, smtp_server: SmtpFixture
) -> None:
    rng = random.Random(2000)
    token = form_token(web.client)
    statuses = []
    for i in range(200):
        spoof = ", ".join(
            str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(rng.randint(1, 3))
        )
        response = web.client.post(
            "/subscribe",
            data={"email": f"spoof{i}@example.org", "csrf": token},
            headers={"X-Forwarded-For": spoof, "X-Real-IP": spoof, "Forwarded": f"for={spoof}"},
        )
        statuses.append(response.status_code)
    assert statuses.count(200) == subscribe.SUBSCRIBE_LIMIT
    assert statuses.count(429) == 200 - subscribe.SUBSCRIBE_LIMIT
    web.settle()  # every accepted request's mail sent: no 6th can still be on its way
    assert len(smtp_server.messages) == subscribe.SUBSCRIBE_LIMIT


def test_behind_a_trusted_proxy_the_client_cannot_choose_its_address(proxied: Web) -> None:
    rng = random.Random(7)
    token = form_token(proxied.client)
    statuses = []
    for i in range(60):
        # What the client wrote, then what the proxy appended: the real client.
        spoof = ", ".join(str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2))
        response = proxied.client.post(
            "/subscribe",
            data={"email": f"p{i}@example.org", "csrf": token},
            headers={"X-Forwarded-For": f"{spoof}, 198.51.100.7"},
        )
        statuses.append(response.status_code)
    assert statuses.count(200) == subscribe.SUBSCRIBE_LIMIT
    # Another real client (another proxy-appended address) has its own quota.
    other = proxied.client.post(
        "/subscribe",
        data={"email": "other@example.org", "csrf": token},
        headers={"X-Forwarded-For": "198.51.100.8"},
    )
    assert other.status_code == 200


def _scope(peer: str, forwarded: str | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return {"type": "http", "client": (peer, 5000), "headers": headers}


def test_client_address_believes_only_trusted_proxies() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    cases = [
        # (peer, X-Forwarded-For, trusted?, expected key)
        ("203.0.113.9", "1.2.3.4", proxies, "203.0.113.9"),
        ("203.0.113.9", None, (), "203.0.113.9"),
        ("10.1.2.3", "1.2.3.4", (), "10.1.2.3"),
        ("10.1.2.3", "1.2.3.4", proxies, "1.2.3.4"),
        ("10.1.2.3", "6.6.6.6, 1.2.3.4", proxies, "1.2.3.4"),
        ("10.1.2.3", "6.6.6.6, 1.2.3.4, 10.9.9.9", proxies, "1.2.3.4"),
        ("10.1.2.3", "junk, 1.2.3.4", proxies, "1.2.3.4"),
        ("10.1.2.3", "1.2.3.4, junk", proxies, "10.1.2.3"),
        ("10.1.2.3", "", proxies, "10.1.2.3"),
        ("10.1.2.3", "1.2.3.4:5555", proxies, "1.2.3.4"),
        ("::1", "[2001:db8:1:2:3::9]:443", proxies, "2001:db8:1:2::/64"),
        ("2001:db8:1:2::5", None, (), "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::5", None, (), "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", None, (), "198.51.100.7"),
    ]
    for peer, forwarded, trusted, expected in cases:
        assert client_address(_scope(peer, forwarded), trusted) == expected, (peer, forwarded)
    # Generated: whatever a client prepends, the proxy-appended address is the key.
    rng = random.Random(3)
    for _ in range(500):
        spoof = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(rng.randint(0, 4))]
        chain = ", ".join([*spoof, "192.0.2.44", "10.0.0.2"])
        assert client_address(_scope("10.0.0.1", chain), proxies) == "192.0.2.44"


def test_trusted_proxies_are_validated_with_file_and_line(tmp_path: Path) -> None:
    good = parse_config("web:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1']\n")
    assert [str(n) for n in good.web.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert parse_config("site:\n  title: x\n").web.trusted_proxies == ()
    for bad in ("proxy.local", "10.0.0.0/33", "256.1.1.1", "*"):
        path = tmp_path / "feeds.yaml"
        path.write_text(
            f"site:\n  title: x\nweb:\n  trusted_proxies:\n    - 127.0.0.1\n    - '{bad}'\n"
        )
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}:6: web.trusted_proxies[1]:"), str(info.value)
        assert bad in str(info.value)


# ------------------------------------------------------------------ per-mailbox quota


def test_many_clients_get_at_most_three_mails_to_one_address(
    proxied: Web, smtp_server: SmtpFixture
) -> None:
    token = form_token(proxied.client)
    variants = [
        "victim@example.org",
        "Victim@Example.org",
        "victim+a@example.org",
        "VICTIM+zz@example.org",
    ]
    rng = random.Random(5)
    answers = set()
    for i in range(120):
        client_ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        response = proxied.client.post(
            "/subscribe",
            data={"email": variants[i % len(variants)], "csrf": token},
            headers={"X-Forwarded-For": client_ip},
        )
        assert response.status_code == 200
        answers.add(re.sub(r"If \S+ is", "If EMAIL is", response.text))
    assert len(answers) == 1  # the answer never tells whether a mail went out
    proxied.settle()  # all 120 requests and their mails done: a fourth would be here now
    assert len(smtp_server.messages) == subscribe.CONFIRM_MAILS_PER_ADDRESS
    # Other addresses are not affected.
    proxied.client.post(
        "/subscribe",
        data={"email": "bystander@example.org", "csrf": token},
        headers={"X-Forwarded-For": "192.0.2.1"},
    )
    smtp_server.wait_for(subscribe.CONFIRM_MAILS_PER_ADDRESS + 1)


def test_mailbox_key_folds_case_and_plus_tags() -> None:
    assert subscribe.mailbox_key("Victim+Tag@Example.ORG") == "victim@example.org"
    assert subscribe.mailbox_key("a+b+c@x.org") == "a@x.org"
    assert subscribe.mailbox_key("other@example.org") != subscribe.mailbox_key("victim@example.org")


# ------------------------------------------------------------------ the name field


URL_NAMES = [
    "http://evil.example",
    "Visit HTTPS://EVIL.EXAMPLE/win",
    "win at evil.com now",
    "www.evil.example",
    "www。evil。example",
    "evil．com",
    "무료 영화 bit.ly/abc",
    "상품권 받기 http://x.kr",
    "영화。한국",
    "mail me: x@evil.example",
    "javascript:alert(1)",
    "data:text/html,hi",
    "hxxp://ok but evil.co",
    "xn--9t4b11yi5a.com",
    "a" * 101,
    "박" * 101,
]
GOOD_NAMES = [
    "박찬욱",
    "Bong Joon-ho",
    "J. R. R. Tolkien",
    "Dr. Kim",
    "Kim Ji-woon (김지운)",
    "a" * 100,
]


def test_names_carrying_links_are_refused_and_names_reach_only_the_to_header(
    proxied: Web, smtp_server: SmtpFixture
) -> None:
    token = form_token(proxied.client)

    def post(i: int, email: str, name: str) -> httpx.Response:
        return proxied.client.post(
            "/subscribe",
            data={"email": email, "name": name, "csrf": token},
            headers={"X-Forwarded-For": f"192.0.2.{i}"},  # one client each: no 429
        )

    for i, name in enumerate(URL_NAMES):
        response = post(i, f"n{i}@example.org", name)
        assert response.status_code == 400, name
        assert "name" in response.text.lower()
    assert proxied.ctx.store.list_subscribers() == []
    for i, name in enumerate(GOOD_NAMES):
        response = post(100 + i, f"g{i}@example.org", name)
        assert response.status_code == 200, name
        row = proxied.ctx.store.subscriber_by_email(f"g{i}@example.org")
        assert row is not None and row.name == name
    smtp_server.wait_for(len(GOOD_NAMES))
    for message in smtp_server.messages:
        text = message.data.decode("utf-8", "replace")
        parsed = message.message
        bodies = [
            part.get_content() for part in parsed.walk() if part.get_content_maintype() == "text"
        ]
        for name in GOOD_NAMES:
            assert all(name not in body for body in bodies), name
        recipient = message.recipients[0]
        given = GOOD_NAMES[int(recipient.split("@")[0][1:])]
        assert parsed["To"].addresses[0].display_name == given.strip()
        assert parsed["To"].addresses[0].addr_spec == recipient
        assert "Hello," in text


def test_name_problem_over_generated_inputs() -> None:
    rng = random.Random(12)
    schemes = ["http", "https", "HTTP", "ftp", "hxxps"]
    hosts = ["evil.example", "EVIL.COM", "bit.ly", "예시.한국", "xn--h32b13vza.xn--3e0b707e"]
    for _ in range(300):
        host = rng.choice(hosts)
        form = rng.choice([f"{rng.choice(schemes)}://{host}/p", host, f"www.{host}", f"u@{host}"])
        prefix = "".join(rng.choice("가나다 abc") for _ in range(rng.randint(0, 10)))
        assert subscribe.name_problem(f"{prefix} {form} ") is not None, form
    for name in GOOD_NAMES:
        assert subscribe.name_problem(name) is None, name


# ------------------------------------------------------------------ limiter memory


def test_rate_limiter_stays_bounded_and_fails_closed_under_a_flood_of_keys() -> None:
    limiter = RateLimiter(3, 60.0, max_keys=1000)
    assert all(limiter.hit("victim", now=0.0) is None for _ in range(3))
    rng = random.Random(4)
    # A flood of fresh keys within the window: the table stays at its cap, and the
    # victim's count is not pushed out (it would be, were old keys forgotten).
    refused = sum(limiter.hit(f"k{rng.getrandbits(64)}", now=1.0) is not None for _ in range(5000))
    assert len(limiter.snapshot()) == 1000
    assert refused == 5000 - 999
    assert limiter.hit("victim", now=2.0) is not None
    # Once the window has passed, idle keys are dropped and newcomers get in again.
    assert limiter.hit("newcomer", now=62.0) is None
    assert len(limiter.snapshot()) == 1
