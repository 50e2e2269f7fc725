"""Signed links for the subscribe flow: confirm (expires) and unsubscribe (long-lived).

A token is an HMAC-signed payload ``[subscriber id, email]`` made with the
site's secret (``AGGREGATOR_SECRET``). Confirm and unsubscribe tokens use
different salts, so one can never stand in for the other. Because the email is
signed into the token, a token cannot be pointed at another subscriber by
changing the id, and the route checks that the stored row still has that email.

Confirm tokens carry their issue time and expire after :data:`CONFIRM_MAX_AGE`;
one issued before the subscriber last unsubscribed is refused, so an old
confirmation mail cannot silently undo an unsubscribe. Unsubscribe tokens carry
no time: they appear in every digest and must keep working for years, and being
deterministic they make ``List-Unsubscribe`` identical on every resend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from .errors import TokenError

__all__ = ["CONFIRM_MAX_AGE", "TokenClaims", "Tokens"]

CONFIRM_MAX_AGE = timedelta(days=7)

_CONFIRM_SALT = "aggregator.subscribe.confirm.v1"
_UNSUBSCRIBE_SALT = "aggregator.subscribe.unsubscribe.v1"
_PREFERENCES_SALT = "aggregator.subscribe.preferences.v1"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says: whose it is and, for confirm tokens, when it was issued."""

    subscriber_id: int
    email: str
    issued_at: datetime | None = None


def _claims(payload: Any, issued_at: datetime | None = None) -> TokenClaims:
    # The signature is valid, so this shape was made by us; still, never trust it blindly.
    if (
        not isinstance(payload, list)
        or len(payload) != 2
        or not isinstance(payload[0], int)
        or not isinstance(payload[1], str)
    ):
        raise TokenError("this link is malformed")
    return TokenClaims(payload[0], payload[1], issued_at)


class Tokens:
    """Make and check the signed tokens for one secret."""

    def __init__(self, secret: str, *, confirm_max_age: timedelta = CONFIRM_MAX_AGE) -> None:
        if not secret:
            raise ValueError("an empty secret would make every token forgeable")
        self._confirm = URLSafeTimedSerializer(secret, salt=_CONFIRM_SALT)
        self._unsubscribe = URLSafeSerializer(secret, salt=_UNSUBSCRIBE_SALT)
        self._preferences = URLSafeSerializer(secret, salt=_PREFERENCES_SALT)
        self.confirm_max_age = confirm_max_age

    def confirm_token(self, subscriber_id: int, email: str) -> str:
        """A token for ``/confirm/<token>``; valid for :attr:`confirm_max_age`."""
        return self._confirm.dumps([subscriber_id, email])

    def unsubscribe_token(self, subscriber_id: int, email: str) -> str:
        """A token for ``/unsubscribe/<token>``; the same for the same subscriber, never expires."""
        return str(self._unsubscribe.dumps([subscriber_id, email]))

    def preferences_token(self, subscriber_id: int, email: str) -> str:
        """A token for ``/preferences/<token>``: like an unsubscribe token, it never expires.

        Its own salt: a preferences link forwarded to a friend lets them
        change what is sent, not stop it, and cannot be turned into either.
        """
        return str(self._preferences.dumps([subscriber_id, email]))

    def read_confirm(self, token: str) -> TokenClaims:
        """Check a confirm token; :class:`TokenError` if forged, expired or of another kind."""
        try:
            payload, signed_at = self._confirm.loads(
                token, max_age=int(self.confirm_max_age.total_seconds()), return_timestamp=True
            )
        except SignatureExpired:
            raise TokenError("this confirmation link has expired; subscribe again") from None
        except BadSignature:
            raise TokenError("this confirmation link is not valid") from None
        return _claims(payload, signed_at.astimezone(UTC))

    def read_unsubscribe(self, token: str) -> TokenClaims:
        """Check an unsubscribe token; :class:`TokenError` if forged or of another kind."""
        try:
            payload = self._unsubscribe.loads(token)
        except BadSignature:
            raise TokenError("this unsubscribe link is not valid") from None
        return _claims(payload)

    def read_preferences(self, token: str) -> TokenClaims:
        """Check a preferences token; :class:`TokenError` if forged or of another kind."""
        try:
            payload = self._preferences.loads(token)
        except BadSignature:
            raise TokenError("this preferences link is not valid") from None
        return _claims(payload)
