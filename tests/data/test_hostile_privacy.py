"""Issue 8 item 1 and issue 12 §4: series are described without their free-text fields, the description a
message gives can be passed back as ``series_uid``, and messages point to the right place."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medres.data.readers.io import load_image
from medres.data.readers.redact import decoder_message
from medres.errors import DataError
from tests.data.dicom_factory import write_series

PLANTED = ("DOE", "JOHN", "MRN123456")
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _assert_clean(text: str) -> None:
    for word in PLANTED:
        assert word not in text


def _plant(k: int, ds: pydicom.Dataset) -> None:
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "MRN123456"
    ds.InstitutionName = "DOE JOHN HOSPITAL"


def _three_series(folder):
    """Three series sharing SeriesNumber 1 and the description 'DOE JOHN MRN123456' (as a localizer
    export does); UIDs differ only in their last characters."""
    uids = [f"1.2.826.0.1.3680043.8.498.77{i}" for i in range(3)]
    write_series(folder, 2, series_uid=uids[0], series_number=1, description="DOE JOHN MRN123456",
                 edit=_plant, name="A{:03d}.dcm")
    write_series(folder, 3, series_uid=uids[1], series_number=1, description="DOE JOHN MRN123456",
                 edit=_plant, name="B{:03d}.dcm", orientation=CORONAL)
    write_series(folder, 4, series_uid=uids[2], series_number=1, description="DOE JOHN MRN123456",
                 edit=_plant, name="C{:03d}.dcm")
    return uids


def test_several_series_are_told_apart_without_description_or_uid(tmp_path):
    uids = _three_series(tmp_path / "s")
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s")
    msg = str(info.value)
    _assert_clean(msg)
    assert "holds 3 image series" in msg
    for i in (1, 2, 3):
        assert f"series {i} of 3" in msg
    assert "2 file(s), axial" in msg and "3 file(s), coronal" in msg and "4 file(s), axial" in msg
    for uid in uids:
        assert uid not in msg and f"'{uid[-9:]}'" in msg  # only the ending


def test_the_uid_ending_shown_round_trips_as_series_uid(tmp_path):
    uids = _three_series(tmp_path / "s")
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s")
    msg = str(info.value)
    # take the ending the message gives for the coronal series and pass it back
    part = next(p for p in msg.split(";") if "coronal" in p)
    ending = part.split("series_uid ending '")[1].split("'")[0]
    img = load_image(tmp_path / "s", series_uid=ending)
    assert img.shape[2] == 3
    assert tuple(load_image(tmp_path / "s", series_uid=uids[2]).shape)[2] == 4  # the whole UID too
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s", series_uid="99.99")
    assert "ends with the requested series_uid" in str(info.value)
    _assert_clean(str(info.value))


def test_uid_endings_grow_until_they_are_unique(tmp_path):
    # two UIDs with the same last 8 characters: the ending shown must tell them apart
    a, b = "1.2.3.4.1.55555555", "1.2.3.4.2.55555555"
    write_series(tmp_path / "s", 2, series_uid=a, name="A{:03d}.dcm")
    write_series(tmp_path / "s", 2, series_uid=b, name="B{:03d}.dcm")
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s")
    assert "'1.55555555'" in str(info.value) and "'2.55555555'" in str(info.value)
    # an ambiguous ending chooses nothing
    with pytest.raises(DataError, match="ends with the requested"):
        load_image(tmp_path / "s", series_uid="55555555")
    assert load_image(tmp_path / "s", series_uid="2.55555555").shape[2] == 2


def test_rt_dose_gets_the_dose_hint_not_the_structure_hint():
    with pytest.raises(DataError) as info:
        load_image(get_testdata_file("rtdose.dcm"))
    assert "RT Dose" in info.value.reason
    assert "RT structures" not in info.value.hint and "CT/MR series" in info.value.hint


def test_lossy_jpeg_decoder_message_is_kept():
    # pydicom's 12-bit lossy JPEG, which neither Pillow nor pylibjpeg's libjpeg decode
    with pytest.raises(DataError) as info:
        load_image(get_testdata_file("JPEG-lossy.dcm"))
    reason = info.value.reason
    assert "could not be decoded" in reason
    assert "'-1038'" in reason or "'JPEG Extended'" in reason  # the decoder's own words, not '…'


def test_decoder_message_keeps_codes_and_standard_names_only():
    text = decoder_message(RuntimeError("code '-1038' for 'JPEG Extended' ('Bits Allocated' 12) "
                                        "near 'DOE^JOHN' 'MRN123456X' 'ADA'"))
    assert "'-1038'" in text and "'JPEG Extended'" in text and "'Bits Allocated'" in text
    _assert_clean(text)
    assert "ADA" not in text
