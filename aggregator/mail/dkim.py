"""DKIM: sign every outgoing message (dkimpy), make key pairs, say what DNS must hold.

Gmail and Yahoo require authenticated bulk mail since 2024. The signature
covers the headers a receiver judges us by, including ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` as RFC 8058 asks (a one-click unsubscribe header
that a forwarder could change would be worthless), and the whole body, both
with the ``relaxed`` canonicalization so a relay re-folding a header or
trimming trailing spaces does not break it.

The private key comes from a file (``smtp.dkim.key_file``, relative to
feeds.yaml) or from an environment variable (``key_env``), never from
feeds.yaml itself; :func:`load_private_key` checks it once when the config is
checked and again when a sender starts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import (
    CanonicalizationPolicy,
    compress_whitespace,
    strip_trailing_whitespace,
)

from ..errors import ConfigError
from ..models import DkimSettings

__all__ = [
    "DEFAULT_KEY_BITS",
    "SIGNED_HEADERS",
    "BodyHash",
    "DkimSigner",
    "KeyPair",
    "dkim_txt_record",
    "dmarc_txt_record",
    "generate_key_pair",
    "load_private_key",
    "public_key_b64",
    "spf_txt_record",
]

DEFAULT_KEY_BITS = 2048
# Receivers treat RSA keys under 1024 bits as no signature at all (RFC 8301).
MIN_KEY_BITS = 1024

_NAME = b"DKIM-Signature"

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"MIME-Version",
    b"Content-Type",
)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A new DKIM key: the private key as PEM, the public key as the DNS ``p=`` value."""

    private_pem: bytes
    public_b64: str


def generate_key_pair(bits: int = DEFAULT_KEY_BITS) -> KeyPair:
    """A fresh RSA key pair (2048 bits: what every large receiver accepts and DNS can hold)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return KeyPair(private_pem=pem, public_b64=public_key_b64(pem))


def public_key_b64(private_pem: bytes) -> str:
    """The ``p=`` value of the DNS record: base64 of the public key's SubjectPublicKeyInfo."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _where(settings: DkimSettings) -> str:
    if settings.key_file:
        return settings.key_file
    return f"environment variable {settings.key_env}"


