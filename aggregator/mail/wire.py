"""Digest bodies encoded once, and sent as ready-made SMTP DATA.

Sending one issue to thousands of subscribers used to quoted-printable encode
the whole ~60 KB body twice per message (text and HTML, after substituting
the subscriber's unsubscribe URL), and aiosmtplib then normalized line endings
and dot-stuffed every message with two regular expressions over ~150 KB: about
4 ms of CPU per message, most of the sender's work.

Here the bodies are split at the unsubscribe (and preferences) placeholders and each piece is
encoded, CRLF-normalized and dot-stuffed once per issue (``SplicedBody``). Per
subscriber only the URL is encoded and spliced in between *soft line breaks*
(``=`` at the end of a line, which a quoted-printable decoder removes), so the
decoded body is exactly what encoding the substituted text would give, while
every piece starts at the beginning of a line (which is what lets each piece be
dot-stuffed on its own). ``send_wire`` then hands the finished bytes to the
server without aiosmtplib's per-message rewriting.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import re
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_SOFT_BREAK = b"=\r\n"
# RFC 2045 6.7: an encoded line is at most 76 characters, its soft break's "=" included.
_MAX_LINE = 76


def fit_lines(data: bytes, *, soft_break_follows: bool) -> bytes:
    """``data`` (quoted-printable, CRLF) with every line at most 76 characters.

    ``binascii.b2a_qp`` lets a line ending in encoded whitespace (``=20``) run
    past 76, and a piece followed by a splice needs one column for the soft
    break's ``=``. Long lines get soft breaks, never inside an ``=XX`` escape,
    so the decoded bytes are unchanged.
    """
    lines = data.split(b"\r\n")
    out: list[bytes] = []
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        limit = _MAX_LINE - 1 if last and soft_break_follows else _MAX_LINE
        while len(line) > limit:
            cut = _MAX_LINE - 1  # leaves the column for this soft break's "="
            if line[cut - 1 : cut] == b"=":
                cut -= 1
            elif line[cut - 2 : cut - 1] == b"=":
                cut -= 2
            out.append(line[:cut] + b"=")
            line = line[cut:]
        out.append(line)
    return b"\r\n".join(out)


def qp_crlf(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends, as it goes on the wire."""
    return _LINE_END.sub(b"\r\n", binascii.b2a_qp(text.encode("utf-8"), istext=True))


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 transparency: a line that starts with "." gets a second one.

    Only valid on a piece that starts at the beginning of a line.
    """
    return _LEADING_DOT.sub(b"..", data) if b"." in data else data


def dot_unstuff(stuffed: bytes) -> bytes:
    """The inverse of ``dot_stuff`` for CRLF data that starts at a line start."""
    data = stuffed.replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


@dataclass(frozen=True)
class WireMessage:
    """A message already CRLF-normalized and dot-stuffed: DATA without the final ".\\r\\n".

    ``head`` (the header block with its empty line, the same stuffed or not)
    and ``body_hash`` (the DKIM relaxed body hash) are there when the builder
    computed them, so a signer can sign the message without reading its body.
    """

    stuffed: bytes
    head: bytes = b""
    body_hash: bytes | None = None

    def signed(self, signature: bytes) -> WireMessage:
        """The message with ``signature`` (a DKIM-Signature header) in front."""
        return WireMessage(dot_stuff(signature) + self.stuffed)

    def plain(self) -> bytes:
        """The message as ``sendmail`` expects it (it stuffs again), e.g. for DKIM signing."""
        return dot_unstuff(self.stuffed)


class SplicedBody:
    """One body part, encoded once, with per-recipient values spliced in at its placeholders.

    Several placeholders may be given (the unsubscribe and the preferences
    URL); :meth:`render` takes one value per placeholder, in the same order.
    """

    def __init__(self, text: str, *placeholders: str) -> None:
        if not placeholders:
            raise ValueError("a SplicedBody needs at least one placeholder")
        pattern = re.compile("|".join(re.escape(p) for p in placeholders))
        # Which placeholder sits in each gap between two pieces.
        self._slots = [placeholders.index(m.group()) for m in pattern.finditer(text)]
        parts = pattern.split(text)
        self._plain = [
            fit_lines(qp_crlf(part), soft_break_follows=i < len(parts) - 1)
            for i, part in enumerate(parts)
        ]
        self._stuffed = [dot_stuff(piece) for piece in self._plain]

    @property
    def pieces(self) -> list[bytes]:
        """The encoded text between placeholders (not dot-stuffed)."""
        return self._plain

    @property
    def slots(self) -> list[int]:
        """Which value goes into each gap between two pieces."""
        return self._slots

    @staticmethod
    def encode(value: str) -> bytes:
        """One value as it is spliced (not dot-stuffed), the same for every body part."""
        return fit_lines(qp_crlf(value), soft_break_follows=True)

    def render(self, *values: str, stuffed: bool) -> bytes:
        """The encoded body with each value at its placeholders (dot-stuffed when asked)."""
        encoded = [self.encode(value) for value in values]
        return self.render_encoded(encoded, [dot_stuff(e) for e in encoded] if stuffed else None)

    def render_encoded(self, plain: list[bytes], stuffed: list[bytes] | None) -> bytes:
        """:meth:`render` with values already encoded (``encode``; ``stuffed``: their
        dot-stuffed forms, for a dot-stuffed body), so several parts share the work."""
        pieces = self._plain if stuffed is None else self._stuffed
        if len(pieces) == 1:
            return pieces[0]
        encoded = plain if stuffed is None else stuffed
        out = [pieces[0]]
        for slot, piece in zip(self._slots, pieces[1:], strict=True):
            out += [_SOFT_BREAK, encoded[slot], _SOFT_BREAK, piece]
        return b"".join(out)


_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def can_send_wire(client: aiosmtplib.SMTP, *addresses: str) -> bool:
    """May ``send_wire`` carry this message (ASCII addresses without controls, brackets
    or spaces, a session past EHLO, an aiosmtplib exposing the private names it drives)?
    """
    protocol: Any = client.protocol
    return (
        protocol is not None
        and all(a.isascii() and not _UNSAFE_ADDRESS.search(a) for a in addresses)
        and (client.last_ehlo_response is not None or client.last_helo_response is not None)
        and hasattr(protocol, "_command_lock")
        and hasattr(protocol, "_response_pending")
        and hasattr(protocol, "read_response")
        and hasattr(protocol, "_read_response_from_buffer")
        and hasattr(protocol, "_buffer")
    )


async def send_wire(
    client: aiosmtplib.SMTP, sender: str, recipient: str, message: WireMessage
) -> None:
    """MAIL, RCPT and DATA for one recipient, the body written as it is.

    Raises what ``SMTP.sendmail`` raises for the same failures
    (``SMTPRecipientsRefused`` for a refused recipient, ``SMTPDataError`` for a
    refused message, ``SMTPServerDisconnected``), and resets the envelope after
    a refusal, as ``sendmail`` does, so the session stays usable.
    """
    protocol: Any = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    # MAIL and RCPT written here as well: aiosmtplib's per-command wrappers cost
    # more CPU than the conversation. Addresses come from the ledger (validated),
    # and anything that could inject a command was refused by the caller.
    steps = (
        (b"MAIL FROM:<" + sender.encode("ascii") + b">\r\n", (250,)),
        (b"RCPT TO:<" + recipient.encode("ascii") + b">\r\n", (250, 251)),
        (b"DATA\r\n", (354,)),
    )
    try:
        async with protocol._command_lock:
            if client.supports_extension("pipelining"):
                # RFC 2920: the three commands in one write, then their three
                # replies: one round trip instead of three.
                answers = await _pipelined(
                    protocol, b"".join(command for command, _ in steps), len(steps), client.timeout
                )
                codes = [(answer.code, ok) for answer, (_, ok) in zip(answers, steps, strict=True)]
                refusal = next((i for i, (code, ok) in enumerate(codes) if code not in ok), None)
                if refusal is not None:
                    if answers[2].code == 354:
                        # DATA was accepted after a refusal: end it empty (RFC 2920 3.1).
                        protocol.write(b".\r\n")
                        await protocol.read_response(timeout=client.timeout)
                    _raise_refusal(steps[refusal][0], answers[refusal], sender, recipient)
            else:
                for command, expected in steps:
                    protocol._response_pending = True
                    protocol.write(command)
                    answer = await protocol.read_response(timeout=client.timeout)
                    if answer.code not in expected:
                        _raise_refusal(command, answer, sender, recipient)
            protocol._response_pending = True
            protocol.write(message.stuffed + b".\r\n")
            done = await protocol.read_response(timeout=client.timeout)
            if done.code != 250:
                raise aiosmtplib.SMTPDataError(done.code, done.message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        await _reset(client)  # as sendmail does: the session stays usable
        raise


async def _pipelined(
    protocol: Any, commands: bytes, count: int, timeout: float | None
) -> list[Any]:
    """Write a group of commands at once and read their ``count`` replies.

    aiosmtplib's protocol delivers one reply per wait and *drops* bytes that
    arrive while a parsed reply waits to be picked up, or between two waits.
    A relay that answers pipelined commands in separate packets (aiosmtpd
    does, one write per reply) could have the second packet land in that
    window on a busy machine: the reply was lost and the sender waited its
    whole ``smtp.timeout`` for it, then counted the message as a lost
    connection. While the group's replies come in, every byte goes to the
    protocol's buffer here and the replies are parsed from it.
    """
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    lost = protocol._response_waiter  # fails when the connection drops

    def receive(data: bytes) -> None:
        protocol._buffer.extend(data)
        arrived.set()

    protocol.data_received = receive  # this instance only, for this group
    try:
        protocol.write(commands)
        deadline = None if timeout is None else loop.time() + timeout
        answers: list[Any] = []
        while len(answers) < count:
            if len(protocol._buffer) > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(500, "Response too long")
            reply = protocol._read_response_from_buffer()
            if reply is not None:
                answers.append(reply)
                continue
            arrived.clear()
            waiting = asyncio.ensure_future(arrived.wait())
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                await asyncio.wait(
                    [waiting, lost] if lost is not None else [waiting],
                    timeout=left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiting.cancel()
            if lost is None or lost.done() or protocol.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            if not arrived.is_set():
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        return answers
    finally:
        del protocol.data_received


def _raise_refusal(command: bytes, answer: Any, sender: str, recipient: str) -> None:
    """The exception ``sendmail`` raises when the server refuses ``command``."""
    if command.startswith(b"MAIL"):
        raise aiosmtplib.SMTPSenderRefused(answer.code, answer.message, sender)
    if command.startswith(b"RCPT"):
        refused = aiosmtplib.SMTPRecipientRefused(answer.code, answer.message, recipient)
        raise aiosmtplib.SMTPRecipientsRefused([refused])
    raise aiosmtplib.SMTPDataError(answer.code, answer.message)


async def _reset(client: aiosmtplib.SMTP) -> None:
    # A dead connection is reported by the next command itself.
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await client.rset()
