"""STARTTLS and AUTH against a real aiosmtpd that requires both.

The server offers STARTTLS with a throw-away self-signed certificate and
refuses mail before TLS and login. The sender reads the user and password from
the environment variables that ``smtp.username_env`` / ``smtp.password_env``
name (never from feeds.yaml); a refused login is one clear error naming the
host and the user, and leaves every ledger row pending for the next send.
Implicit TLS (``smtp.ssl``) is served the same way; either way the
certificate must be valid for ``smtp.host``, not only trusted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.deliver import SmtpConnection, deliver_digest, send_message
from aggregator.errors import DeliveryError
from aggregator.models import DeliveryStatus, SmtpSettings
from aggregator.store import Store
from tests.support.smtp import (
    SMTP_PASSWORD,
    SMTP_USER,
    Credentials,
    SmtpFixture,
    self_signed_certificate,
)
from tests.test_deliver import SECRET, SITE, add_active, make_digest

USER_ENV = "DIGEST_RELAY_USER"  # deliberately not SMTP_USER: the names come from feeds.yaml
PASSWORD_ENV = "DIGEST_RELAY_PASSWORD"


def tls_settings(server: SmtpFixture, **overrides: object) -> SmtpSettings:
    values: dict[str, object] = {
        "starttls": True,
        "username_env": USER_ENV,
        "password_env": PASSWORD_ENV,
        "max_attempts": 1,
    }
    values.update(overrides)
    return server.settings(**values)


def trusted_with_login(server: SmtpFixture, monkeypatch: pytest.MonkeyPatch) -> SmtpFixture:
    """Trust the relay's certificate and put the account in the variables feeds.yaml names."""
    server.trust(monkeypatch)
    monkeypatch.setenv(USER_ENV, SMTP_USER)
    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    return server


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    store = Store.open(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def relay(smtp_tls_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch) -> SmtpFixture:
    return trusted_with_login(smtp_tls_server, monkeypatch)


@pytest.fixture
def login_only_relay(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SmtpFixture]:
    """The same, offering AUTH LOGIN only (older relays)."""
    server = trusted_with_login(
        _server(tmp_path_factory.mktemp("login-only"), mechanisms=("LOGIN",)), monkeypatch
    )
    try:
        yield server
    finally:
        server.stop()


def send(store: Store, server: SmtpFixture, **overrides: object) -> object:
    digest = store.last_digest() or make_digest(store)
    return asyncio.run(
        deliver_digest(
            store,
            digest,
            site=SITE,
            smtp=tls_settings(server, **overrides),
            secret=SECRET,
            retry_delay=0.05,
        )
    )


def test_digest_goes_out_over_starttls_after_logging_in_with_the_env_credentials(
    sqlite_store: Store, relay: SmtpFixture
) -> None:
    emails = add_active(sqlite_store, 5)
    send(sqlite_store, relay)
    relay.wait_for(5)
    assert sorted(r for m in relay.messages for r in m.recipients) == emails
    assert all(m.tls and m.login == SMTP_USER for m in relay.messages)
    assert relay.credentials is not None
    assert relay.credentials.attempts == [("PLAIN", SMTP_USER, True)]  # one session, one login


def test_auth_login_is_used_when_it_is_the_only_mechanism(
    sqlite_store: Store, login_only_relay: SmtpFixture
) -> None:
    add_active(sqlite_store, 2)
    send(sqlite_store, login_only_relay)
    login_only_relay.wait_for(2)
    assert login_only_relay.credentials is not None
    assert login_only_relay.credentials.attempts == [("LOGIN", SMTP_USER, True)]
    assert all(m.tls for m in login_only_relay.messages)


def test_a_wrong_password_is_one_clear_error_and_the_next_send_delivers_everything_once(
    sqlite_store: Store, relay: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = add_active(sqlite_store, 4)
    monkeypatch.setenv(PASSWORD_ENV, "not the password")
    with pytest.raises(DeliveryError) as refused:
        send(sqlite_store, relay)
    message = str(refused.value)
    assert message.startswith(
        f"SMTP server 127.0.0.1:{relay.port} refused the login of '{SMTP_USER}': 535"
    )
    assert "not the password" not in message  # the password never reaches a log
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert relay.messages == []
    digest = sqlite_store.last_digest()
    assert digest is not None and digest.id is not None
    counts = sqlite_store.delivery_counts(digest.id)
    assert counts[DeliveryStatus.PENDING] == 4 and counts[DeliveryStatus.SENT] == 0

    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    send(sqlite_store, relay)
    relay.wait_for(4)
    assert sorted(r for m in relay.messages for r in m.recipients) == emails
    assert sqlite_store.delivery_counts(digest.id)[DeliveryStatus.SENT] == 4


def test_credentials_named_but_not_set_are_reported_before_connecting(
    relay: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(USER_ENV)
    with pytest.raises(
        DeliveryError, match=f"^smtp.username_env names {USER_ENV}, which is not set$"
    ):
        SmtpConnection(tls_settings(relay))
    assert relay.credentials is not None and relay.credentials.attempts == []


def test_without_starttls_the_relay_refuses_and_the_error_names_it(
    sqlite_store: Store, relay: SmtpFixture
) -> None:
    add_active(sqlite_store, 1)
    with pytest.raises(DeliveryError, match=rf"127\.0\.0\.1:{relay.port}"):
        send(sqlite_store, relay, starttls=False)
    assert relay.messages == []


def test_an_untrusted_certificate_is_refused(
    sqlite_store: Store, smtp_tls_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No trust(): the self-signed certificate is just a stranger's.
    monkeypatch.setenv(USER_ENV, SMTP_USER)
    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    add_active(sqlite_store, 1)
    with pytest.raises(
        DeliveryError, match=rf"cannot connect to SMTP server 127\.0\.0\.1:{smtp_tls_server.port}"
    ):
        send(sqlite_store, smtp_tls_server)
    assert smtp_tls_server.messages == []
    assert smtp_tls_server.credentials is not None
    assert smtp_tls_server.credentials.attempts == []  # the password never left


def test_confirmation_mail_uses_the_same_tls_and_login(relay: SmtpFixture) -> None:
    data = b"From: digest@example.org\r\nTo: new@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    asyncio.run(send_message(tls_settings(relay), "digest@example.org", "new@example.org", data))
    [message] = relay.wait_for(1)
    assert message.tls and message.login == SMTP_USER


def _server(directory: Path, host: str = "127.0.0.1", **options: object) -> SmtpFixture:
    """A relay on 127.0.0.1 requiring AUTH, its certificate issued for ``host``."""
    server = SmtpFixture(
        certificate=self_signed_certificate(directory, host),
        credentials=Credentials(SMTP_USER, SMTP_PASSWORD),
        **options,  # type: ignore[arg-type]
    )
    server.start()
    return server


@pytest.fixture
def implicit_tls_relay(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SmtpFixture]:
    """A relay speaking TLS from the first byte (``smtp.ssl``), requiring AUTH.

    aiosmtpd warns that AUTH does not require TLS: it counts only STARTTLS as
    TLS; these sessions are encrypted from their first byte (hence the
    ``filterwarnings`` marks on the tests that use it)."""
    server = trusted_with_login(
        _server(tmp_path_factory.mktemp("implicit-tls"), implicit_tls=True), monkeypatch
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("count", [1, 3])
def test_digest_goes_out_over_implicit_tls_with_smtp_ssl(
    sqlite_store: Store, implicit_tls_relay: SmtpFixture, count: int
) -> None:
    emails = add_active(sqlite_store, count)
    # A short timeout: a client that waited for a plain greeting would give up
    # in 3 s (the server says nothing before the TLS handshake).
    send(sqlite_store, implicit_tls_relay, starttls=False, ssl=True, timeout=3.0)
    received = implicit_tls_relay.wait_for(count)
    assert sorted(r for m in received for r in m.recipients) == emails
    assert all(m.tls and m.login == SMTP_USER for m in received)
    assert implicit_tls_relay.credentials is not None
    assert implicit_tls_relay.credentials.attempts == [("PLAIN", SMTP_USER, True)]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
@pytest.mark.parametrize("certified", ["127.0.0.2", "::1"])
def test_a_trusted_certificate_for_another_host_is_refused(
    sqlite_store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    certified: str,
) -> None:
    """The certificate is checked against ``smtp.host``, not only its issuer: a
    relay on 127.0.0.1 showing a trusted certificate issued for another address
    (what a man in the middle with a certificate of the same private CA would
    show) gets neither the password nor a message."""
    server = _server(tmp_path, certified, implicit_tls=mode == "ssl")
    try:
        trusted_with_login(server, monkeypatch)
        add_active(sqlite_store, 1)
        with pytest.raises(
            DeliveryError, match=rf"^cannot connect to SMTP server 127\.0\.0\.1:{server.port}: "
        ):
            send(sqlite_store, server, starttls=mode == "starttls", ssl=mode == "ssl", timeout=3.0)
        assert server.messages == []
        assert server.credentials is not None and server.credentials.attempts == []
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("password_env", [None, "DIGEST_RELAY_PASSWORD_NOT_SET"])
@pytest.mark.parametrize("how", ["digest", "one message"])
def test_without_a_password_variable_the_login_sends_an_empty_password(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch, password_env: str | None, how: str
) -> None:
    """A relay account with a user and no password (README, ``smtp``): with
    ``password_env`` left out, or naming a variable that is not set, the login
    sends the user and an empty password."""
    server = SmtpFixture(credentials=Credentials(SMTP_USER, ""))
    server.start()
    try:
        monkeypatch.setenv(USER_ENV, SMTP_USER)
        monkeypatch.delenv("DIGEST_RELAY_PASSWORD_NOT_SET", raising=False)
        settings = server.settings(username_env=USER_ENV, password_env=password_env)
        if how == "digest":
            add_active(sqlite_store, 2)
            digest = make_digest(sqlite_store)
            asyncio.run(
                deliver_digest(
                    sqlite_store, digest, site=SITE, smtp=settings, secret=SECRET, retry_delay=0.05
                )
            )
            expected = 2
        else:
            data = b"From: digest@example.org\r\nTo: new@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
            asyncio.run(send_message(settings, "digest@example.org", "new@example.org", data))
            expected = 1
        received = server.wait_for(expected)
        assert [m.login for m in received] == [SMTP_USER] * expected
        assert server.credentials is not None
        assert server.credentials.attempts == [("PLAIN", SMTP_USER, True)]
    finally:
        server.stop()
