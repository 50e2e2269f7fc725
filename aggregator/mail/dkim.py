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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import ConfigError
from ..models import DkimSettings

__all__ = [
    "DEFAULT_KEY_BITS",
    "SIGNED_HEADERS",
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


def _header_names(message: bytes) -> set[bytes]:
    """Lower-cased names of the top-level headers (the block before the first empty line)."""
    end = message.find(b"\r\n\r\n")
    block = message if end < 0 else message[:end]
    names = set()
    for line in block.split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t") and b":" in line:
            names.add(line.split(b":", 1)[0].strip().lower())
    return names


class DkimSigner:
    """Signs messages for one ``smtp.dkim`` setting; the key is read once, here."""

    def __init__(self, settings: DkimSettings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._key = load_private_key(settings, environ=environ)
        self._selector = settings.selector.encode("ascii")
        self._domain = settings.domain.encode("ascii")

    def sign(self, message: bytes) -> bytes:
        """``message`` (CRLF line ends) with a ``DKIM-Signature`` header in front.

        Only headers the message has are listed in ``h=``: naming an absent
        one would be harmless, but a receiver's report would list headers we
        never send.
        """
        present = _header_names(message)
        headers = [h for h in SIGNED_HEADERS if h.lower() in present]
        signature: bytes = dkim.sign(
            message,
            self._selector,
            self._domain,
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
            linesep=b"\r\n",
        )
        return signature + message


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
