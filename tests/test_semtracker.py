"""The parse pool's resource tracker: a shell loop, and it still cleans up after a kill.

Real processes throughout: a fresh interpreter starts a real parse pool
(forkserver, workers, tracker), and the checks read ``/proc`` and
``/dev/shm``; the script's own test feeds it the protocol lines
multiprocessing writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.semtracker import TRACKER_SCRIPT
from tests.test_hostile_parse import alive, descendants

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.isdir("/dev/shm"),
    reason="the shell tracker is for Linux's /dev/shm",
)

# Starts a pool of two workers, runs a call in it, reports what the test
# needs to know, then waits for stdin to close.
POOL = """
import json, os, sys
from multiprocessing import resource_tracker
from aggregator.pool import make_pool
from aggregator.semtracker import running_pid

registered = []  # what multiprocessing tells the tracker, as it tells it
_register = resource_tracker.register
def register(name, rtype):
    registered.append(f"/dev/shm/sem.{name[1:]}" if rtype == "semaphore" else name)
    _register(name, rtype)
resource_tracker.register = register

pool = make_pool(2)
pool.start().result(timeout=60)
assert pool.submit(sum, [1, 2, 3]).result(timeout=60) == 6
seen = {"main": os.getpid(), "tracker": running_pid(), "semaphores": registered}
print(json.dumps(seen), flush=True)
sys.stdin.read()
pool.shutdown()
"""


@pytest.fixture
def pool_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", POOL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # its own process group, for the group's signals
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"the pool process ended early (exit {proc.wait(timeout=30)})"
            yield proc, json.loads(line)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise AssertionError(f"no Pss line for {pid}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(pids: set[int], seconds: float = 20) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def test_a_running_pool_s_tracker_is_a_small_shell_not_a_python_interpreter(
    pool_process: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, seen = pool_process
    tracker = seen["tracker"]
    assert isinstance(tracker, int)
    tree = descendants(proc.pid)

    assert tracker in tree
    assert not any("resource_tracker" in cmdline(pid) for pid in tree), [
        cmdline(pid) for pid in tree
    ]
    assert os.path.realpath(f"/proc/{tracker}/exe") == os.path.realpath("/bin/sh")
    # The standard tracker, a Python interpreter, is 7-9 MB here; the shell ~0.3 MB.
    assert pss_kb(tracker) < 1024
    # The pool works with it: the call above ran, and its semaphores are in /dev/shm.
    names = seen["semaphores"]
    assert isinstance(names, list) and len(names) >= 4
    assert all(os.path.exists(name) for name in names)


def test_a_clean_exit_leaves_no_semaphore_and_ends_the_tracker(
    pool_process: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, seen = pool_process
    names = seen["semaphores"]
    assert isinstance(names, list) and names
    assert all(os.path.exists(name) for name in names)
    tree = descendants(proc.pid)

    proc.communicate("", timeout=60)

    assert proc.returncode == 0
    assert wait_gone(tree) == set()
    assert [name for name in names if os.path.exists(name)] == []


@pytest.mark.parametrize(
    "how",
    [
        "SIGKILL to the main process",
        "SIGTERM to the process group",
        "SIGINT and SIGTERM to the group, then SIGKILL to the main process",
    ],
)
def test_a_killed_pool_s_semaphores_are_unlinked_by_the_tracker(
    pool_process: tuple[subprocess.Popen[str], dict[str, object]], how: str
) -> None:
    proc, seen = pool_process
    names = seen["semaphores"]
    tracker = seen["tracker"]
    assert isinstance(names, list) and names and isinstance(tracker, int)
    assert all(os.path.exists(name) for name in names)
    tree = descendants(proc.pid)

    if how.startswith("SIGKILL"):
        proc.kill()
    elif how.startswith("SIGTERM"):
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.2)  # the signals reach the tracker while it still has work ahead
        if proc.poll() is None:
            proc.kill()
    proc.wait(timeout=30)

    # No finalizer ran in the main process (killed); the tracker outlived the
    # others, read EOF once they were all gone, unlinked the names and ended.
    assert wait_gone(tree) == set(), [cmdline(pid) for pid in alive(tree)]
    assert [name for name in names if os.path.exists(name)] == []


def shells() -> list[str]:
    found = [path for path in ("/bin/sh", shutil.which("bash"), shutil.which("busybox")) if path]
    return sorted(set(found))


def run_script(shell: str, directory: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    command = [shell, "-c", TRACKER_SCRIPT, "tracker", str(directory)]
    if shell.endswith("busybox"):
        command.insert(1, "sh")
    text = "".join(f"{line}\n" for line in lines)
    # Run in the directory, so a name that a shell would expand as a command
    # ("$(touch pwned)") would leave its file where the test looks.
    return subprocess.run(
        command, input=text, capture_output=True, text=True, cwd=directory, check=False
    )


@pytest.mark.parametrize("shell", shells())
@pytest.mark.parametrize("count", [1, 5, 40])
def test_the_script_removes_exactly_what_is_still_registered(
    tmp_path: Path, shell: str, count: int
) -> None:
    names = [f"mp-{n:04d}abc_d" for n in range(count)]
    for name in names:
        (tmp_path / f"sem.{name}").write_bytes(b"\0" * 32)
    (tmp_path / "psm_0a1b").write_bytes(b"\0" * 64)
    (tmp_path / "psm_kept").write_bytes(b"\0" * 64)
    lines = ["PROBE:0:noop"]
    lines += [f"REGISTER:/{name}:semaphore" for name in names]
    lines += ["REGISTER:/psm_0a1b:shared_memory", "REGISTER:/psm_kept:shared_memory"]
    lines += [f"REGISTER:/{names[0]}:semaphore"]  # twice: still one name
    unregistered = names[::2]
    lines += [f"UNREGISTER:/{name}:semaphore" for name in unregistered]
    lines += ["UNREGISTER:/psm_kept:shared_memory", "UNREGISTER:/mp-never:semaphore"]

    done = run_script(shell, tmp_path, lines)

    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"sem.{name}" for name in unregistered] + ["psm_kept"])
    removed = count - len(unregistered) + 1
    assert f"removed {removed} name(s)" in done.stderr


@pytest.mark.parametrize("shell", shells())
@pytest.mark.parametrize(
    "name",
    ["/../victim", "/*", "/sub/victim", "victim", "/", "/a b", "/$(touch pwned)", "/`x`"],
)
def test_the_script_never_removes_a_name_multiprocessing_would_not_make(
    tmp_path: Path, shell: str, name: str
) -> None:
    shm = tmp_path / "shm"
    (shm / "sub").mkdir(parents=True)
    for victim in (tmp_path / "victim", shm / "sem.victim", shm / "sub" / "victim", shm / "x"):
        victim.write_text("keep")
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    done = run_script(shell, shm, [f"REGISTER:{name}:semaphore", f"REGISTER:{name}:shared_memory"])

    assert done.returncode == 0, done.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert "removed" not in done.stderr
