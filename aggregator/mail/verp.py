"""VERP: a return address per delivery, ``bounces+TOKEN@verp_domain``.

A bounce goes to the envelope sender, and a VERP address carries the
delivery in it: the digest and the subscriber, signed with the site secret.
Even a bounce report we cannot parse (a remote server's free-form text)
then names exactly one delivery, and nobody can forge a bounce that marks
an arbitrary subscriber: the token's HMAC would not match.

The token is lower-case letters, digits and dots: some mail servers fold the
local part to lower case, and the whole local part stays under RFC 5321's
64 characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["VerpToken", "read_verp_address", "verp_address"]

_PREFIX = "bounces"
_SALT = b"aggregator.bounces.verp.v1"
_MAC_CHARS = 16  # 80 bits: guessing one is hopeless, and the local part stays short
_LOCAL = re.compile(r"bounces\+(\d{1,12})\.(\d{1,12})\.([a-z2-7]{16})", re.IGNORECASE)


class VerpToken(tuple[int, int]):
    """(digest id, subscriber id) read back from a valid VERP address."""

    @property
    def digest_id(self) -> int:
        return self[0]

    @property
    def subscriber_id(self) -> int:
        return self[1]


def _mac(secret: str, digest_id: int, subscriber_id: int) -> str:
    digest = hmac.new(
        secret.encode(), _SALT + f":{digest_id}.{subscriber_id}".encode(), hashlib.sha256
    ).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_MAC_CHARS]


def verp_address(secret: str, domain: str, digest_id: int, subscriber_id: int) -> str:
    """The envelope sender for one delivery: ``bounces+DIGEST.SUBSCRIBER.MAC@domain``."""
    token = f"{digest_id}.{subscriber_id}.{_mac(secret, digest_id, subscriber_id)}"
    return f"{_PREFIX}+{token}@{domain}"


def read_verp_address(secret: str, address: str) -> VerpToken | None:
    """The delivery a VERP address names, or None when it is not ours or forged."""
    local = address.strip().strip("<>").rsplit("@", 1)[0]
    match = _LOCAL.fullmatch(local)
    if match is None:
        return None
    digest_id, subscriber_id = int(match.group(1)), int(match.group(2))
    if not hmac.compare_digest(match.group(3).lower(), _mac(secret, digest_id, subscriber_id)):
        return None
    return VerpToken((digest_id, subscriber_id))
