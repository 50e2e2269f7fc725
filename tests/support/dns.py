"""A real DNS server on 127.0.0.1 for tests: answers TXT queries from a dict over UDP.

Built on dnspython's message API (parse the query, make the response), so
the resolver under test speaks the real wire protocol to it. Names not in the
dict get NXDOMAIN; a name mapped to ``[]`` exists but has no TXT (NoAnswer).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

__all__ = ["DnsServer", "dns_server", "split_txt"]


def split_txt(value: str) -> list[bytes]:
    """A TXT value as DNS strings of at most 255 bytes, as a zone holds a long DKIM key."""
    data = value.encode("utf-8")
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class DnsServer:
    """UDP DNS server in a thread. ``records`` maps a name (no trailing dot) to TXT values."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # garbage: a real server drops it too
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append(name)
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and self.records[name]:
            values = [
                " ".join('"' + chunk.decode().replace('"', '\\"') + '"' for chunk in split_txt(v))
                for v in self.records[name]
            ]
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, "TXT", values)
            )
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(wire)
            if reply is not None:
                self._sock.sendto(reply, peer)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A fresh :class:`DnsServer` on a free UDP port, stopped after the test."""
    with DnsServer() as server:
        yield server
