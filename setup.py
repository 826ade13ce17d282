"""Build hook: the message catalogs' .mo files are compiled from their .po files when the package is built
(a wheel, `pip install .`, and `pip install -e .`), so git keeps only the .po sources. The rest of the
build is pyproject.toml's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithCatalogs(build_py):
    def run(self) -> None:
        # Loaded by path: importing the `dashboards` package would need Flask, which a build has not.
        spec = importlib.util.spec_from_file_location("i18n_build", HERE / "dashboards" / "i18n_build.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.compile_catalogs(force=True)
        super().run()


setup(cmdclass={"build_py": BuildWithCatalogs})
