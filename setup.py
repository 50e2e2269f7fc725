"""Build hook: the wheel carries the top-level ``templates/`` as ``aggregator/templates``.

The templates stay at the top of the repository, where admins look for them
to copy and adapt, but a normal (non-editable) install must find them inside
the package: ``aggregator.render.templates_dir`` reads them through
``importlib.resources``. Package data cannot reach outside the package, so
``build_py`` copies the directory into the build tree. An editable install
skips the copy and reads the checkout's directory in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "templates"


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not TEMPLATES.is_dir():
            raise FileNotFoundError(f"{TEMPLATES}: the templates must ship with the package")
        target = Path(self.build_lib) / "aggregator" / "templates"
        shutil.copytree(
            TEMPLATES,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"),
        )


setup(cmdclass={"build_py": BuildWithTemplates})
