"""Build hook: the service files travel in the wheel as package data.

`packaging/` and `man/` stay the one source in the repository; at build time
they are copied into `omnimemory_learner/_data/` of the build tree, where
`omnimemory_learner.system.installer.data_file` finds them after
installation.  Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_TREES = ("packaging", "man")


class BuildPyWithServiceFiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "omnimemory_learner" / "_data"
        for tree in DATA_TREES:
            source = HERE / tree
            if not source.is_dir():  # an sdist without them is broken: say so
                raise SystemExit(f"{source} is missing: the wheel would lack the service files")
            shutil.rmtree(target / tree, ignore_errors=True)
            shutil.copytree(source, target / tree, ignore=shutil.ignore_patterns("*~", ".*"))


setup(cmdclass={"build_py": BuildPyWithServiceFiles})
