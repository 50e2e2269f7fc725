"""The parsing pool: worker processes that die with us and stop at a CPU budget.

Parsing and normalizing are CPU-bound pure Python (plus lexbor and html5ever),
so they run in a process pool. Three things the bare ``ProcessPoolExecutor``
does not give us, and why:

* **Workers die with their parent.** A worker blocks reading its task pipe,
  whose write end every worker also holds: when ``aggregator fetch`` is killed
  (SIGKILL, SIGTERM) nothing ever closes it, and the workers lived on as
  orphans holding their memory. Each worker asks the kernel for SIGKILL when
  its parent (the forkserver, which exits with us) dies
  (``PR_SET_PDEATHSIG``), and, where that is not available or raced, a
  watcher thread exits when the main process is gone.
* **A CPU budget per source.** A document that costs minutes of CPU (a
  parser's quadratic corner) would hold a worker each interval. Each task
  runs under a CPU-time timer (``ITIMER_PROF``, the precise form of
  ``RLIMIT_CPU``); its SIGPROF becomes ``CpuBudgetExceeded`` in the task, and
  the caller gets ``OverBudget``, which ``Ingestor`` records as that source's
  error.
  Native code that ignores the signal is stopped by a wall-clock watchdog
  (``faulthandler``), which ends the worker; the pool is then replaced and
  the source reported.
* **Logs like the main process.** Workers set up logging as the parent did
  (JSON lines when stderr is not a terminal).
* **Started on first use, small.** No process (not even multiprocessing's
  resource tracker) starts until ``start`` or the first ``submit``: the
  ingest pass calls ``start`` when a body is sure to come (a source that
  cannot answer 304) or has come, so a pass in which every source answers
  304 never starts one. The forkserver
  preloads only :mod:`aggregator.extract` and the parsers it runs (no HTTP
  client, SQL or config code), so each worker forked from it is small too.
* **No Python interpreter to unlink five semaphores.** The executor's
  queues use POSIX named semaphores, and multiprocessing starts a resource
  tracker to unlink them should we be killed: a whole Python process, 7-9 MB
  of PSS, 6% of a cold ingest's peak. :mod:`aggregator.semtracker` starts a
  ``/bin/sh`` loop speaking the same pipe protocol in its place (~0.3 MB):
  it too outlives a kill of every process it tracks, ignores the group's
  SIGINT and SIGTERM, and unlinks what is left registered; where it cannot
  run, the standard tracker starts as before. Doing without any tracker is
  not safe: a worker started by the forkserver opens the semaphores by
  name, so the names must exist until it has, and the workers are started
  lazily, after the semaphores are made; a kill in between would leave
  them in ``/dev/shm`` for good.
* **Started without blocking.** Starting the forkserver and the first worker
  takes a few tenths of a second (the forkserver imports the parsers), and
  ``ProcessPoolExecutor.submit`` does it in the caller: the ingest event loop
  stood still that long on the first body. ``start`` does it in a thread
  and returns a future, so a caller can keep fetching (and start the pool
  early, when it knows bodies are coming) and submit once the workers run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from . import semtracker
from .logs import JsonFormatter, setup_logging

__all__ = [
    "PARSE_CPU_BUDGET",
    "BrokenProcessPool",
    "CpuBudgetExceeded",
    "OverBudget",
    "ParsePool",
    "cpu_budget",
    "make_pool",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# CPU seconds one source's parse + normalize may use. A feed of ordinary items
# at the 10 MB cap takes about 5 s here (4,000 Korean items, 4.2 MB: 1.9 s);
# hostile markup is bounded well below that (sources/markup.py).
PARSE_CPU_BUDGET = 10
# Wall-clock seconds past the CPU budget before a worker stuck in native code
# (which defers the CPU-timer signal) is ended. Generous: a loaded machine is
# slow, not stuck.
WATCHDOG_GRACE = 30.0
# How often a worker checks that the main process still exists.
PARENT_CHECK_INTERVAL = 1.0
_PR_SET_PDEATHSIG = 1


class CpuBudgetExceeded(BaseException):
    """Raised inside a worker when its task used up its CPU budget.

    A ``BaseException`` so that a parser's broad ``except Exception`` cannot
    swallow it and carry on burning CPU. It never leaves the worker: the
    caller gets ``OverBudget``.
    """


class OverBudget(Exception):
    """A call in the pool was stopped at its CPU budget (``budget`` seconds)."""

    def __init__(self, budget: float) -> None:
        super().__init__(budget)
        self.budget = budget

    def __str__(self) -> str:
        return f"stopped after {self.budget:g} s of CPU (the per-source parse budget)"


def _die_with_parent(main_pid: int) -> None:
    """Make this worker exit when its parent or the main process is gone."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on the watcher thread")
    if not _alive(main_pid) or os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != parent or not _alive(main_pid):
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _on_cpu_timer(signum: int, frame: object) -> None:
    raise CpuBudgetExceeded