def load_private_key(settings: DkimSettings, *, environ: Mapping[str, str] | None = None) -> bytes:
    """The signing key as PKCS#1 PEM; :class:`ConfigError` saying what is wrong with it.

    Any PEM private key :mod:`cryptography` reads is accepted (PKCS#1 or
    PKCS#8, as ``openssl genrsa`` or ``genpkey`` write them); it must be an
    unencrypted RSA key of at least 1024 bits.
    """
    env = os.environ if environ is None else environ
    if settings.key_file:
        try:
            pem = Path(settings.key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the DKIM key {settings.key_file}: {exc.strerror or exc}",
                key="smtp.dkim.key_file",
            ) from None
    elif settings.key_env:
        value = env.get(settings.key_env, "")
        if not value.strip():
            raise ConfigError(
                f"smtp.dkim.key_env names {settings.key_env}, which is not set "
                "(put the PEM private key in it, or use key_file)",
                key="smtp.dkim.key_env",
            )
        pem = value.encode("utf-8")
    else:  # the config model requires one of the two
        raise ConfigError("smtp.dkim needs key_file or key_env", key="smtp.dkim")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(
            f"the DKIM key in {_where(settings)} is encrypted; DKIM signing needs it "
            "without a passphrase (protect the file with permissions instead)",
            key="smtp.dkim",
        ) from None
    except ValueError:
        raise ConfigError(
            f"{_where(settings)} does not hold a PEM private key "
            "(make one with: aggregator dkim keygen --selector NAME)",
            key="smtp.dkim",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"the DKIM key in {_where(settings)} is not an RSA key "
            "(rsa-sha256 is what every receiver verifies)",
            key="smtp.dkim",
        )
    if key.key_size < MIN_KEY_BITS:
        raise ConfigError(
            f"the DKIM key in {_where(settings)} has {key.key_size} bits; receivers "
            f"ignore keys under {MIN_KEY_BITS} (use {DEFAULT_KEY_BITS})",
            key="smtp.dkim",
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class DkimSigner:
    """Signs messages for one ``smtp.dkim`` setting; the key is read once, here.

    dkimpy does the DKIM part (parsing the header block, relaxed
    canonicalization, choosing and hashing the signed headers, folding);
    the RSA signature itself is made by OpenSSL through :mod:`cryptography`.
    dkimpy's own RSA is pure Python, ~30 ms per signature here, which would
    cut the sender's ~100 messages per second to ~25; OpenSSL takes ~1 ms.
    Every signature is checked by dkimpy's verifier in the tests.
    """

    def __init__(self, settings: DkimSettings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        pem = load_private_key(settings, environ=environ)
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)  # load_private_key refused anything else
        self._key = key
        self._selector = settings.selector.encode("ascii")
        self._domain = settings.domain.encode("ascii")
        self._policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

    def sign(self, message: bytes, *, now: float | None = None) -> bytes:
        """``message`` (CRLF line ends) with a ``DKIM-Signature`` header in front.

        Only headers the message has are listed in ``h=``: naming an absent
        one would be harmless, but a receiver's report would list headers we
        never send.
        """
        headers, body = dkim.rfc822_parse(message)
        body_hash = hashlib.sha256(self._policy.canonicalize_body(body)).digest()
        return self._signature(headers, body_hash, now) + message

    def signature_for(self, head: bytes, body_hash: bytes, *, now: float | None = None) -> bytes:
        """The ``DKIM-Signature`` header that :meth:`sign` puts before a message whose
        header block (up to and including the empty line) is ``head`` and whose body's
        relaxed SHA-256 (:class:`BodyHash`) is ``body_hash``.

        A digest's body is hashed from parts shared by every copy of the issue,
        so per message only the header block is parsed here, not ~150 KB of body.
        """
        headers, _ = dkim.rfc822_parse(head)
        return self._signature(headers, body_hash, now)

    def _signature(self, headers: list[list[bytes]], body_hash: bytes, now: float | None) -> bytes:
        present = {name.lower() for name, _ in headers}
        signed = tuple(h.lower() for h in SIGNED_HEADERS if h.lower() in present)
        tags = (
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", b"relaxed/relaxed"),
            (b"d", self._domain),
            (b"s", self._selector),
            (b"t", str(int(time.time() if now is None else now)).encode("ascii")),
            # Spaces around the colons give fold() places to break the line.
            (b"h", b" : ".join(signed)),
            (b"bh", base64.b64encode(body_hash)),
            # Empty while hashing (RFC 6376 3.7); the signature is appended after it.
            (b"b", b""),
        )
        value: bytes = dkim.fold(b"; ".join(k + b"=" + v for k, v in tags), namelen=len(_NAME) + 2)
        hasher = hashlib.sha256()
        canonical = self._policy.canonicalize_headers(headers)
        dkim.hash_headers(hasher, self._policy, canonical, signed, (_NAME, b" " + value), {})
        signature = self._key.sign(
            hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
        encoded = base64.b64encode(signature)
        # Folded inside b=: whitespace there is ignored by verifiers.
        folded = b"\r\n ".join(encoded[i : i + 72] for i in range(0, len(encoded), 72))
        return _NAME + b": " + value + b"\r\n " + folded + b"\r\n"


class BodyHash:
    """The relaxed body hash (``bh=``) of bodies made of fixed and per-message chunks.

    RFC 6376 3.4.4 canonicalizes a body line by line; the only rule that looks
    past a line (empty lines at the very end are dropped) cannot apply inside
    a body that goes on. So when every chunk ends with CRLF, the canonical
    body is the chunks canonicalized one by one, and a fixed chunk is done
    once per issue. ``add_fixed`` and ``add_slot`` describe the body in order;
    :meth:`digest` hashes it with one value per slot.
    """

    def __init__(self) -> None:
        self._start = hashlib.sha256()
        self._steps: list[tuple[int, bytes]] = []  # (slot, canonical fixed chunk after it)
        self._last = b""

    def add_fixed(self, chunk: bytes) -> None:
        if not chunk.endswith(b"\r\n"):
            raise ValueError("every chunk of a hashed body must end with CRLF")
        canonical = _relaxed_lines(chunk)
        if self._steps:
            slot, fixed = self._steps[-1]
            self._steps[-1] = (slot, fixed + canonical)
        else:
            self._start.update(canonical)
        self._last = chunk

    def add_slot(self, slot: int) -> None:
        self._steps.append((slot, b""))
        self._last = b""  # a body must not end with a slot (see digest)

    def digest(self, values: list[bytes]) -> bytes:
        """The SHA-256 of the canonical body with ``values[slot]`` (each ending in CRLF)
        at each slot."""
        if not self._last.rstrip(b"\r\n") or self._last.endswith(b"\r\n\r\n"):
            # A body ending in empty lines would need the end-of-body rule.
            raise ValueError("a hashed body must end with a non-empty line")
        hasher = self._start.copy()
        canonical = [_relaxed_lines(v) for v in values]
        for slot, fixed in self._steps:
            hasher.update(canonical[slot])
            hasher.update(fixed)
        return hasher.digest()


def _relaxed_lines(chunk: bytes) -> bytes:
    # dkimpy's own steps, so the hash is the one its canonicalize_body gives.
    return compress_whitespace(strip_trailing_whitespace(chunk))  # type: ignore[no-any-return]


# --------------------------------------------------------------------- DNS records


def _quoted_chunks(value: str, size: int = 255) -> str:
    """A TXT value as quoted strings of at most 255 bytes (DNS's limit per string)."""
    return " ".join(f'"{value[i : i + size]}"' for i in range(0, len(value), size))


def dkim_txt_record(selector: str, domain: str, public_b64: str) -> str:
    """The zone-file line publishing the public key: ``S._domainkey.D. IN TXT "v=DKIM1; ..."``."""
    value = f"v=DKIM1; k=rsa; p={public_b64}"
    return f"{selector}._domainkey.{domain}. IN TXT {_quoted_chunks(value)}"


def spf_txt_record(domain: str, relay_host: str) -> str:
    """An SPF record allowing the relay feeds.yaml names (``mx`` when it is local)."""
    local = relay_host in {"localhost", "127.0.0.1", "::1"}
    mechanism = "mx" if local else f"a:{relay_host}"
    return f'{domain}. IN TXT "v=spf1 {mechanism} ~all"'


def dmarc_txt_record(domain: str, report_to: str) -> str:
    """A starting DMARC policy: monitor (``p=none``) and send aggregate reports."""
    return f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:{report_to}; adkim=r; aspf=r"'
