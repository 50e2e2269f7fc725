"""A real IMAP server for tests: Debian's dovecot, fixture ``imap_server``.

Each test gets its own dovecot with a throwaway configuration in a temporary
directory: one user from a passwd-file, maildir storage in the same directory,
plain IMAP on 127.0.0.1 on a free port, no TLS. Messages go in with IMAP
APPEND, as a mail server would deliver them::

    def test_something(imap_server):
        imap_server.append(raw_bytes)
        settings = imap_server.settings()                  # ImapSettings, tls off
        environ = imap_server.environ                      # the credentials it names
        assert imap_server.flags(1) == {"\\\\Seen", "AggregatorProcessed"}

Skipped only when the dovecot binary is absent; ``scripts/test`` installs it
(dovecot-imapd), so in CI it always runs.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.models import ImapSettings
from tests.support.http import unused_port

__all__ = ["ImapFixture", "imap_server"]

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
USER = "bounces"
PASSWORD = "imap-test-password"


def _accounts() -> tuple[str, str, str, int, int]:
    """(internal user, internal group, login user, mail uid, mail gid) for this process.

    As root dovecot refuses to run its login process or to open mail as root,
    so the Debian package's own ``dovecot``/``dovenull`` users are used.
    """
    if os.getuid() != 0:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        return user, group, user, os.getuid(), os.getgid()
    internal = pwd.getpwnam("dovecot")
    return (
        "dovecot",
        grp.getgrgid(internal.pw_gid).gr_name,
        "dovenull",
        internal.pw_uid,
        internal.pw_gid,
    )


class ImapFixture:
    """One running dovecot: where it listens, and helpers to fill and inspect the mailbox."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = unused_port()
        self.environ = {"TEST_IMAP_USER": USER, "TEST_IMAP_PASSWORD": PASSWORD}
        self._process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        internal, group, login, uid, gid = _accounts()
        for name in ("mail", "home"):
            (self.root / name).mkdir()
            os.chown(self.root / name, uid, gid)
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
        (self.root / "passwd").chmod(0o644)
        config = self.root / "dovecot.conf"
        config.write_text(
            f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{self.root}/mail/%u
first_valid_uid = {uid}
first_valid_gid = {gid}
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/passwd
  default_fields = uid={uid} gid={gid} home={self.root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""",
            encoding="utf-8",
        )
        return config

    def start(self) -> None:
        assert DOVECOT is not None
        config = self._write_config()
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self.log()
                raise RuntimeError(f"dovecot exited at start: {self._stderr()} {log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    if sock.recv(64).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self.log()}")

    def _stderr(self) -> str:
        if self._process is None or self._process.stderr is None:
            return ""
        return self._process.stderr.read().decode("utf-8", "replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def settings(self, folder: str = "INBOX") -> ImapSettings:
        return ImapSettings(
            host=self.host,
            port=self.port,
            username_env="TEST_IMAP_USER",
            password_env="TEST_IMAP_PASSWORD",
            tls=False,
            folder=folder,
            timeout=10.0,
        )

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4(self.host, self.port, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        """Deliver messages into the mailbox (IMAP APPEND)."""
        imap = self.client()
        try:
            if folder != "INBOX":
                imap.create(folder)
            for raw in messages:
                status, data = imap.append(folder, None, None, raw)
                assert status == "OK", data
        finally:
            imap.logout()

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """Flags and keywords of every message in ``folder``, by UID."""
        imap = self.client()
        try:
            imap.select(folder, readonly=True)
            _status, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
        finally:
            imap.logout()
        out: dict[int, set[str]] = {}
        for item in data:
            if not isinstance(item, bytes):
                continue
            text = item.decode()
            uid = int(text.split("UID ", 1)[1].split()[0].rstrip(")"))
            flags = text.split("FLAGS (", 1)[1].split(")", 1)[0]
            out[uid] = set(flags.split())
        return out


@pytest.fixture
def imap_server() -> Iterator[ImapFixture]:
    """A fresh dovecot on 127.0.0.1 with one empty mailbox, stopped after the test."""
    if DOVECOT is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd; scripts/test does)")
    # Not pytest's tmp_path: its parents are private to root, and dovecot's
    # unprivileged processes must reach the passwd file and the mail directory.
    root = Path(tempfile.mkdtemp(prefix="aggregator-imap-"))
    root.chmod(0o755)
    server = ImapFixture(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
