"""A user's mistake on the command line is one line on stderr and exit 2, never a traceback.

Every command and subcommand is taken from the real app (so a new command is
covered the day it is added) and called with an unknown option, without an
argument it needs, and with a malformed value. The full matrix runs in-process
through :func:`aggregator.cli.main`, exactly as the console script calls it;
the cases the issue names run again through ``python -m aggregator``, and
Ctrl-C of ``demo`` and ``run`` is sent as a real SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from aggregator.cli import app
from tests.support.cli import CliResult, run_cli
from tests.support.http import unused_port


def _commands() -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], Any]]:
    """Paths of every group and every leaf command, walked from the click command typer builds."""
    groups: list[tuple[str, ...]] = []
    leaves: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            groups.append(path)
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            leaves[path] = command

    walk(typer.main.get_command(app), ())
    return groups, leaves


GROUPS, LEAVES = _commands()

# A malformed value per command. Commands that take no value at all get a
# stray argument. A new command fails test_every_command_has_a_malformed_case
# until it is given one here.
MALFORMED: dict[tuple[str, ...], list[list[str]]] = {
    ("check",): [
        ["surplus"],
        ["--dns", "--nameserver", "dns.example.org"],
        ["--dns", "--nameserver", "127.0.0.1:99999"],
        ["--nameserver", "127.0.0.1"],  # without --dns: would silently do nothing
    ],
    ("fetch",): [["--source", "no-such-source"], ["--due=yes"]],
    ("status",): [["surplus"]],
    ("items",): [["--since", "garbage"], ["--since", "2026-13-45"], ["--limit", "ten"]],
    ("migrate",): [["surplus"]],
    ("try-source",): [
        ["https://127.0.0.1:9/list", "--select", "bogus"],
        ["https://127.0.0.1:9/list", "--select", "colour=.x"],
        ["https://127.0.0.1:9/list", "--type", "rss"],
    ],
    ("publish",): [["surplus"]],
    ("serve",): [["--port", "http"], ["--port", "99999"]],
    ("worker",): [["--concurrency", "many"]],
    ("demo",): [["--port", "-1"], ["--port", "eighty"]],
    ("run",): [["--role", "bogus"], ["--port", "65536"]],
    ("reload",): [["surplus"]],
    ("opml", "import"): [["no-such-file.opml"]],
    ("opml", "export"): [["surplus"]],
    ("digest", "preview"): [["--period", "garbage"], ["--since", "last tuesday"]],
    ("digest", "compose"): [["surplus"]],
    ("digest", "list"): [["--limit", "ten"]],
    ("digest", "send"): [["--retry-delay", "soon"]],
    ("subscribers", "add"): [["not-an-email"], ["two@@example.org"], ["한글@"]],
    ("subscribers", "remove"): [["not-an-email"]],
    ("subscribers", "set"): [["not-an-email", "--lang", "ko"], ["x@example.org"]],
    ("subscribers", "list"): [["--status", "bogus"]],
    ("subscribers", "import"): [["no-such-file.csv"]],
    ("subscribers", "export"): [["--status", "bogus"]],
    ("subscribers", "confirm-mail"): [["not-an-email"], []],
    ("subscribers", "expire"): [["surplus"]],
    ("queue", "status"): [["surplus"]],
    ("queue", "dispatch"): [["surplus"]],
    ("queue", "recover"): [["--silent-for", "long"]],
    ("dkim", "keygen"): [
        ["--selector", "bad selector", "--domain", "example.org"],
        ["--selector", "s", "--domain", "not a domain"],
        ["--selector", "s", "--bits", "many"],
    ],
    ("bounces", "process"): [["surplus"]],
    ("bounces", "status"): [["surplus"]],
    ("subscribers", "unsuppress"): [["not-an-email"]],
}


def _value_options(command: Any) -> list[str]:
    """Options of ``command`` that need a value (not flags, not counters)."""
    return [
        p.opts[0]
        for p in command.params
        if p.param_type_name == "option" and not p.is_flag and not getattr(p, "count", False)
    ]


def _missing_cases() -> list[tuple[tuple[str, ...], list[str]]]:
    """Per command: its required arguments left out, or a value option given no value."""
    cases: list[tuple[tuple[str, ...], list[str]]] = []
    for path, command in LEAVES.items():
        if any(p.param_type_name == "argument" and p.required for p in command.params):
            cases.append((path, []))
        for option in _value_options(command):
            cases.append((path, [option]))
    return cases


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A valid feeds.yaml on SQLite, and a working directory without one."""
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site:\n  title: Test\n  url: https://digest.example.org/\n"
        f"storage:\n  url: sqlite:///{tmp_path / 'db.sqlite'}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGGREGATOR_SECRET", "cli-errors-secret-0123456789")
    yield path


