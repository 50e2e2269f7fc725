"""`aggregator demo` end to end, the way a newcomer runs it (offline, in a subprocess)."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from pathlib import Path

import feedparser


def test_demo_runs_the_whole_pipeline_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator", "--log-text", "demo", "--dir", str(out), "--no-serve"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # no feeds.yaml here: the demo writes its own
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Not serving: no web address that would not answer, only how to serve it.
    assert "Feed file" in proc.stdout and "Feed (Atom)" not in proc.stdout
    assert f"Serve it: aggregator -c {out / 'feeds.yaml'} run" in proc.stdout
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr

    feed = feedparser.parse((out / "public" / "feed.atom").read_bytes())
    assert not feed.bozo
    titles = {e.title for e in feed.entries}
    assert "Ko-pick: Most Anticipated Korean Films of 2026" in titles
    assert "부산국제영화제, 내년 경쟁 부문 심사위원 발표" in titles  # from the EUC-KR page
    assert len(feed.entries) == 14  # 15 found, one story seen in two sources

    html = (out / "preview" / "digest.html").read_text(encoding="utf-8")
    text = (out / "preview" / "digest.txt").read_text(encoding="utf-8")
    assert "Ko-pick columns" in html and "Film previews" in html
    assert "<script" not in html and "onerror" not in html
    assert "http://127.0.0.1:" in text

    mails = sorted((out / "mail").glob("*.eml"))
    assert [m.name.split("-", 1)[1] for m in mails] == [
        "reader@example.org.eml",
        "critic@example.org.eml",
    ]
    message = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].display_name == "김민지"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_body(preferencelist=("plain",)) is not None
    assert message.get_body(preferencelist=("html",)) is not None
