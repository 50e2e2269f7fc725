"""A scripted HTTP server on 127.0.0.1 that answers with exact bytes.

``FixtureServer`` (``http.py``) speaks correct HTTP through the standard
library; the transport's parser needs the opposite: answers that are wrong
in one precise way (a broken status line, a header block over the limit,
chunked framing with extensions, a body cut short, bytes after the end of a
response, a connection closed while idle). Each request head received is
recorded, then answered with the next :class:`Answer` of the script (the
last one repeats); optional TLS wraps every accepted connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Answer", "WireServer", "wire_server"]


@dataclass(frozen=True)
class Answer:
    """What to send for one request, and what to do with the connection afterwards.

    ``pieces`` splits ``data`` into that many writes 20 ms apart (the client
    must put a head or a chunk back together across reads). ``close`` closes
    the connection after sending; ``hold`` keeps it open and silent until the
    server stops (a server that never finishes). ``after`` is sent 50 ms
    later, unasked: bytes arriving on a connection the client holds idle.
    """

    data: bytes
    close: bool = False
    hold: bool = False
    pieces: int = 1
    after: bytes = b""


class WireServer:
    def __init__(self, script: list[Answer], tls: ssl.SSLContext | None = None) -> None:
        if not script:
            raise ValueError("a script needs at least one answer")
        self.script = list(script)
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str = "/feed.xml") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """Wake every thread, then let each close its own socket.

        A socket closed from here while its thread is inside a call on it
        frees the descriptor number for the next socket opened (the next
        test's server, say), and the late call lands on that one: under TLS
        it read another connection's records ("bad record mac").
        """
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):  # the descriptor only: no TLS state touched
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self.connections += 1
                self._open.append(conn)
                self._threads.append(thread)
            thread.start()

    def _next(self) -> Answer:
        with self._lock:
            index = len(self.requests) - 1
            return self.script[min(index, len(self.script) - 1)]

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)  # detaches ``raw``
                with self._lock:
                    self._open.append(conn)
            pending = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, pending = pending.split(b"\r\n\r\n", 1)
                with self._lock:
                    self.requests.append(head)
                answer = self._next()
                step = max(1, -(-len(answer.data) // answer.pieces))
                for start in range(0, len(answer.data), step):
                    if start:
                        time.sleep(0.02)
                    conn.sendall(answer.data[start : start + step])
                if answer.after:
                    time.sleep(0.05)
                    conn.sendall(answer.after)
                if answer.hold:
                    self._stop.wait()
                    return
                if answer.close:
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def wire_server(script: list[Answer], tls: ssl.SSLContext | None = None) -> Iterator[WireServer]:
    server = WireServer(script, tls)
    try:
        yield server
    finally:
        server.stop()
