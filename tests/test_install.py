"""A normal install works: the wheel, in a fresh virtualenv outside the checkout.

The rest of the suite imports the package from the source tree, where the
top-level ``templates/`` sits next to it; this module builds the wheel from a
copy of the project, installs it (with its dependencies) into a new venv in a
temporary directory and runs ``aggregator`` from there, from yet another
directory and without ``PYTHONPATH``, so a file missing from the wheel fails
here instead of on an admin's server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.http import unused_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

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
    wheel: Path
    venv: Path
    workdir: Path  # an empty directory away from the checkout and the venv

    @property
    def aggregator(self) -> Path:
        return self.venv / "bin" / "aggregator"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "AGGREGATOR_CONFIG"}}
    env.pop("AGGREGATOR_TEMPLATES", None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(AGGREGATOR_SECRET="install-test-secret-0123456789"),
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    dist = base / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
        cwd=base,
        timeout=600,
    )
    (wheel,) = dist.glob("aggregator-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base, timeout=300)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=base, timeout=900)
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Install(wheel=wheel, venv=venv, workdir=workdir)


def _files_under(directory: Path) -> set[str]:
    return {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_wheel_carries_every_runtime_file(installed: Install) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = {f"aggregator/templates/{n}" for n in _files_under(REPO / "templates")}
    for package_dir in ("demo", "store/migrations"):
        expected |= {
            f"aggregator/{package_dir}/{n}" for n in _files_under(REPO / "aggregator" / package_dir)
        }
    assert "aggregator/templates/digest.mjml.j2" in expected  # the walk found the templates
    assert expected - names == set()


def test_installed_package_reads_its_own_templates(installed: Install) -> None:
    proc = _run(
        [
            installed.python,
            "-c",
            "import aggregator.render as r; print(r.__file__); print(r.templates_dir())",
        ],
        cwd=installed.workdir,
        timeout=60,
    )
    module, templates = proc.stdout.split()
    assert Path(module).is_relative_to(installed.venv), module
    assert Path(templates).is_relative_to(installed.venv), templates
    assert (Path(templates) / "mail" / "page.html.j2").is_file()


@pytest.fixture(scope="module")
def demo_dir(installed: Install) -> Iterator[Path]:
    directory = installed.workdir.parent / "demo"
    proc = _run(
        [installed.aggregator, "--log-text", "demo", "--no-serve", "--dir", directory],
        cwd=installed.workdir,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert "not found" not in output.lower(), output
    assert "error" not in proc.stderr.lower(), proc.stderr
    yield directory


def test_demo_runs_from_the_wheel(demo_dir: Path) -> None:
    assert (demo_dir / "public" / "feed.atom").is_file()
    html = (demo_dir / "preview" / "digest.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "Ko-pick" in html
    assert list((demo_dir / "mail").glob("*.eml")), "the demo mailed nobody"


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def test_web_app_from_the_wheel_serves_its_pages(installed: Install, demo_dir: Path) -> None:
    port = unused_port()
    config = demo_dir / "feeds.yaml"
    proc = subprocess.Popen(
        [str(installed.aggregator), "--log-text", "-c", str(config), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=installed.workdir,
        env=_clean_env(AGGREGATOR_SECRET="install-test-secret-0123456789"),
    )
    try:
        _wait_listening(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            pages = {path: client.get(path) for path in ("/", "/subscribe", "/digests/")}
    finally:
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=30)
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.text[:500], log)
        assert "not found" not in response.text.lower(), (path, response.text[:500])
    assert "<form" in pages["/subscribe"].text
    assert "Traceback" not in log, log
