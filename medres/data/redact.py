"""Keeping patient data out of messages and logs while third-party readers run.

Readers quote element values in their exceptions, warnings and log lines (pydicom's validation warnings
quote whole values, which may be a patient's name). medres reports problems in its own words and passes
a reader's message on only through :func:`safe_message`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator

import pydicom

__all__ = ["safe_message", "quiet_pydicom"]

_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def safe_message(exc: BaseException, limit: int = 160) -> str:
    """A reader's exception as text with quoted values removed (they may hold patient data)."""
    text = _QUOTED.sub("'…'", str(exc)).replace("\n", " ")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_LOCK = threading.Lock()
_DEPTH = 0
_SAVED_MODE: int | None = None


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom while medres reads: its validation warnings and log lines quote element values,
    which may be patient names or ids. medres reports every problem itself, without values.

    Re-entrant and safe across threads (a ThreadDataLoader): pydicom's validation mode is switched off by
    the first reader in and restored by the last one out; each reader filters pydicom's log records.
    """
    global _DEPTH, _SAVED_MODE
    pd_logger = logging.getLogger("pydicom")
    drop = _DropRecords()
    pd_logger.addFilter(drop)
    with _LOCK:
        if _DEPTH == 0:
            _SAVED_MODE = pydicom.config.settings.reading_validation_mode
            pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        _DEPTH += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _SAVED_MODE is not None:
                pydicom.config.settings.reading_validation_mode = _SAVED_MODE
        pd_logger.removeFilter(drop)
