"""Build hook: the wheel carries the top-level ``templates/`` as ``aggregator/templates``.

The templates stay at the top of the repository, where admins look for them
to copy and adapt, but a normal (non-editable) install must find them inside
the package: ``aggregator.render.templates_dir`` reads them through
``importlib.resources``. Package data cannot reach outside the package, so
``build_py`` copies the directory into the build tree. An editable install
skips the copy and reads the checkout's directory in place.

The gettext catalogs (``aggregator/locale/*/LC_MESSAGES/messages.po``) are
compiled to ``.mo`` into the build tree here too, with Babel; an editable
install has none and :mod:`aggregator.i18n` compiles the ``.po`` in memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "templates"
LOCALE = Path(__file__).resolve().parent / "aggregator" / "locale"


def compile_catalogs(target: Path) -> list[Path]:
    """Each ``LOCALE/<lang>/LC_MESSAGES/*.po`` as ``.mo`` under ``target``; the files written."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/*.po")):
        mo = target / po.relative_to(LOCALE).with_suffix(".mo")
        mo.parent.mkdir(parents=True, exist_ok=True)
        with po.open("rb") as source:
            catalog = read_po(source, locale=po.parts[-3], domain=po.stem)
        with mo.open("wb") as out:
            write_mo(out, catalog)
        written.append(mo)
    return written


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        compile_catalogs(Path(self.build_lib) / "aggregator" / "locale")
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
