"""``aggregator check --dns`` against a real DNS server on 127.0.0.1.

The command runs as an admin runs it (``python -m aggregator``, a subprocess)
and asks tests/support/dns.py's UDP server, which speaks the DNS wire
protocol; only the zone contents change between tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.mail.dkim import generate_key_pair
from tests.support.dns import DnsServer, dns_server

__all__ = ["dns_server"]

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.org"
SELECTOR = "kfd2026"


def _zone(public_b64: str, domain: str = DOMAIN) -> dict[str, list[str]]:
    return {
        domain: ["google-site-verification=abc", "v=spf1 a:relay.example.net ~all"],
        f"{SELECTOR}._domainkey.{domain}": [f"v=DKIM1; k=rsa; p={public_b64}"],
        f"_dmarc.{domain}": ["v=DMARC1; p=none; rua=mailto:dmarc@" + domain],
    }


def _config(tmp_path: Path, pem: bytes, domain: str = DOMAIN) -> Path:
    (tmp_path / "dkim.pem").write_bytes(pem)
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site:\n  title: Test\n  url: https://digest.example.org/\n"
        f"  sender_email: news@{domain}\n"
        "smtp:\n  host: relay.example.net\n"
        f"  dkim: {{domain: {domain}, selector: {SELECTOR}, key_file: dkim.pem}}\n"
        f"storage:\n  url: sqlite:///{tmp_path / 'db.sqlite'}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    return path


def _check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGGREGATOR_SECRET": "dns-check-0123456789abc"}
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "-c", str(config), "check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _lookup_lines(stdout: str) -> dict[str, str]:
    """The lines after "DNS as it is now", by record kind."""
    tail = stdout.split("DNS as it is now", 1)[1].splitlines()[1:]
    return {line.split()[0]: line for line in tail if line.strip()}


# 1024-bit keys fit one 255-byte TXT string, 2048 and 4096 need two or more:
# the key must compare equal however the zone splits it. Domains with IDN and
# several labels check the names are built right.
@pytest.mark.parametrize(
    ("bits", "domain"),
    [(1024, "example.org"), (2048, "mail.news.example.co.kr"), (4096, "xn--9n2bp8q.example")],
)
def test_all_records_right_exits_0(
    tmp_path: Path, dns_server: DnsServer, bits: int, domain: str
) -> None:
    pair = generate_key_pair(bits)
    dns_server.records.update(_zone(pair.public_b64, domain))
    result = _check(
        _config(tmp_path, pair.private_pem, domain),
        "--dns",
        "--nameserver",
        f"127.0.0.1:{dns_server.port}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _lookup_lines(result.stdout)
    assert set(lines) == {"SPF", "DKIM", "DMARC"}
    assert all(line.split()[1] == "ok" for line in lines.values()), lines
    assert f"{SELECTOR}._domainkey.{domain}" in dns_server.queries


def test_dkim_record_with_another_key_is_different(tmp_path: Path, dns_server: DnsServer) -> None:
    pair, other = generate_key_pair(2048), generate_key_pair(2048)
    dns_server.records.update(_zone(other.public_b64))
    result = _check(
        _config(tmp_path, pair.private_pem), "--dns", "--nameserver", f"127.0.0.1:{dns_server.port}"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = _lookup_lines(result.stdout)
    assert "different" in lines["DKIM"]
    assert "DKIM key in DNS is not the configured key" in lines["DKIM"]
    assert " ok " in lines["SPF"] and " ok " in lines["DMARC"]


def test_revoked_dkim_key_is_different(tmp_path: Path, dns_server: DnsServer) -> None:
    pair = generate_key_pair(1024)
    dns_server.records.update(_zone(""))
    result = _check(
        _config(tmp_path, pair.private_pem), "--dns", "--nameserver", f"127.0.0.1:{dns_server.port}"
    )
    assert result.returncode == 1
    assert "revoked" in _lookup_lines(result.stdout)["DKIM"]


@pytest.mark.parametrize(
    ("kind", "name", "records"),
    [
        ("DMARC", f"_dmarc.{DOMAIN}", None),  # NXDOMAIN
        ("DMARC", f"_dmarc.{DOMAIN}", ["v=DMARC10; p=none"]),  # not a DMARC record
        ("SPF", DOMAIN, ["google-site-verification=abc"]),  # TXT, none of it SPF
        ("DKIM", f"{SELECTOR}._domainkey.{DOMAIN}", []),  # name exists, no TXT
    ],
)
def test_a_missing_record_is_missing(
    tmp_path: Path, dns_server: DnsServer, kind: str, name: str, records: list[str] | None
) -> None:
    pair = generate_key_pair(1024)
    zone = _zone(pair.public_b64)
    if records is None:
        del zone[name]
    else:
        zone[name] = records
    dns_server.records.update(zone)
    result = _check(
        _config(tmp_path, pair.private_pem), "--dns", "--nameserver", f"127.0.0.1:{dns_server.port}"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = _lookup_lines(result.stdout)
    assert lines[kind].split()[1] == "missing", lines
    assert all(line.split()[1] == "ok" for k, line in lines.items() if k != kind), lines


def test_two_spf_records_are_different(tmp_path: Path, dns_server: DnsServer) -> None:
    pair = generate_key_pair(1024)
    zone = _zone(pair.public_b64)
    zone[DOMAIN] = ["v=spf1 mx ~all", "V=SPF1 a:relay.example.net -all"]
    dns_server.records.update(zone)
    result = _check(
        _config(tmp_path, pair.private_pem), "--dns", "--nameserver", f"127.0.0.1:{dns_server.port}"
    )
    assert result.returncode == 1
    assert "2 SPF records" in _lookup_lines(result.stdout)["SPF"]


@pytest.fixture
def silent_nameserver() -> Iterator[int]:
    """A UDP port that takes queries and never answers (a firewalled or dead resolver)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_a_nameserver_that_does_not_answer_is_lookup_failed(
    tmp_path: Path, silent_nameserver: int
) -> None:
    pair = generate_key_pair(1024)
    started = time.monotonic()
    result = _check(
        _config(tmp_path, pair.private_pem),
        "--dns",
        "--nameserver",
        f"127.0.0.1:{silent_nameserver}",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = _lookup_lines(result.stdout)
    assert set(lines) == {"SPF", "DKIM", "DMARC"}
    assert all("lookup failed" in line for line in lines.values()), lines
    assert "no answer within 3 s" in lines["SPF"]
    # One timeout, not one per record.
    assert elapsed < 8, elapsed


@pytest.mark.parametrize(
    "value",
    ["dns.example.org", "127.0.0.1:99999", "127.0.0.1:", "300.1.1.1", "[::1", "127.0.0.1:port"],
)
def test_malformed_nameserver_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    result = _check(
        _config(tmp_path, generate_key_pair(1024).private_pem), "--dns", "--nameserver", value
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nameserver" in lines[0], result.stderr
    assert "DNS as it is now" not in result.stdout


@pytest.mark.parametrize("value", ["::1", "[::1]:5353", "127.0.0.1", "10.0.0.53:53"])
def test_nameserver_forms_accepted(value: str) -> None:
    from aggregator.mail.dnscheck import parse_nameserver

    server = parse_nameserver(value)
    assert server.address in {"::1", "127.0.0.1", "10.0.0.53"}
    assert server.port == (5353 if "5353" in value else 53)


def test_without_dns_nothing_is_looked_up(tmp_path: Path, dns_server: DnsServer) -> None:
    pair = generate_key_pair(1024)
    result = _check(_config(tmp_path, pair.private_pem))
    assert result.returncode == 0
    assert "DNS as it is now" not in result.stdout
    assert dns_server.queries == []
