"""Messages per second from ``deliver_digest`` to a loopback SMTP server, with the SQLite ledger.

The SMTP server is Postfix's C ``smtp-sink`` (Debian package ``postfix``) when
installed, else aiosmtpd's ``Sink`` handler; either accepts and discards, in its
own process, so its CPU is not counted as the sender's. The digest is ~47 KB of
HTML plus text with Korean text, like a real issue; every message goes through
the whole path: claim, build, SMTP, mark sent. ``--dkim`` signs every message
with a fresh 2048-bit key.

    PYTHONPATH=. python benchmarks/send_bench.py            # 2,000 subscribers, 3 runs
    PYTHONPATH=. python benchmarks/send_bench.py -n 500 --batch 100 --dkim --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.deliver import deliver_digest
from aggregator.mail.dkim import generate_key_pair
from aggregator.models import (
    DeliveryStatus,
    Digest,
    DkimSettings,
    Site,
    SmtpSettings,
    SubscriberStatus,
)
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from benchmarks.server import free_port, wait_listening

SECRET = "benchmark-secret-0123456789abcdef"
SMTP_SINK = "/usr/sbin/smtp-sink"


def _render(digest: Digest) -> tuple[str, str]:
    item = (
        '<tr><td style="padding:8px"><a href="https://example.org/news/{i}">'
        "부산국제영화제 개막작 발표: 올해의 라인업과 기대작 {i}</a>"
        "<p>A preview of this year's most anticipated Korean releases, with notes on "
        "directors, casts and festival dates. 감독과 배우, 개봉 일정을 정리했습니다.</p></td></tr>"
    )
    rows = "".join(item.format(i=i) for i in range(150))
    html = (
        f"<html><body><table>{rows}</table>"
        f'<p><a href="{UNSUBSCRIBE_PLACEHOLDER}">Unsubscribe</a></p></body></html>'
    )
    text = "\n\n".join(f"Item {i}: 부산국제영화제 https://example.org/news/{i}" for i in range(150))
    return html, f"{text}\n\nUnsubscribe: {UNSUBSCRIBE_PLACEHOLDER}\n"


def _start_sink(kind: str, port: int) -> subprocess.Popen[bytes]:
    """The SMTP sink in its own process: its CPU is not the sender's."""
    if kind == "smtp-sink":
        # Postfix's C sink: accepts everything, advertises PIPELINING, ~no CPU.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [SMTP_SINK, *user, f"127.0.0.1:{port}", "256"]
    else:
        command = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
        command += ["-c", "aiosmtpd.handlers.Sink"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class SendRun:
    """One delivery of the issue to every subscriber, and the CPU it took."""

    sent: int
    ledger_sent: int
    elapsed: float
    rate: float
    sender_ms: float  # CPU per message, this process (user + system)
    sink_ms: float  # CPU per message of the sink process, start-up included


def run_once(subscribers: int, batch: int, sink_kind: str, dkim: bool) -> tuple[SendRun, int]:
    """Send one issue to ``subscribers`` fresh subscribers; returns the run and the HTML size."""
    port = free_port()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink = _start_sink(sink_kind, port)
    try:
        wait_listening(port)
        with tempfile.TemporaryDirectory() as directory:
            dkim_settings = None
            if dkim:
                key = Path(directory) / "dkim.pem"
                key.write_bytes(generate_key_pair().private_pem)
                dkim_settings = DkimSettings(
                    domain="example.org", selector="bench", key_file=str(key)
                )
            store = Store.open(f"sqlite:///{Path(directory) / 'bench.db'}")
            now = datetime.now(UTC)
            store.add_subscribers(
                [(f"reader{i:05d}@example.org", f"독자 {i}") for i in range(subscribers)],
                now=now,
                status=SubscriberStatus.ACTIVE,
            )
            end = datetime(2026, 11, 23, tzinfo=UTC)
            digest = store.save_digest(
                Digest(
                    period_start=end - timedelta(days=7),
                    period_end=end,
                    subject="Korean Film Digest: 이번 주 한국 영화 소식",
                    sections=(),
                ),
                _render,
                now=now,
            )
            site = Site(url="https://digest.example.org/", sender_email="digest@example.org")
            smtp = SmtpSettings(host="127.0.0.1", port=port, timeout=30, dkim=dkim_settings)
            cpu0 = time.process_time()
            report = asyncio.run(
                deliver_digest(store, digest, site=site, smtp=smtp, secret=SECRET, batch_size=batch)
            )
            sender_cpu = time.process_time() - cpu0
            ledger_sent = store.delivery_counts(report.digest_id)[DeliveryStatus.SENT]
            store.close()
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    # The sink is the only child reaped since `children_before` (run from
    # `python -m benchmarks`, earlier stages' children are in the totals too).
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    per_message = 1000 / max(report.sent, 1)
    run = SendRun(
        sent=report.sent,
        ledger_sent=ledger_sent,
        elapsed=report.elapsed,
        rate=report.rate,
        sender_ms=sender_cpu * per_message,
        sink_ms=sink_cpu * per_message,
    )
    return run, len(digest.html.encode()) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--subscribers", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="rows claimed per transaction")
    parser.add_argument("--runs", type=int, default=3, help="report min and median of N runs")
    parser.add_argument(
        "--sink",
        choices=["auto", "smtp-sink", "aiosmtpd"],
        default="auto",
        help="smtp-sink (Debian's postfix package) when installed, else aiosmtpd",
    )
    parser.add_argument("--dkim", action="store_true", help="sign every message (2048-bit key)")
    args = parser.parse_args()
    sink = args.sink
    if sink == "auto":
        sink = "smtp-sink" if Path(SMTP_SINK).exists() else "aiosmtpd"
    runs = []
    size = 0
    for _ in range(max(args.runs, 1)):
        run, size = run_once(args.subscribers, args.batch, sink, args.dkim)
        runs.append(run)
        print(
            f"run: sent {run.sent} (ledger rows sent: {run.ledger_sent}) in {run.elapsed:.2f} s, "
            f"sender {run.sender_ms:.2f} ms CPU/message, sink {run.sink_ms:.2f} ms",
            flush=True,
        )
    cpus = sorted(r.sender_ms for r in runs)
    best = min(runs, key=lambda r: r.elapsed)
    signed = ", DKIM-signed" if args.dkim else ""
    print(
        f"sent {best.sent} messages ({size} KB HTML each{signed}) "
        f"in {best.elapsed:.2f} s: {best.rate:.0f} messages/s "
        f"(SQLite ledger, batch {args.batch}, loopback {sink} sink; fastest of {len(runs)})"
    )
    print(
        f"CPU per message: sender {statistics.median(cpus):.2f} ms median, {cpus[0]:.2f} ms min "
        f"of {len(runs)} runs{signed} ({sink} sink not counted: "
        f"{statistics.median(r.sink_ms for r in runs):.2f} ms median)"
    )


if __name__ == "__main__":
    main()
