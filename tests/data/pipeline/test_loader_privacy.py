"""No patient data leaves the loader: CT_small's patient name, id, dates and institution appear in no
metadata, no pickled tensor (what a cache writes), no log line, no warning and no error message."""

from __future__ import annotations

import io
import logging
import pickle
import warnings

import pydicom
import pytest
import torch
from monai.transforms import LoadImaged

from medres.data.readers.io import ACQUISITION_FIELDS, MedresReader, load_image
from medres.errors import DataError
from tests.data.dicom_factory import CT_SMALL, write_series


def _secrets() -> list[str]:
    ds = pydicom.dcmread(CT_SMALL)
    values = [str(ds.PatientName), str(ds.PatientID), str(ds.StudyDate), str(ds.InstitutionName)]
    assert values == ["CompressedSamples^CT1", "1CT1", "20040119", "JFK IMAGING CENTER"]  # the fixture
    return values + ["CompressedSamples", "JFK IMAGING"]


SECRETS = _secrets()


def _assert_clean(text: str, what: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {what}"


def _assert_tensor_clean(img) -> None:
    _assert_clean(repr(dict(img.meta)), "metadata")
    buf = io.BytesIO()
    torch.save(img, buf)
    _assert_clean(buf.getvalue().decode("latin-1"), "torch.save of the tensor")
    _assert_clean(pickle.dumps(img).decode("latin-1"), "pickle of the tensor")
    extra = set(img.meta) - set(ACQUISITION_FIELDS) - {
        "affine", "original_affine", "spatial_shape", "original_channel_dim", "spacing", "space",
        "filename_or_obj"}
    assert not extra, f"unexpected metadata keys {extra}"


def _broken_copies(tmp_path) -> list:
    data = CT_SMALL.read_bytes()
    paths = []
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:20_000])
    paths.append(truncated)
    # SOPClassUID's length made 538: its value then swallows the patient name (pydicom's validation
    # warning would quote it)
    tag = data.index(b"\x08\x00\x16\x00UI")
    swallow = bytearray(data)
    swallow[tag + 6:tag + 8] = (538).to_bytes(2, "little")
    paths.append(tmp_path / "swallow.dcm")
    paths[-1].write_bytes(bytes(swallow))
    # the patient name's length made odd and huge
    name = data.index(b"\x10\x00\x10\x00PN")
    long_name = bytearray(data)
    long_name[name + 6:name + 8] = (0xFFF1).to_bytes(2, "little")
    paths.append(tmp_path / "long_name.dcm")
    paths[-1].write_bytes(bytes(long_name))
    write_series(tmp_path / "gap", 3, positions=[(0, 0, 0), (0, 0, 2.5), (0, 0, 7.5)])
    paths.append(tmp_path / "gap")
    write_series(tmp_path / "two", 2)
    write_series(tmp_path / "two", 2, name="B{:02d}.dcm", series_number=9)
    paths.append(tmp_path / "two")
    return paths


def test_no_patient_data_in_metadata_logs_warnings_or_errors(tmp_path, caplog):
    write_series(tmp_path / "series", 3)  # copies keep CT_small's patient fields
    (tmp_path / "series" / "notes.txt").write_text("stray file")
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in [CT_SMALL, tmp_path / "series"]:
            img = load_image(path)
            _assert_tensor_clean(img)
            assert img.meta["Modality"] == "CT" and img.meta["Manufacturer"] == "GE MEDICAL SYSTEMS"
            d = LoadImaged(keys="image", reader=MedresReader())({"image": str(path)})
            _assert_tensor_clean(d["image"])
        messages = []
        for path in _broken_copies(tmp_path):
            with pytest.raises(DataError) as info:
                load_image(path)
            messages.append(f"{info.value!s} {info.value.reason} {info.value.hint}")
            with pytest.raises(DataError) as info:
                LoadImaged(keys="image", reader=MedresReader())({"image": str(path)})
            messages.append(str(info.value))
    _assert_clean("\n".join(messages), "error messages")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), "log records")
    _assert_clean(caplog.text, "log text")
    _assert_clean("\n".join(str(w.message) for w in caught), "warnings")
    assert any("skipping notes.txt" in r.getMessage() for r in caplog.records)  # logging did run
