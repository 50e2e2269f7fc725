"""Serve the benchmark feeds with nginx on 127.0.0.1, so the server is never the bottleneck.

nginx answers with ETag and Last-Modified, honours If-None-Match /
If-Modified-Since with 304, gzips XML on the fly and keeps connections alive:
what a good feed host does. It runs as a child process with a private
configuration in a temp directory and stops with the context manager.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONF = """\
daemon off;
worker_processes 2;
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


def _wait(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not start on port {port}")


@contextlib.contextmanager
def nginx(root: Path) -> Iterator[str]:
    """Serve ``root``; yields the base URL (``http://127.0.0.1:PORT/``)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
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
        try:
            _wait(port)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
