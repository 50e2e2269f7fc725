"""Serve the benchmark feeds with nginx on 127.0.0.1, so the server is never the bottleneck.

nginx answers with ETag and Last-Modified, honours If-None-Match /
If-Modified-Since with 304, gzips XML on the fly and keeps connections alive:
what a good feed host does. It runs as a child process with a private
configuration in a temp directory and stops with the context manager.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import http.server
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONF = """\
daemon off;
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60;
    keepalive_requests 100000;
    etag on;
    gzip on;
    gzip_min_length 1000;
    gzip_types application/rss+xml application/atom+xml application/xml text/xml;
    types {{ application/xml xml; }}
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the benchmark server did not start on port {port}")


@contextlib.contextmanager
def _serving(proc: subprocess.Popen[bytes], port: int) -> Iterator[str]:
    """The base URL of the server ``proc`` once it listens; stopped on exit."""
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nginx_binary() -> str | None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return binary if Path(binary).exists() else None


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, str]]:
    """Serve ``root`` with nginx, or a threaded Python server when nginx is missing.

    Yields ``(base_url, server_name)``.
    """
    if nginx_binary():
        with nginx(root) as base:
            yield base, "nginx"
    else:
        with python_server(root) as base:
            yield base, "Python ThreadingHTTPServer (nginx unavailable; may be the bottleneck)"


@contextlib.contextmanager
def nginx(root: Path) -> Iterator[str]:
    """Serve ``root``; yields the base URL (``http://127.0.0.1:PORT/``)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(
            "nginx is not installed: apt-get install nginx-light (the benchmark's HTTP server)"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(CONF.format(tmp=tmp, port=port, root=root.resolve()), encoding="utf-8")
        root.chmod(0o755)
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", tmp, "-g", "user root;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with _serving(proc, port) as base:
            yield base


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with ETag / Last-Modified, 304 on a match, gzip when asked, keep-alive."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        stat = path.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        if self.headers.get("If-None-Match") == etag or (
            "If-None-Match" not in self.headers
            and self.headers.get("If-Modified-Since") == modified
        ):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = path.read_bytes()
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            body = gzip.compress(body, compresslevel=1)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def python_server(root: Path) -> Iterator[str]:
    """The fallback: a threaded stdlib server in a child process (its own interpreter lock)."""
    port = free_port()
    code = (
        "import functools, http.server, sys; from benchmarks.server import _Handler; "
        "handler = functools.partial(_Handler, directory=sys.argv[2]); "
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), handler)"
        ".serve_forever()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(port), str(root.resolve())],
        cwd=Path(__file__).resolve().parent.parent,
    )
    with _serving(proc, port) as base:
        yield base
