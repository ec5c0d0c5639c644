"""safe_message / decoder_message show only what a whitelist allows: no fragment of a quoted value
(whatever the quoting and escaping) and no unquoted value such as a DICOM person name."""

from __future__ import annotations

import pytest

from medres.data.readers.redact import decoder_message, safe_message

SECRET = ("DOE", "JOHN", "MRN", "4711", "19700101", "Smith", "BRIEN")


def _clean(text: str) -> None:
    for word in SECRET:
        assert word not in text, text


@pytest.mark.parametrize("message", [
    r"value 'a\'DOE\'b' is invalid",  # escaped single quotes
    r'value "a\"DOE\"b" is invalid',  # escaped double quotes
    "value \"x 'DOE^JOHN' y\" is invalid",  # nested quotes of the other style
    "value 'x \"DOE\" y' is invalid",
    "value 'DOE^JOHN is invalid",  # an unclosed quote runs to the end
    "value b'DOE\\x00JOHN' is invalid",  # a bytes repr
    "value \u2018DOE\u2019 and \u201cJOHN\u201d and \u00abMRN4711\u00bb",  # typographic quotes
    "value `DOE^JOHN` is invalid",
])
def test_quoted_values_leave_no_fragment(message: str) -> None:
    text = safe_message(ValueError(message))
    _clean(text)
    assert text.startswith("ValueError: value '…'")


@pytest.mark.parametrize("message", [
    "element PatientName holds DOE^JOHN",
    "patient O'BRIEN born 19700101 MRN 47114711",
    "File /data/John Smith/scan.nii.gz is not a gzip file",
    "cannot parse Smith",
])
def test_unquoted_values_are_not_shown(message: str) -> None:
    text = safe_message(ValueError(message))
    _clean(text)
    assert "…" in text


def test_structure_and_the_standards_names_stay_readable() -> None:
    assert safe_message(OSError(2, "No such file or directory", "/p/DOE^JOHN/x.dcm")) == \
        "FileNotFoundError: [Errno 2] No such file or directory: '…'"
    pydicom_warning = "Expected explicit VR, but found implicit VR - using implicit VR for reading"
    assert safe_message(ValueError(pydicom_warning)) == f"ValueError: {pydicom_warning}"
    text = safe_message(ValueError("can't decode PixelData (JPEG Baseline (Process 1)) of 512 rows"))
    assert text == "ValueError: can't decode PixelData (JPEG Baseline (Process 1)) of 512 rows"
    assert safe_message(KeyError()) == "KeyError"


def test_decoder_message_keeps_only_standard_quotes_and_whitelisted_words() -> None:
    text = decoder_message(RuntimeError(r"code '-1038' for 'JPEG Extended' near 'DOE\'JOHN' and DOE^JOHN"))
    assert "'-1038'" in text and "'JPEG Extended'" in text
    _clean(text)
