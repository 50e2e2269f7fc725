"""A normal install works: the wheel, in a fresh virtualenv outside the checkout.

The rest of the suite imports the package from the source tree, where the
top-level ``templates/`` sits next to it; this module takes the wheel built
from a copy of the project and installed into a new venv (the session fixture
``installed`` of tests/support/install.py, shared with test_admin_path.py) and
runs ``aggregator`` from there, from yet another directory and without
``PYTHONPATH``, so a file missing from the wheel fails here instead of on an
admin's server.
"""

from __future__ import annotations

import signal
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support.http import unused_port
from tests.support.install import REPO, SECRET, Install, clean_env, run_ok, wait_listening

pytestmark = pytest.mark.slow


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
    proc = run_ok(
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


def test_demo_runs_from_the_wheel(demo_dir: Path) -> None:
    assert (demo_dir / "public" / "feed.atom").is_file()
    html = (demo_dir / "preview" / "digest.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "Ko-pick" in html
    assert list((demo_dir / "mail").glob("*.eml")), "the demo mailed nobody"


def test_web_app_from_the_wheel_serves_its_pages(installed: Install, demo_dir: Path) -> None:
    port = unused_port()
    config = demo_dir / "feeds.yaml"
    proc = subprocess.Popen(
        [str(installed.aggregator), "--log-text", "-c", str(config), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=installed.workdir,
        env=clean_env(AGGREGATOR_SECRET=SECRET),
    )
    try:
        wait_listening(port, proc)
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
