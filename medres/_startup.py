"""Start-up cost that is not medres's own work, deferred to where it is used.

``import monai`` imports every MONAI submodule, among them ``monai.bundle``, which imports ``jsonschema``;
``jsonschema._format`` imports ``rfc3987_syntax`` when it is installed (jupyter pulls it in), and that
module compiles an Earley grammar at import: seconds per process (BENCHMARKS.md, Start-up) for a
checker of JSON-schema ``iri`` formats that medres never uses. :func:`install` hands
``jsonschema._format`` a stand-in whose ``is_valid_syntax`` imports the real module on its first call,
so IRI validation still works, exactly, for whoever uses it, and costs nothing for whoever does not.
Hand-written: no library defers another library's import-time work.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["install"]

_TARGET = "jsonschema._format"
_GRAMMAR = "rfc3987_syntax"


def _is_valid_syntax(term: str, value: str) -> Any:
    """``rfc3987_syntax.is_valid_syntax``, imported (and its grammar compiled) on the first call."""
    if isinstance(sys.modules.get(_GRAMMAR), _Deferred):
        del sys.modules[_GRAMMAR]
    return importlib.import_module(_GRAMMAR).is_valid_syntax(term, value)


class _Deferred(types.ModuleType):
    """What ``from rfc3987_syntax import is_valid_syntax`` finds while ``jsonschema._format`` loads."""

    def __init__(self) -> None:
        super().__init__(_GRAMMAR)
        self.is_valid_syntax = _is_valid_syntax


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loading of ``jsonschema._format`` (and nothing else), once."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None) -> Any:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or importlib.util.find_spec(_GRAMMAR) is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            if _GRAMMAR in sys.modules:  # already imported by someone: nothing to save
                return original(module)
            sys.modules[_GRAMMAR] = _Deferred()
            try:
                original(module)
            finally:
                if isinstance(sys.modules.get(_GRAMMAR), _Deferred):
                    del sys.modules[_GRAMMAR]  # any later import gets the real module

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Defer ``rfc3987_syntax``'s grammar if ``jsonschema`` is not imported yet (idempotent)."""
    if _TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