def _init_worker(main_pid: int, log_level: int, json_logs: bool) -> None:
    """Pool initializer: parent-death handling, the CPU-timer handler, logging."""
    _die_with_parent(main_pid)
    # The parent's SIGINT handling covers the whole process group: a Ctrl-C
    # must not leave each worker printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPROF, _on_cpu_timer)
    setup_logging(log_level, json_format=json_logs)


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise ``CpuBudgetExceeded`` in this process after ``seconds`` more CPU seconds.

    Only meaningful in a pool worker: it needs the SIGPROF handler the
    initializer installs, and the timer is process-wide. ``ITIMER_PROF``
    counts this process's CPU time (user and system) to the millisecond, where
    ``RLIMIT_CPU`` counts whole seconds and cannot be raised again once
    lowered. A wall-clock watchdog ends the process if the signal cannot be
    acted on (native code holding on) within ``WATCHDOG_GRACE`` more seconds.
    """
    signal.setitimer(signal.ITIMER_PROF, seconds)
    faulthandler.dump_traceback_later(seconds + WATCHDOG_GRACE, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        faulthandler.cancel_dump_traceback_later()


def _budgeted(budget: float, fn: Callable[..., T], *args: Any) -> T:
    try:
        with cpu_budget(budget):
            return fn(*args)
    except CpuBudgetExceeded:
        raise OverBudget(budget) from None


# Long enough for a loaded machine to fork and initialize every worker; a
# warm-up call that waits this long gives up and lets its worker go, so start
# still finishes (later submits then spawn whatever did not come up).
_MEET_TIMEOUT = 20.0


def _meet(meeting: str, count: int, timeout: float) -> int:
    """Warm-up call: sign in at ``meeting`` and wait until ``count`` workers have.

    Holding the worker until then keeps every other warm-up call from
    reusing it, so each one gets a worker of its own (see ``ParsePool.start``).
    """
    pid = os.getpid()
    Path(meeting, str(pid)).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(meeting)) < count and time.monotonic() < deadline:
        time.sleep(0.002)
    return pid


def _parent_logging() -> tuple[int, bool]:
    """The root logger's level and whether it writes JSON, to copy into workers."""
    root = logging.getLogger()
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    if not root.handlers:
        json_logs = not sys.stderr.isatty()
    return root.level, json_logs


