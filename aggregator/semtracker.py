"""A resource tracker for the parse pool that is a shell, not a Python interpreter.

Why there is a tracker at all: the parse pool's queues lock with POSIX
named semaphores (five per pool). A worker started by the forkserver is not
a fork of the main process, so it opens them by name, and the names must
stay in ``/dev/shm`` for as long as a worker may still open them. Should the
main process be killed (SIGKILL, an out-of-memory kill) the names would stay
there for good: multiprocessing therefore starts a *resource tracker*, a
process that reads "REGISTER name" / "UNREGISTER name" lines from a pipe and,
once every writer is gone (EOF), unlinks whatever is still registered.

Why not the standard one: it is a whole Python interpreter
(``python -c "from multiprocessing.resource_tracker import main; ..."``),
7-9 MB of PSS, about 6% of a cold ingest's peak, to hold a set of five names.
Its protocol is a line per call on one pipe, so this module starts
``/bin/sh`` running the same loop instead (~0.3 MB) and hands its pipe to
multiprocessing in place of the standard tracker's; from then on
multiprocessing (and the forkserver, which passes the pipe on to the
workers) writes to it exactly as it would have.

What is kept, and why it is safe:

* **Cleaned up when we are killed.** The shell holds the read end; the main
  process, the forkserver and the workers hold the write end. When all of
  them are gone, however they went, the shell reads EOF and removes every
  name still registered (``/dev/shm/sem.NAME`` is where glibc and musl keep
  the named semaphore ``/NAME``; shared memory ``/NAME`` is
  ``/dev/shm/NAME``). A clean exit unregisters everything first (each
  semaphore's finalizer), so it then removes nothing.
* **Not stopped by a Ctrl-C or a SIGTERM to the process group.** It ignores
  SIGINT and SIGTERM (``trap ''``), and they are blocked while it starts, as
  for the standard tracker, so it cannot die in the instant before the trap:
  it outlives the processes it tracks and cleans up after them.
* **Only names multiprocessing makes are removed.** A name must be ``/``
  followed by letters, digits, ``_`` or ``-`` (``/mp-…``, ``/psm_…``);
  anything else (the ``PROBE`` lines multiprocessing sends to check the
  tracker lives) is never passed to ``rm``.
* **Falls back to the standard tracker** whenever this one cannot be used: not
  Linux, no ``/dev/shm`` or ``/bin/sh``, a multiprocessing whose tracker lacks
  the attributes relied on, or a tracker already running (started by other
  code first: its registrations are its own). If the shell dies, the next
  registration finds the pipe closed and multiprocessing starts its standard
  tracker, as it does for its own.

Relies on three private attributes of multiprocessing's tracker object
(its pipe ``_fd``, its pid ``_pid`` and its ``_lock``), present from Python
3.8 to 3.13; :func:`install` checks for them and otherwise leaves the
standard tracker to start.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing import resource_tracker
from typing import Any

__all__ = ["TRACKER_SCRIPT", "install", "running_pid"]

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
SHM_DIR = "/dev/shm"

# The tracker, in POSIX sh (tested with dash and bash; busybox too where installed). It reads
# "CMD:NAME:KIND" lines on stdin; ``live`` holds " KIND:NAME " entries.
TRACKER_SCRIPT = r"""
trap '' INT TERM
set -f
live=' '
while IFS=: read -r cmd name kind; do
    case $name in
        /*[!A-Za-z0-9_-]* | / | [!/]* | '') continue ;;
    esac
    entry="$kind:$name"
    case $cmd:$live in
        REGISTER:*" $entry "*) ;;
        REGISTER:*) live="$live$entry " ;;
        UNREGISTER:*" $entry "*) live="${live%%" $entry "*} ${live#*" $entry "}" ;;
    esac
done
left=0
for entry in $live; do
    name=${entry#*:}
    case $entry in
        semaphore:*) rm -f "$1/sem.${name#/}" ;;
        shared_memory:*) rm -f "$1/${name#/}" ;;
        *) continue ;;
    esac
    left=$((left + 1))
done
if [ "$left" -gt 0 ]; then
    echo "aggregator: removed $left name(s) a killed process left in $1" >&2
fi
"""

_IGNORED = {signal.SIGINT, signal.SIGTERM}
_pid: int | None = None  # the shell this module started


def _usable() -> bool:
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    return (
        sys.platform.startswith("linux")
        and os.path.isdir(SHM_DIR)
        and os.access(SHELL, os.X_OK)
        and tracker is not None
        and all(hasattr(tracker, name) for name in ("_fd", "_pid", "_lock"))
    )


def install() -> bool:
    """Make multiprocessing's resource tracker the small shell one, if none runs yet.

    Call before anything creates a multiprocessing lock or queue (the parse
    pool does, before making its executor). Returns whether the shell tracker
    is the one in use now; when it is not, the standard tracker starts as
    usual on first use.
    """
    global _pid
    if not _usable():
        return False
    # Private attributes (checked by _usable), hence untyped.
    tracker: Any = resource_tracker._resource_tracker
    with tracker._lock:
        if tracker._fd is not None:  # already running: ours, or the standard one
            return _pid is not None and tracker._pid == _pid
        read_end, write_end = os.pipe()
        try:
            # posix_spawn, not Popen: the shell outlives this process's
            # interest in it (as the standard tracker does), and a Popen
            # object would warn at exit that its child still runs. It starts
            # with SIGINT and SIGTERM blocked, so a signal to the group cannot
            # kill it before its trap ignores them; everything but the pipe
            # (its stdin) and stdout/stderr is close-on-exec, as Python opens it.
            pid = os.posix_spawn(
                SHELL,
                [SHELL, "-c", TRACKER_SCRIPT, "aggregator-tracker", SHM_DIR],
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)],
                setsigmask=_IGNORED,
            )
        except OSError as exc:
            os.close(write_end)
            log.debug("cannot start the shell resource tracker (%s); using the standard one", exc)
            return False
        finally:
            os.close(read_end)
        tracker._fd = write_end
        tracker._pid = _pid = pid
    return True


def running_pid() -> int | None:
    """The pid of multiprocessing's resource tracker in this process, if one was started."""
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    return pid if isinstance(pid, int) else None
