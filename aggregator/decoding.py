"""Undo a response's Content-Encoding in bounded pieces, with the size cap checked as it grows.

Split from :mod:`aggregator.fetch` so that the parse workers can decode too
without importing httpx: the ingest pass hands them the body as it came off
the wire (a gzip body is a fifth of the decoded one, so less is held in
memory and copied between processes, and the decompression CPU runs on the
workers' cores instead of the main process's). Wherever it runs, the cap is
the same and so is the error: decoded output is produced in pieces of at
most ``DECODE_CHUNK`` bytes and counted as it grows, so a gzip or brotli bomb
is stopped after about ``max_bytes`` of output, never inflated in memory.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from aggregator.errors import FetchError, ResponseTooLarge
from aggregator.models import FetchResult

__all__ = [
    "ACCEPT_ENCODING",
    "DECODE_ERRORS",
    "BoundedDecoder",
    "decode_body",
    "decoded",
    "decoder_for",
]


def _import_brotli() -> Any:
    """The brotli module httpx[brotli] installs (no type stubs), or None without it."""
    for name in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None  # pragma: no cover - depends on the environment


_brotli: Any = _import_brotli()

ACCEPT_ENCODING = "gzip, deflate, br" if _brotli is not None else "gzip, deflate"
# Decompressed output is produced in pieces of at most about this size, so the
# size cap is checked long before a compressed bomb can fill memory.
DECODE_CHUNK = 64 * 1024


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class _IdentityDecoder:
    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _ZlibDecoder:
    """gzip (also several members) or deflate (zlib-wrapped, or raw as some servers send)."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding == "gzip"
        self._wbits = zlib.MAX_WBITS | 16 if self._gzip else zlib.MAX_WBITS
        self._obj = zlib.decompressobj(self._wbits)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not self._started and data and not self._gzip:
            self._started = True
            try:  # Probe: "deflate" should be zlib-wrapped, but raw deflate is common.
                zlib.decompressobj(zlib.MAX_WBITS).decompress(data[:64], 1)
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        pending = data
        while True:
            if self._obj.eof:
                rest = (self._obj.unused_data + pending).lstrip(b"\0")
                if not (self._gzip and rest.startswith(b"\x1f\x8b")):
                    return  # padding or garbage after the stream: ignore, as browsers do
                self._obj = zlib.decompressobj(self._wbits)  # the next gzip member
                pending = rest
            out = self._obj.decompress(pending, DECODE_CHUNK)
            pending = self._obj.unconsumed_tail
            if out:
                yield out
            if self._obj.eof:
                continue
            if not pending and len(out) < DECODE_CHUNK:
                return

    def finish(self) -> Iterator[bytes]:
        tail = self._obj.flush()
        if tail:
            yield tail


class _BrotliDecoder:
    def __init__(self) -> None:
        assert _brotli is not None
        self._obj: Any = _brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        out: bytes = self._obj.process(data, output_buffer_limit=DECODE_CHUNK)
        while out:
            yield out
            if self._obj.is_finished():
                return
            out = self._obj.process(b"", output_buffer_limit=DECODE_CHUNK)

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _ChainDecoder:
    """``Content-Encoding: gzip, br`` was applied left to right; undo it right to left."""

    def __init__(self, decoders: list[_Decoder]) -> None:
        self._decoders = decoders

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, self._decoders[0].feed(data))

    def finish(self) -> Iterator[bytes]:
        return self._finish_from(0)

    def _through(self, index: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        if index == len(self._decoders) - 1:
            yield from pieces
            return
        for piece in pieces:
            yield from self._through(index + 1, self._decoders[index + 1].feed(piece))

    def _finish_from(self, index: int) -> Iterator[bytes]:
        yield from self._through(index, self._decoders[index].finish())
        if index + 1 < len(self._decoders):
            yield from self._finish_from(index + 1)


def decoder_for(content_encoding: str) -> _Decoder:
    """A decoder for a Content-Encoding header; raises ValueError for unknown codings."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    decoders: list[_Decoder] = []
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            decoders.append(_ZlibDecoder("gzip"))
        elif coding == "deflate":
            decoders.append(_ZlibDecoder("deflate"))
        elif coding == "br" and _brotli is not None:
            decoders.append(_BrotliDecoder())
        elif coding != "identity":
            raise ValueError(f"unsupported Content-Encoding {coding!r}")
    if not decoders:
        return _IdentityDecoder()
    return decoders[0] if len(decoders) == 1 else _ChainDecoder(decoders)


DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
if _brotli is not None:
    DECODE_ERRORS += (_brotli.error,)


class BoundedDecoder:
    """Decode a body fed in chunks; raise ``ResponseTooLarge`` once output passes ``cap``.

    ``encoding`` is the Content-Encoding header ("" for none); an unknown
    coding raises ``FetchError`` at construction, before anything is read. The
    messages name the source, URL and status as the fetch's own errors do,
    whether this runs in the main process or in a parse worker.
    """

    def __init__(self, encoding: str, cap: int, *, source_id: str, url: str, status: int) -> None:
        self.encoding = encoding
        self.cap = cap
        self.source_id = source_id
        self.url = url
        self.status = status
        try:
            self._decoder = decoder_for(encoding)
        except ValueError as exc:
            raise FetchError(str(exc), source_id=source_id, url=url, status=status) from exc
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Decode one chunk of the body as it came off the wire."""
        self._take(self._decoder.feed, chunk)

    def finish(self) -> bytes:
        """The whole decoded body (flushing what the decoder still holds)."""
        self._take(lambda _: self._decoder.finish(), b"")
        body = b"".join(self._parts)
        self._parts = []
        return body

    def _take(self, step: Callable[[bytes], Iterator[bytes]], chunk: bytes) -> None:
        try:
            for piece in step(chunk):
                self._size += len(piece)
                if self._size > self.cap:
                    raise ResponseTooLarge(
                        f"response too large: more than {self.cap} bytes"
                        + (f" after {self.encoding} decoding" if self.encoding else "")
                        + "; stopped reading",
                        source_id=self.source_id,
                        url=self.url,
                        status=self.status,
                    )
                self._parts.append(piece)
        except DECODE_ERRORS as exc:
            raise FetchError(
                f"could not decode the {self.encoding} body: {str(exc) or type(exc).__name__}",
                source_id=self.source_id,
                url=self.url,
                status=self.status,
            ) from exc


def decode_body(
    data: bytes, encoding: str, cap: int, *, source_id: str, url: str, status: int
) -> bytes:
    """A whole encoded body, decoded under ``cap`` exactly as a streamed one would be."""
    decoder = BoundedDecoder(encoding, cap, source_id=source_id, url=url, status=status)
    view = memoryview(data)
    # Wire-sized chunks, so no piece of compressed input is copied whole.
    for start in range(0, len(data), DECODE_CHUNK):
        decoder.feed(bytes(view[start : start + DECODE_CHUNK]))
    return decoder.finish()


def decoded(result: FetchResult) -> FetchResult:
    """``result`` with its body decoded, if the fetch left it encoded (``decode=False``).

    Raises ``ResponseTooLarge`` past ``result.max_bytes`` of output and
    ``FetchError`` for a corrupt stream, with the messages the fetch itself
    would have given.
    """
    if result.content is None or not result.content_encoding:
        return result
    body = decode_body(
        result.content,
        result.content_encoding,
        result.max_bytes,
        source_id=result.source_id,
        url=result.url,
        status=result.status,
    )
    return replace(result, content=body, content_encoding=None)
