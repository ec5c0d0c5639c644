"""Keeping patient data out of messages and logs while third-party readers run.

Readers quote element values in their exceptions, warnings and log lines (pydicom's validation warnings
quote whole values, which may be a patient's name). medres reports problems in its own words and passes
a reader's message on only through :func:`safe_message`.
"""

from __future__ import annotations

import contextlib
import logging
import re
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


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom while medres reads: its validation warnings and log lines quote element values,
    which may be patient names or ids. medres reports every problem itself, without values."""
    pd_logger = logging.getLogger("pydicom")
    drop = _DropRecords()
    old_mode = pydicom.config.settings.reading_validation_mode
    pd_logger.addFilter(drop)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom.config.settings.reading_validation_mode = old_mode
        pd_logger.removeFilter(drop)
