"""Packaging beyond pyproject.toml: the top-level ``configs/`` folder is installed as ``medres.configs``.

pyproject.toml's ``packages.find`` cannot add a package mapped from outside ``medres/``, so the package
list is made here (everything under ``medres/`` plus ``medres.configs``); the rest lives in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["medres*"], exclude=["medres.configs*"]), "medres.configs"],
    package_dir={"medres.configs": "configs"},
)
