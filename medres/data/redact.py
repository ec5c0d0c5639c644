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

__all__ = ["safe_message", "decoder_message", "quiet_pydicom"]

_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def safe_message(exc: BaseException, limit: int = 160) -> str:
    """A reader's exception as text with quoted values removed (they may hold patient data)."""
    text = _QUOTED.sub("'…'", str(exc)).replace("\n", " ")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]+)?|0x[0-9A-Fa-f]+")


def _standard_words() -> frozenset[str]:
    """Names the DICOM standard defines: transfer syntax / SOP class names, element keywords and names,
    photometric interpretations. A quote made only of these names no patient."""
    from pydicom.datadict import DicomDictionary
    from pydicom.uid import UID_dictionary

    words = {v[0] for v in UID_dictionary.values()}
    words |= {v[2] for v in DicomDictionary.values()} | {v[4] for v in DicomDictionary.values()}
    words |= {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
              "PALETTE COLOR", "pylibjpeg", "pillow", "gdcm", "pyjpegls", "numpy", "rle"}
    return frozenset(w for w in words if w)


_STANDARD: frozenset[str] | None = None


def _standard_quote(quoted: str) -> bool:
    global _STANDARD
    inner = quoted.lstrip("b")[1:-1].strip()
    if not inner or _NUMBER.fullmatch(inner):
        return True
    if _STANDARD is None:
        _STANDARD = _standard_words()
    return inner in _STANDARD or any(w.startswith(inner + " ") for w in _STANDARD if w[:4] == inner[:4])


def decoder_message(exc: BaseException, limit: int = 400) -> str:
    """A pixel decoder's exception as text, kept readable.

    Decoders (pylibjpeg, Pillow, GDCM, pydicom's pixel handlers) see only the pixel bytes and the pixel
    module, so what they quote is an error code or a name the DICOM standard defines
    (``libjpeg error code '-1038'``, ``'JPEG Extended'``): such quotes are kept. Any other quoted value
    is removed as :func:`safe_message` does, should a decoder ever quote something else.
    """
    text = _QUOTED.sub(lambda m: m.group(0) if _standard_quote(m.group(0)) else "'…'", str(exc))
    text = " ".join(text.split())
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
