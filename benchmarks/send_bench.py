"""Messages per second from ``deliver_digest`` to a loopback SMTP server, with the SQLite ledger.

The SMTP server is aiosmtpd's ``Sink`` handler (accepts and discards) in its
own process, so it does not share the sender's interpreter lock. The digest
is ~60 KB of HTML plus text with Korean text, like a real issue; every message
goes through the whole path: claim, build, SMTP, mark sent (one commit each).

    PYTHONPATH=. python benchmarks/send_bench.py            # 2,000 subscribers
    PYTHONPATH=. python benchmarks/send_bench.py -n 500 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.deliver import deliver_digest
from aggregator.models import DeliveryStatus, Digest, Site, SmtpSettings, SubscriberStatus
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from benchmarks.server import free_port, wait_listening

SECRET = "benchmark-secret-0123456789abcdef"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--subscribers", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="rows claimed per transaction")
    args = parser.parse_args()

    port = free_port()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        with tempfile.TemporaryDirectory() as directory:
            store = Store.open(f"sqlite:///{Path(directory) / 'bench.db'}")
            now = datetime.now(UTC)
            store.add_subscribers(
                [(f"reader{i:05d}@example.org", f"독자 {i}") for i in range(args.subscribers)],
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
            smtp = SmtpSettings(host="127.0.0.1", port=port, timeout=30)
            cpu0 = time.process_time()
            report = asyncio.run(
                deliver_digest(
                    store, digest, site=site, smtp=smtp, secret=SECRET, batch_size=args.batch
                )
            )
            sender_cpu = time.process_time() - cpu0
            sent = store.delivery_counts(report.digest_id)[DeliveryStatus.SENT]
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
    size = len(digest.html.encode()) // 1024
    print(
        f"sent {report.sent} messages ({size} KB HTML each, ledger rows sent: {sent}) "
        f"in {report.elapsed:.2f} s: {report.rate:.0f} messages/s "
        f"(SQLite ledger, batch {args.batch}, loopback aiosmtpd sink)"
    )
    per_message = 1000 / max(report.sent, 1)
    print(
        f"CPU per message: sender {sender_cpu * per_message:.1f} ms, aiosmtpd sink "
        f"{sink_cpu * per_message:.1f} ms "
        "(the sink's includes its start-up)"
    )


if __name__ == "__main__":
    main()