def assert_one_line_usage_error(result: CliResult, *expected: str) -> None:
    assert result.exit_code == 2, result
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def _name(path: tuple[str, ...]) -> str:
    return " ".join(path) or "aggregator"


def test_the_matrix_covers_every_command() -> None:
    # The walk itself must find the app's commands, or every test below is vacuous.
    assert {("fetch",), ("digest", "send"), ("subscribers", "import")} <= set(LEAVES)
    assert {(), ("digest",), ("subscribers",), ("opml",), ("queue",)} <= set(GROUPS)


def test_every_command_has_a_malformed_case() -> None:
    assert set(MALFORMED) == set(LEAVES), "add the new command to MALFORMED"


@pytest.mark.parametrize("path", list(LEAVES), ids=_name)
def test_unknown_option(path: tuple[str, ...], config: Path) -> None:
    result = run_cli("-c", str(config), *path, "--no-such-option")
    assert_one_line_usage_error(result, "--no-such-option", f"aggregator {_name(path)}")


@pytest.mark.parametrize(("path", "args"), _missing_cases(), ids=lambda v: _name(v) or "none")
def test_missing_argument(path: tuple[str, ...], args: list[str], config: Path) -> None:
    result = run_cli("-c", str(config), *path, *args)
    assert_one_line_usage_error(result, *args)


@pytest.mark.parametrize(
    ("path", "args"),
    [(path, args) for path, cases in MALFORMED.items() for args in cases],
    ids=lambda v: _name(v) if isinstance(v, tuple) else " ".join(v),
)
def test_malformed_value(path: tuple[str, ...], args: list[str], config: Path) -> None:
    result = run_cli("-c", str(config), *path, *args)
    assert_one_line_usage_error(result)


@pytest.mark.parametrize("path", GROUPS, ids=_name)
def test_group_without_subcommand_prints_help_and_exits_2(
    path: tuple[str, ...], config: Path
) -> None:
    # Bare ``aggregator``, or ``aggregator -c FILE digest``; ``aggregator -c FILE``
    # alone is a missing command (test_missing_command).
    result = run_cli(*(["-c", str(config), *path] if path else []))
    assert result.exit_code == 2, result
    assert "Usage" in result.stdout and "Traceback" not in result.output
    assert result.stderr == ""


def test_missing_command(config: Path) -> None:
    assert_one_line_usage_error(run_cli("-c", str(config)), "Missing command")


