"""Signed confirm/unsubscribe tokens: stable across releases, refused when forged or misshapen.

Links in mail already sent must keep working after an upgrade, so the salts and
the token format are pinned here as literals: a change to either fails a test
instead of silently breaking every unsubscribe link in every inbox.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from aggregator.errors import TokenError
from aggregator.tokens import CONFIRM_MAX_AGE, Tokens

SECRET = "k" * 32
CONFIRM_SALT = "aggregator.subscribe.confirm.v1"
UNSUBSCRIBE_SALT = "aggregator.subscribe.unsubscribe.v1"
PEOPLE = [(1, "kim@example.org"), (42, "이영희@example.kr"), (10**9, "a+tag@sub.example.co.kr")]


@pytest.fixture
def seoul_local_time() -> Iterator[None]:
    """Run with the process's local zone set to Seoul, so "local" is not UTC."""
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Seoul"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_unsubscribe_token_is_pinned_across_releases() -> None:
    # Made once with the salt above; every digest ever mailed carries tokens like it.
    token = Tokens(SECRET).unsubscribe_token(7, "kim@example.org")
    assert token == URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps([7, "kim@example.org"])
    assert token == "WzcsImtpbUBleGFtcGxlLm9yZyJd.z5wW1MCU8tSscW13O_G5Njs4gco"


@pytest.mark.parametrize(("subscriber_id", "email"), PEOPLE)
def test_a_confirm_token_made_with_the_documented_salt_is_accepted(
    subscriber_id: int, email: str
) -> None:
    token = URLSafeTimedSerializer(SECRET, salt=CONFIRM_SALT).dumps([subscriber_id, email])
    claims = Tokens(SECRET).read_confirm(token)
    assert (claims.subscriber_id, claims.email) == (subscriber_id, email)


@pytest.mark.parametrize(("subscriber_id", "email"), PEOPLE)
def test_tokens_round_trip_and_carry_the_issue_time_in_utc(
    subscriber_id: int, email: str, seoul_local_time: None
) -> None:
    tokens = Tokens(SECRET)
    before = datetime.now(UTC).replace(microsecond=0)
    claims = tokens.read_confirm(tokens.confirm_token(subscriber_id, email))
    assert (claims.subscriber_id, claims.email) == (subscriber_id, email)
    assert claims.issued_at is not None
    assert claims.issued_at.utcoffset() == timedelta(0)
    assert before <= claims.issued_at <= datetime.now(UTC)
    unsub = tokens.read_unsubscribe(tokens.unsubscribe_token(subscriber_id, email))
    assert (unsub.subscriber_id, unsub.email, unsub.issued_at) == (subscriber_id, email, None)


def test_one_kind_of_token_never_stands_in_for_the_other() -> None:
    tokens = Tokens(SECRET)
    with pytest.raises(TokenError, match=r"^this unsubscribe link is not valid$"):
        tokens.read_unsubscribe(tokens.confirm_token(1, "kim@example.org"))
    with pytest.raises(TokenError, match=r"^this confirmation link is not valid$"):
        tokens.read_confirm(tokens.unsubscribe_token(1, "kim@example.org"))


def test_another_secret_or_an_edited_token_is_refused() -> None:
    ours, theirs = Tokens(SECRET), Tokens("z" * 32)
    with pytest.raises(TokenError, match=r"^this confirmation link is not valid$"):
        ours.read_confirm(theirs.confirm_token(1, "kim@example.org"))
    with pytest.raises(TokenError, match=r"^this unsubscribe link is not valid$"):
        ours.read_unsubscribe(theirs.unsubscribe_token(1, "kim@example.org"))
    token = ours.unsubscribe_token(1, "kim@example.org")
    with pytest.raises(TokenError, match=r"^this unsubscribe link is not valid$"):
        ours.read_unsubscribe(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))


def test_confirm_tokens_expire_after_seven_days() -> None:
    assert timedelta(days=7) == CONFIRM_MAX_AGE
    signer = URLSafeTimedSerializer(SECRET, salt=CONFIRM_SALT)
    eight_days_ago = time.time() - 8 * 86400

    old = signer.make_signer(CONFIRM_SALT)
    old.get_timestamp = lambda: int(eight_days_ago)  # type: ignore[method-assign]
    token = old.sign(signer.dump_payload([1, "kim@example.org"])).decode()
    with pytest.raises(TokenError, match=r"^this confirmation link has expired; subscribe again$"):
        Tokens(SECRET).read_confirm(token)
    # The same age is fine under a longer limit: the expiry is the age, not the signature.
    claims = Tokens(SECRET, confirm_max_age=timedelta(days=9)).read_confirm(token)
    assert claims.email == "kim@example.org"


@pytest.mark.parametrize(
    "payload",
    [
        "kim@example.org",  # not a list
        {"id": 1, "email": "kim@example.org"},  # not a list either
        [1],  # too short
        [1, "kim@example.org", "extra"],  # too long
        ["1", "kim@example.org"],  # id not an int
        [1, 2],  # email not a str
        [None, None],
    ],
)
def test_a_signed_but_misshapen_payload_is_refused(payload: Any) -> None:
    unsub = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps(payload)
    with pytest.raises(TokenError, match=r"^this link is malformed$"):
        Tokens(SECRET).read_unsubscribe(unsub)
    confirm = URLSafeTimedSerializer(SECRET, salt=CONFIRM_SALT).dumps(payload)
    with pytest.raises(TokenError, match=r"^this link is malformed$"):
        Tokens(SECRET).read_confirm(confirm)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^an empty secret would make every token forgeable$"):
        Tokens("")
