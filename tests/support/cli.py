"""Run the ``aggregator`` command in-process, through the same entry point as the script."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from aggregator.cli import main


@dataclass(frozen=True)
class CliResult:
    """What one run of ``aggregator`` printed and how it exited."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, stdout first (enough for tests that look for a phrase)."""
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """``aggregator ARGS`` via :func:`aggregator.cli.main`, as the console script calls it.

    ``main`` ends with ``sys.exit`` like the script; the exit code is taken
    from that. Rich's consoles look up ``sys.stdout``/``sys.stderr`` on every
    write, so redirecting them here captures all of the command's output.
    """
    out, err = io.StringIO(), io.StringIO()
    code: int
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        else:
            code = 0
    return CliResult(code, out.getvalue(), err.getvalue())