def test_unknown_command(config: Path) -> None:
    assert_one_line_usage_error(run_cli("-c", str(config), "fecth"), "fecth")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("cp949.yaml", "site:\n  title: 한국 영화 소식\nsources: []\n".encode("cp949")),
        ("euc-kr.yaml", "# 설정\nsite: {title: 영화}\n".encode("euc-kr")),
        ("latin1.yaml", "site:\n  title: Caf\xe9\n".encode("latin-1")),
        ("utf16.yaml", "site:\n  title: 영화\n".encode("utf-16")),
        ("binary.yaml", bytes(range(128, 256))),
    ],
)
def test_config_in_another_encoding_is_one_line(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = run_cli("-c", str(path), "check")
    assert_one_line_usage_error(result, str(path), "not UTF-8")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8"])
def test_config_with_or_without_bom_is_read(config: Path, encoding: str) -> None:
    config.write_bytes(config.read_text(encoding="utf-8").encode(encoding))
    result = run_cli("-c", str(config), "check")
    assert result.exit_code == 0, result
    assert "ok" in result.stdout


@pytest.mark.parametrize("where", ["missing.yaml", "missing/dir/feeds.yaml", "."])
def test_config_that_cannot_be_read_is_one_line(tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    result = run_cli("-c", str(path), "status")
    assert_one_line_usage_error(result, str(path))


# ------------------------------------------------------ through the real entry point


def _aggregator(*args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGGREGATOR_SECRET": "cli-errors-secret-0123456789"}
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        **kwargs,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["fetch", "--bogus"],
        ["items", "--since", "garbage"],
        ["subscribers", "list", "--status", "bogus"],
        ["try-source", "--select", "bogus", "https://127.0.0.1:9/"],
        ["try-source"],
        ["-c", "no-such-feeds.yaml", "check"],
    ],
    ids=" ".join,
)
def test_script_answers_mistakes_in_one_line(config: Path, args: list[str]) -> None:
    full = args if args[0] == "-c" else ["-c", str(config), *args]
    proc = _aggregator(*full, cwd=config.parent)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_script_without_arguments_prints_help(tmp_path: Path) -> None:
    proc = _aggregator(cwd=tmp_path)
    assert proc.returncode == 2, proc
    assert "Usage: aggregator" in proc.stdout and "fetch" in proc.stdout
    assert proc.stderr == ""


def _interrupt_when_ready(
    args: list[str], cwd: Path, ready: Callable[[str], bool]
) -> tuple[int, str, str]:
    """Start ``aggregator ARGS``, wait until ``ready(stdout)``, send SIGINT, collect the outcome."""
    env = {**os.environ, "AGGREGATOR_SECRET": "cli-errors-secret-0123456789"}
    out_path, err_path = cwd / "out.txt", cwd / "err.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--log-text", *args],
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            # A shell may start background jobs with SIGINT ignored; Ctrl-C must reach it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 90
            while not ready(out_path.read_text(encoding="utf-8")):
                assert proc.poll() is None, err_path.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "never got ready"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, out_path.read_text(encoding="utf-8"), err_path.read_text(encoding="utf-8")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ctrl_c_stops_the_serving_demo_in_one_line(tmp_path: Path) -> None:
    code, out, err = _interrupt_when_ready(
        ["demo", "--dir", str(tmp_path / "demo"), "--serve"],
        tmp_path,
        lambda stdout: "press Ctrl-C" in stdout,
    )
    assert code == 130, out + err
    assert "Traceback" not in out + err and "CancelledError" not in err
    assert err.strip().splitlines() == ["stopped by Ctrl-C"]


@pytest.mark.slow
def test_ctrl_c_stops_run_in_one_line(config: Path) -> None:
    port = unused_port()
    code, out, err = _interrupt_when_ready(
        ["-c", str(config), "run", "--port", str(port), "--no-watch"],
        config.parent,
        lambda _: _listening(port),
    )
    assert code == 130, out + err
    assert "Traceback" not in out + err and "CancelledError" not in err
    assert err.strip().splitlines() == ["stopped by Ctrl-C"]


@pytest.mark.slow
@pytest.mark.postgres
def test_ctrl_c_stops_distributed_run_in_one_line(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "site: {title: T, url: 'http://127.0.0.1:9/'}\n"
        f"storage: {{url: '{pg_url}', queue: procrastinate}}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    port = unused_port()
    code, out, err = _interrupt_when_ready(
        ["-c", str(config), "run", "--port", str(port)],
        tmp_path,
        lambda _: _listening(port),
    )
    assert code == 130, out + err
    assert "Traceback" not in out + err and "CancelledError" not in err
    assert err.strip().splitlines() == ["stopped by Ctrl-C"]