class ParsePool(Executor):
    """A process pool for ``extract`` with the guarantees in the module docstring.

    ``submit`` runs each call under the CPU budget. When a worker dies (the
    watchdog, an out-of-memory kill, a crash in a C extension) the underlying
    executor breaks and fails every call in flight; ``renew`` replaces it so
    callers can retry theirs once (``Ingestor`` does).
    """

    def __init__(self, workers: int | None = None, *, cpu_budget: float = PARSE_CPU_BUDGET):
        self.workers = workers or os.cpu_count() or 2
        self.cpu_budget = cpu_budget
        self._lock = threading.Lock()
        self._broken: set[ProcessPoolExecutor] = set()  # executors a dead worker broke
        # Made on the first submit: even an idle ProcessPoolExecutor starts the
        # resource tracker (a Python process) for its queues' semaphores.
        self._executor: ProcessPoolExecutor | None = None
        self._shut_down = False
        # Its own lock: the start thread holds ``_lock`` while it makes the
        # executor, and a caller asking whether the start is done must not wait.
        self._start_lock = threading.Lock()
        self._starting: Future[None] | None = None

    @property
    def started(self) -> bool:
        """Whether anything was ever submitted (so worker processes may exist)."""
        with self._lock:
            return self._executor is not None

    def start(self) -> Future[None]:
        """Start the worker processes from a background thread; done once every worker runs.

        Idempotent: every call returns the same future. ``submit`` works
        before it is done (it then waits, in the caller, for what is left of
        the start); callers that must not block (an event loop) wait for this
        future first. The future holds the error if the pool cannot start.
        """
        with self._start_lock:
            if self._starting is not None:
                return self._starting
            starting = self._starting = Future()
        threading.Thread(
            target=self._spawn_workers, args=(starting,), name="parse-pool-start", daemon=True
        ).start()
        return starting

    def _spawn_workers(self, starting: Future[None]) -> None:
        try:
            with self._lock:
                executor = self._current()
            # ProcessPoolExecutor spawns a worker per submit while none is
            # idle and fewer than max_workers run. A trivial call per worker
            # is not enough: if the first returns before the last submit, that
            # submit finds an idle worker and spawns nothing, and the missing
            # worker is spawned later by a submit from the event loop. Each
            # warm-up call therefore holds its worker until all are running.
            with tempfile.TemporaryDirectory(prefix="aggregator-pool-") as meeting:
                calls = [
                    executor.submit(_meet, meeting, self.workers, _MEET_TIMEOUT)
                    for _ in range(self.workers)
                ]
                for call in calls:
                    # A worker that dies here breaks the executor; the first
                    # real submit reports that and renews it, as for any task.
                    with contextlib.suppress(Exception):
                        call.result()
        except BaseException as exc:
            starting.set_exception(exc)
        else:
            starting.set_result(None)

    def _current(self) -> ProcessPoolExecutor:
        """The executor, made now if this is the first call (hold ``_lock``)."""
        if self._shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self._executor is None:
            self._executor = self._new_executor()
        return self._executor

    def _new_executor(self) -> ProcessPoolExecutor:
        # Before the executor's queues make their semaphores, which starts a
        # resource tracker: the small one (module docstring).
        semtracker.install()
        ctx = multiprocessing.get_context("forkserver")
        # Only what the workers run: the pipeline's other modules (httpx,
        # SQLAlchemy, pydantic) would double each worker's size for nothing.
        ctx.set_forkserver_preload(
            [
                "aggregator.pool",
                "aggregator.extract",
                "aggregator.sources",
                "aggregator.normalize",
                "aggregator.dedupe",
            ]
        )
        level, json_logs = _parent_logging()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(os.getpid(), level, json_logs),
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args)`` in a worker under the CPU budget (no keyword arguments)."""
        if kwargs:
            raise TypeError("ParsePool.submit takes positional arguments only")
        with self._lock:
            executor = self._current()
        future = executor.submit(_budgeted, self.cpu_budget, fn, *args)
        future.add_done_callback(lambda done: self._note_broken(executor, done))
        return future

    def _note_broken(self, executor: ProcessPoolExecutor, future: Future[Any]) -> None:
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            with self._lock:
                if executor is self._executor:
                    self._broken.add(executor)

    def renew(self) -> None:
        """Replace the executor if a call on it failed because a worker died."""
        with self._lock:
            broken = self._executor
            if broken is None or broken not in self._broken:
                return
            log.warning("a parse worker died; starting a fresh pool")
            self._broken.clear()
            self._executor = self._new_executor()
        broken.shutdown(wait=False, cancel_futures=True)

    def terminate(self) -> None:
        """Stop every worker now, mid-task (for SIGTERM): nothing is waited for."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return
        # ProcessPoolExecutor has no public way to stop running workers before 3.14.
        processes = dict(getattr(executor, "_processes", None) or {})
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.kill()
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.join(timeout=5)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the current executor down (``Executor.shutdown``); nothing to do if never used."""
        with self._lock:
            executor = self._executor
            self._shut_down = True
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)


def make_pool(workers: int | None = None, *, cpu_budget: float = PARSE_CPU_BUDGET) -> ParsePool:
    """A parse pool sized to the cores; forkserver so workers never inherit our threads."""
    return ParsePool(workers, cpu_budget=cpu_budget)
