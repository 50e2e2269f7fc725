"""The project as an admin installs it: fixtures ``installed`` and ``demo_dir``.

The rest of the suite imports the package from the source tree. ``installed``
builds the wheel from a copy of the project, installs it (with its
dependencies) into a new virtualenv in a temporary directory and hands back
where the ``aggregator`` script is, so tests can run it from another directory
and without ``PYTHONPATH``, as on an admin's server. Building and installing
takes a minute or more, so it happens once per session and every module that
needs a real install shares it (test_install.py, test_admin_path.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "REPO",
    "SECRET",
    "Install",
    "clean_env",
    "demo_dir",
    "installed",
    "run_ok",
    "wait_listening",
]

REPO = Path(__file__).resolve().parent.parent.parent
SECRET = "install-test-secret-0123456789"

# Not part of a build: caches, local data, the tests themselves.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
    "data",
    "public",
    "tests",
    "benchmarks",
    "*.db",
    "*.db-*",
)


@dataclass(frozen=True)
class Install:
    """A wheel installed into its own virtualenv, and a directory to run it from."""

    wheel: Path
    venv: Path
    workdir: Path  # an empty directory away from the checkout and the venv

    @property
    def aggregator(self) -> Path:
        return self.venv / "bin" / "aggregator"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the checkout (or at a config)."""
    hidden = {"PYTHONPATH", "AGGREGATOR_CONFIG", "AGGREGATOR_TEMPLATES", "DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def run_ok(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in the clean environment; fail with both streams unless it exits 0."""
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(AGGREGATOR_SECRET=SECRET),
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Poll until something accepts on 127.0.0.1:``port``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """The wheel of this checkout, installed into a fresh virtualenv (once per session)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    dist = base / "dist"
    run_ok(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
        cwd=base,
        timeout=600,
    )
    (wheel,) = dist.glob("aggregator-*.whl")
    venv = base / "venv"
    run_ok([sys.executable, "-m", "venv", venv], cwd=base, timeout=300)
    run_ok([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=base, timeout=900)
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Install(wheel=wheel, venv=venv, workdir=workdir)


@pytest.fixture(scope="session")
def demo_dir(installed: Install) -> Iterator[Path]:
    """``aggregator demo --no-serve --dir D`` run once from the wheel; yields D."""
    directory = installed.workdir.parent / "demo"
    proc = run_ok(
        [installed.aggregator, "--log-text", "demo", "--no-serve", "--dir", directory],
        cwd=installed.workdir,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert "not found" not in output.lower(), output
    assert "error" not in proc.stderr.lower(), proc.stderr
    yield directory
