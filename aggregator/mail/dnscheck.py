"""``aggregator check --dns``: look up the SPF, DKIM and DMARC records and compare.

The offline ``check`` prints what should be published; this looks at what DNS
actually holds, one :class:`RecordCheck` per record. A resolver failure (no
network, timeout, SERVFAIL) is reported as such, never as "missing": the
record may well be there.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.resolver

__all__ = [
    "LOOKUP_TIMEOUT",
    "Nameserver",
    "RecordCheck",
    "check_dns_records",
    "parse_nameserver",
]

# Short: an admin waits for the answer, and a resolver that has not answered
# in 3 s on a working network will not answer at all.
LOOKUP_TIMEOUT = 3.0

Status = Literal["ok", "missing", "different", "lookup failed"]


@dataclass(frozen=True, slots=True)
class Nameserver:
    """Where to send the queries instead of the system's resolver (tests, split DNS)."""

    address: str
    port: int = 53


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """One record as DNS has it: ``status`` and a short human explanation."""

    kind: Literal["SPF", "DKIM", "DMARC"]
    name: str
    status: Status
    detail: str


def parse_nameserver(value: str) -> Nameserver:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; :class:`ValueError` naming the problem."""
    text = value.strip()
    port_text: str | None = None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a bare IPv4 or IPv6 address
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f'"{value}" is not IP or IP:PORT (an address, not a host name)') from None
    port = 53
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f'"{value}": the port must be a number from 1 to 65535')
        port = int(port_text)
    return Nameserver(address, port)


def _resolver(nameserver: Nameserver | None, timeout: float) -> dns.resolver.Resolver:
    if nameserver is None:
        resolver = dns.resolver.Resolver(configure=True)
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [nameserver.address]
        resolver.port = nameserver.port
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


class _LookupFailed(Exception):
    """The resolver gave no answer either way; carries its message."""


class _TimedOut(_LookupFailed):
    """No answer at all: the next lookups would wait as long again for nothing."""


def _txt(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT strings at ``name`` (each record's chunks joined); [] when none exist."""
    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise _TimedOut(f"no answer within {resolver.lifetime:g} s") from None
    except dns.exception.DNSException as exc:
        raise _LookupFailed(str(exc) or type(exc).__name__) from None
    return [
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rdata in answer
        if hasattr(rdata, "strings")
    ]


def _tags(record: str) -> dict[str, str]:
    """``k=v; k=v`` tags of a DKIM/DMARC record (whitespace inside values dropped)."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            tags[key.strip().lower()] = re.sub(r"\s+", "", val)
    return tags


def _one(kind: Literal["SPF", "DMARC"], name: str, records: list[str], prefix: str) -> RecordCheck:
    # "v=spf1" must be followed by a space (or end): "v=spf10" is not SPF.
    pattern = re.compile(re.escape(prefix) + r"(?:[\s;]|$)", re.IGNORECASE)
    matching = [r.strip() for r in records if pattern.match(r.strip())]
    if not matching:
        return RecordCheck(kind, name, "missing", f"no TXT record starting {prefix}")
    if len(matching) > 1:
        return RecordCheck(
            kind,
            name,
            "different",
            f"{len(matching)} {kind} records; receivers treat more than one as an error",
        )
    return RecordCheck(kind, name, "ok", matching[0])


def _dkim(name: str, records: list[str], public_b64: str) -> RecordCheck:
    keys = [_tags(r) for r in records if "p=" in r]
    if not keys:
        return RecordCheck("DKIM", name, "missing", "no TXT record with a p= public key")
    published = [tags.get("p", "") for tags in keys]
    if public_b64 in published:
        return RecordCheck("DKIM", name, "ok", "public key matches the configured key")
    if all(p == "" for p in published):
        return RecordCheck("DKIM", name, "different", "DKIM key in DNS is revoked (empty p=)")
    return RecordCheck("DKIM", name, "different", "DKIM key in DNS is not the configured key")


def check_dns_records(
    sender_domain: str,
    dkim: tuple[str, str, str] | None,
    *,
    nameserver: Nameserver | None = None,
    timeout: float = LOOKUP_TIMEOUT,
) -> list[RecordCheck]:
    """Look up SPF at ``sender_domain``, DKIM at ``selector._domainkey.domain`` and DMARC.

    ``dkim`` is ``(selector, domain, public key base64)`` or None when mail is
    not signed (then no DKIM line). Each record is looked up on its own, so a
    SERVFAIL for one does not hide the others' results; after a timeout the
    rest are not tried, which keeps an offline run to one ``timeout``.
    """
    resolver = _resolver(nameserver, timeout) if nameserver else None
    checks: list[RecordCheck] = []
    lookups: list[tuple[Literal["SPF", "DKIM", "DMARC"], str]] = [("SPF", sender_domain)]
    if dkim is not None:
        lookups.append(("DKIM", f"{dkim[0]}._domainkey.{dkim[1]}"))
    lookups.append(("DMARC", f"_dmarc.{sender_domain}"))
    timed_out: str | None = None
    for kind, name in lookups:
        if timed_out is not None:
            checks.append(RecordCheck(kind, name, "lookup failed", timed_out))
            continue
        try:
            if resolver is None:
                # The system resolver is read per call: a missing resolv.conf is
                # a lookup failure like any other, not a crash.
                resolver = _resolver(None, timeout)
            records = _txt(resolver, name + ".")
        except _TimedOut as exc:
            timed_out = f"{exc} (not tried again)"
            checks.append(RecordCheck(kind, name, "lookup failed", str(exc)))
            continue
        except _LookupFailed as exc:
            checks.append(RecordCheck(kind, name, "lookup failed", str(exc)))
            continue
        except dns.exception.DNSException as exc:
            checks.append(RecordCheck(kind, name, "lookup failed", str(exc)))
            continue
        if kind == "SPF":
            checks.append(_one("SPF", name, records, "v=spf1"))
        elif kind == "DMARC":
            checks.append(_one("DMARC", name, records, "v=DMARC1"))
        else:
            assert dkim is not None
            checks.append(_dkim(name, records, dkim[2]))
    return checks
