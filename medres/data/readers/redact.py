"""Keeping patient data out of messages and logs while third-party readers run.

Readers quote element values in their exceptions, warnings and log lines (pydicom's validation warnings
quote whole values, which may be a patient's name). medres reports problems in its own words and passes
a reader's message on only through :func:`safe_message` (or :func:`decoder_message`), which show only
what a whitelist allows: the exception's class, structural words, short numbers and the DICOM
standard's own names; every quoted span and every other word becomes ``…``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator

import pydicom

__all__ = ["safe_message", "decoder_message", "quiet_pydicom"]

# quote marks and the mark that closes each; an apostrophe between two letters is not a quote
_QUOTES = {"'": "'", '"': '"', "`": "`", "\u2018": "\u2019", "\u201c": "\u201d", "\u00ab": "\u00bb",
           "\u2039": "\u203a", "\u2019": "\u2019", "\u201d": "\u201d"}
_STRING_PREFIX = re.compile(r"(?<![A-Za-z0-9_])[bBrRuUfF]{1,2}$")  # b'...', rb"...", f'...'
_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]+)?|0x[0-9A-Fa-f]+")
_SHORT_NUMBER = re.compile(r"[-+]?[0-9]{1,6}(\.[0-9]+)?|0x[0-9A-Fa-f]{1,8}")  # no dates, ids or MRNs
_LOWER_WORD = re.compile(r"[a-z]{1,30}(?:[-'][a-z]{1,30})*")
_CAPITAL_WORD = re.compile(r"[A-Z][a-z]{1,30}")
_EDGE = "()[]{}<>,;:.!?="
# words a reader's message may show besides lowercase words: acronyms and format names (the DICOM
# standard's own keywords and names are added from pydicom's dictionaries, see _standard_words)
_VOCABULARY = frozenset({
    "DICOM", "VR", "UID", "UIDs", "SOP", "IOD", "JPEG", "JPEG-LS", "JPEG2000", "J2K", "PNG", "TIFF", "NIfTI",
    "NIFTI", "NIfTI-1", "NIfTI-2", "EOF", "CRC", "OK", "RGB", "RGBA", "YBR", "RLE", "LUT", "HU", "MR", "CT",
    "SEG", "RTSTRUCT", "Errno", "IO", "I/O", "GDCM", "Pillow", "pylibjpeg", "OpenJPEG", "gzip", "GZIP",
    "ZIP", "OS", "ID", "IDs", "UTF-8", "ASCII", "API", "MONOCHROME1", "MONOCHROME2", "ndarray", "dtype",
    "None", "True", "False", "NaN", "N/A"})


def _split_quotes(text: str) -> list[tuple[str, bool]]:
    """``text`` as (segment, quoted) pieces: every span in quotes of any style is one quoted piece
    (backslash escapes inside honoured, nested quotes of another style inside it, an unclosed quote
    running to the end), with its string prefix (``b'...'``)."""
    pieces: list[tuple[str, bool]] = []
    plain: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        apostrophe = (ch in "'\u2019" and 0 < i < n - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
                      and _STRING_PREFIX.search(text[max(0, i - 3): i]) is None)  # can't, O'BRIEN; not b'x'
        if ch not in _QUOTES or apostrophe:
            plain.append(ch)
            i += 1
            continue
        close, j = _QUOTES[ch], i + 1
        while j < n and text[j] != close:
            j += 2 if text[j] == "\\" else 1
        before = "".join(plain)
        prefix = _STRING_PREFIX.search(before)
        if prefix is not None:
            before = before[: prefix.start()]
        if before:
            pieces.append((before, False))
        pieces.append(((prefix.group(0) if prefix else "") + text[i: j + 1], True))
        plain, i = [], j + 1
    if plain:
        pieces.append(("".join(plain), False))
    return pieces


def _allowed_word(core: str, sentence_start: bool) -> bool:
    if _SHORT_NUMBER.fullmatch(core) or _LOWER_WORD.fullmatch(core) or core in _VOCABULARY:
        return True
    if sentence_start and _CAPITAL_WORD.fullmatch(core):
        return True
    return core in _standard()


def _whitelist(text: str, start: bool = True) -> tuple[str, bool]:
    """Unquoted text with every word that is not on the whitelist replaced by ``…``: lowercase words,
    numbers of up to six digits, a capitalised word that starts a sentence, acronyms and format names
    (:data:`_VOCABULARY`) and the DICOM standard's keywords and names. Returns the text and whether the
    text after it starts a sentence."""
    out = []
    for token in re.split(r"(\s+)", text):
        if not token or token.isspace():
            out.append(" " if token else "")
            continue
        core = token.strip(_EDGE)
        if core:
            lead = token[: token.index(core)]
            trail = token[len(lead) + len(core):]
            out.append(token if _allowed_word(core, start) else f"{lead}…{trail}")
        else:
            out.append(token)
            trail = token
        start = trail[-1:] in (".", "!", "?", "]") if trail else False
    return "".join(out), start


def _collapse(text: str) -> str:
    text = " ".join(text.split())
    return re.sub(r"…(?:[ ,;:]*…)+", "…", text)


def _shown(exc: BaseException, keep_quote: Callable[[str], bool] | None) -> str:
    """A message of ``exc`` that shows only whitelisted words and quotes ``keep_quote`` accepts."""
    parts, start = [], True
    for piece, quoted in _split_quotes(str(exc)):
        if quoted:
            parts.append(piece if keep_quote is not None and keep_quote(piece) else "'…'")
            start = False
        else:
            text, start = _whitelist(piece, start)
            parts.append(text)
    return _collapse("".join(parts))


def safe_message(exc: BaseException, limit: int = 160) -> str:
    """A reader's exception as text that can hold no patient data.

    A whitelist, not a filter: the exception's class name, then its message with every quoted span
    (any quote style, escapes honoured) replaced by ``'…'`` and every unquoted word that is not a
    lowercase word, a number of at most six digits, a capitalised word starting a sentence, an acronym
    or a name the DICOM standard defines replaced by ``…`` (``DOE^JOHN``, paths, dates, long ids).
    """
    text = _shown(exc, None)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
_STANDARD_TOKENS: frozenset[str] | None = None


def _standard() -> frozenset[str]:
    """The single words of the standard's names and keywords, and its UIDs (a fixed vocabulary)."""
    global _STANDARD, _STANDARD_TOKENS
    if _STANDARD_TOKENS is None:
        from pydicom.uid import UID_dictionary

        if _STANDARD is None:
            _STANDARD = _standard_words()
        tokens = {t.strip(_EDGE) for w in _STANDARD for t in w.split()}
        _STANDARD_TOKENS = frozenset(t for t in tokens if t) | frozenset(UID_dictionary)
    return _STANDARD_TOKENS


def _standard_quote(quoted: str) -> bool:
    global _STANDARD
    inner = quoted.lstrip("bBrRuUfF")[1:-1].strip()
    if not inner or _NUMBER.fullmatch(inner):
        return True
    if _STANDARD is None:
        _STANDARD = _standard_words()
    return inner in _STANDARD or any(w.startswith(inner + " ") for w in _STANDARD if w[:4] == inner[:4])


def decoder_message(exc: BaseException, limit: int = 400) -> str:
    """A pixel decoder's exception as text, kept readable.

    Decoders (pylibjpeg, Pillow, GDCM, pydicom's pixel handlers) see only the pixel bytes and the pixel
    module, so what they quote is an error code or a name the DICOM standard defines
    (``libjpeg error code '-1038'``, ``'JPEG Extended'``): such quotes are kept. Any other quoted value,
    and any unquoted word off the whitelist, is removed as :func:`safe_message` does.
    """
    text = _shown(exc, _standard_quote)
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
