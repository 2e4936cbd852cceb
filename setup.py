"""Copies the repository's contract files (sql/, schemas/) into the wheel's package.

Everything else is declared in pyproject.toml; this hook exists because setuptools
ships package data only from inside the package, and the contracts stay at the top.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONTRACTS = ("sql", "schemas")


class BuildWithContracts(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for name in CONTRACTS:
            target = Path(self.build_lib) / "pipeline" / "_contracts" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(root / name, target)


setup(cmdclass={"build_py": BuildWithContracts})
