"""Projection radiographs: the grayscale pipeline against pydicom's own LUT functions, spacing, refusals.

Fixtures: pydicom's shipped CRs (``dicomdirtests/77654033/CR*``) and radiographs built here from scratch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medres.data.readers.io import load_image
from medres.data.readers.radiograph import RadiographOptions, display_values, radiograph_spacing
from medres.errors import DataError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REAL_CRS = sorted((TEST_FILES / "dicomdirtests" / "77654033").glob("CR*/*"))


def _output_range(ds: Dataset) -> tuple[float, float]:
    """The VOI output range pydicom's apply_windowing uses (PS3.3 C.11.2.1.2), for scaling to [0, 1]."""
    if ds.get("ModalityLUTSequence"):  # the table's entries set the range (PS3.3 C.11.1.1.1)
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    bits = int(ds.BitsStored)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2 ** bits - 1)
    if "RescaleSlope" in ds:
        lo, hi = sorted((lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                         hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
    return lo, hi


def _reference(ds: Dataset, index: int = 0) -> np.ndarray:
    """pydicom's Modality LUT then VOI LUT, scaled to [0, 1] over the VOI output range, MONOCHROME1
    inverted: [rows, cols]."""
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=index).astype(np.float64)
    if ds.get("VOILUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.VOILUTSequence[index].LUTDescriptor[2]) - 1
    else:
        lo, hi = _output_range(ds)
    v = (out - lo) / (hi - lo)
    return 1.0 - v if ds.PhotometricInterpretation == "MONOCHROME1" else v


@pytest.mark.parametrize("path", REAL_CRS, ids=lambda p: p.parent.name)
def test_real_crs_read_with_pydicoms_grey_levels_and_physical_size(path):
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1" and "PixelSpacing" not in ds
    np.testing.assert_allclose(np.asarray(img).T, _reference(ds), atol=1e-6)
    # ImagerPixelSpacing 0.1 mm: 16 pixels = 1.6 mm (1.0 mm per pixel would make it 10x too large)
    assert np.allclose(img.meta["spacing"], [0.1, 0.1])
    assert np.allclose(np.abs(np.diag(np.asarray(img.affine))[:2]) * np.asarray(img.shape), [1.6, 1.6])
    assert img.meta["spacing_source"] == "ImagerPixelSpacing"
    assert img.meta["ViewPosition"] == str(ds.ViewPosition)
    assert img.meta["PhotometricInterpretation"] == "MONOCHROME2"  # inverted on reading
    assert "PatientName" not in img.meta and "PatientID" not in img.meta


def test_a_folder_holding_one_radiograph_is_that_image():
    path = REAL_CRS[0]
    np.testing.assert_array_equal(np.asarray(load_image(path.parent)), np.asarray(load_image(path)))


def make_radiograph(**tags: object) -> Dataset:
    """A 24x32 DX radiograph (MONOCHROME2, 12 bits in 16, a ramp of stored values), tags overridden."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientOrientation = "DX", "PA", ["L", "F"]
    ds.PatientName = "SECRET^NAME"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = 24, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.25]
    pixels = np.linspace(0, 4095, 24 * 32).reshape(24, 32).astype("<u2")
    ds.PixelData = pixels.tobytes()
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def _save(ds: Dataset, tmp_path: Path, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _lut_item(n: int = 4096, bits: int = 16, first: int = 0, data: list[int] | None = None,
              explanation: str = "") -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [n, first, bits])
    curve = np.rint(np.sqrt(np.arange(n) / (n - 1)) * (2 ** bits - 1))
    table = data if data is not None else [int(v) for v in curve]
    item.add_new("LUTData", "US", table)
    if explanation:
        item.LUTExplanation = explanation
    return item


CASES = {
    "linear": dict(WindowCenter=1800, WindowWidth=2500),
    "linear_exact": dict(WindowCenter=1800, WindowWidth=2500, VOILUTFunction="LINEAR_EXACT"),
    "sigmoid": dict(WindowCenter=2100, WindowWidth=900, VOILUTFunction="SIGMOID"),
    "rescaled": dict(RescaleSlope=0.5, RescaleIntercept=-100, WindowCenter=800, WindowWidth=1200),
    "monochrome1": dict(PhotometricInterpretation="MONOCHROME1", WindowCenter=2000, WindowWidth=3000),
    "signed": dict(PixelRepresentation=1, WindowCenter=0, WindowWidth=2000),
    "voi_lut_sequence": dict(VOILUTSequence=Sequence([_lut_item()])),
    "modality_lut_sequence": dict(ModalityLUTSequence=Sequence([_lut_item(bits=16)]), WindowCenter=30000,
                                  WindowWidth=40000),
    "monochrome1_voi_lut": dict(PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE",
                                VOILUTSequence=Sequence([_lut_item()])),
}


@pytest.mark.parametrize("case", CASES)
def test_grayscale_pipeline_matches_pydicom(tmp_path, case):
    ds = make_radiograph(**copy.deepcopy(CASES[case]))
    if case == "signed":  # stored values -2048..2047
        ds.PixelData = (np.linspace(-2048, 2047, 24 * 32).reshape(24, 32).astype("<i2")).tobytes()
    path = _save(ds, tmp_path)
    ds = pydicom.dcmread(path)
    img = load_image(path)
    np.testing.assert_allclose(np.asarray(img).T, _reference(ds), atol=1e-6)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_signed_voi_lut_whose_first_mapped_value_is_stored_as_us(tmp_path):
    """Signed input (-2048..2047) and a VOI LUT starting at -2048, its descriptor written as US (63488),
    as files often carry it: medres reads -2048; the reference is pydicom on the same file with the
    descriptor's first value given as the signed number it means."""
    ds = make_radiograph(PixelRepresentation=1, VOILUTSequence=Sequence([_lut_item(first=63488)]))
    ds.PixelData = (np.linspace(-2048, 2047, 24 * 32).reshape(24, 32).astype("<i2")).tobytes()
    path = _save(ds, tmp_path)
    ref = pydicom.dcmread(path)
    ref.VOILUTSequence[0].LUTDescriptor = [4096, -2048, 16]
    got = np.asarray(load_image(path)).T
    np.testing.assert_allclose(got, _reference(ref), atol=1e-6)
    assert got.min() == 0.0 and got.max() == 1.0  # the whole table used, not its first entry everywhere


def test_8bit_lut_longer_than_256_entries_is_looked_up_in_full(tmp_path):
    """An 8-bit VOI LUT may have more than 256 entries; pydicom 3.0's apply_voi indexes it with a uint8
    array (indices wrap around past 255), so this case is checked against a plain numpy lookup."""
    item = _lut_item(bits=8, first=100, n=3000)
    path = _save(make_radiograph(VOILUTSequence=Sequence([item])), tmp_path)
    ds = pydicom.dcmread(path)
    table = np.asarray(item.LUTData, dtype=np.float64)
    expected = table[np.clip(ds.pixel_array.astype(np.int64) - 100, 0, 2999)] / 255.0
    np.testing.assert_allclose(np.asarray(load_image(path)).T, expected, atol=1e-6)


def test_several_windows_first_by_default_or_the_named_one(tmp_path):
    ds = make_radiograph(WindowCenter=[1500, 2500], WindowWidth=[2000, 800],
                         WindowCenterWidthExplanation=["SOFT", "BONE"])
    path = _save(ds, tmp_path)
    ds = pydicom.dcmread(path)
    first = load_image(path)
    np.testing.assert_allclose(np.asarray(first).T, _reference(ds, 0), atol=1e-6)
    for choice in (1, "bone"):
        chosen = load_image(path, radiograph=RadiographOptions(voi=choice))
        np.testing.assert_allclose(np.asarray(chosen).T, _reference(ds, 1), atol=1e-6)
        assert "window 2 of 2" in chosen.meta["voi"]
    with pytest.raises(DataError, match="no window named 'LUNG'"):
        load_image(path, radiograph=RadiographOptions(voi="LUNG"))


def test_presentation_lut_shape_inverse_matches_pydicom_up_to_its_offset(tmp_path):
    """pydicom inverts with the image's own maximum (``arr.max() - arr``); medres with the output range's,
    so the two differ by one constant and agree where the image reaches the top of the range."""
    ds = make_radiograph(WindowCenter=2000, WindowWidth=3000, PresentationLUTShape="INVERSE")
    path = _save(ds, tmp_path)
    ds = pydicom.dcmread(path)
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    theirs = apply_presentation_lut(voi, ds)
    lo, hi = _output_range(ds)
    ours = np.asarray(load_image(path)).T * (hi - lo) + lo
    np.testing.assert_allclose(ours - theirs, (hi - voi.max()) + lo, atol=1e-3)


def test_bits_above_bits_stored_are_masked(tmp_path):
    ds = make_radiograph(WindowCenter=2000, WindowWidth=3000)
    clean = np.frombuffer(ds.PixelData, dtype="<u2").reshape(24, 32)
    junk = clean | (np.arange(clean.size).reshape(clean.shape) % 2 << 14).astype("<u2")  # overlay-like bit 14
    ref_path = _save(ds, tmp_path, "clean.dcm")
    ds.PixelData = junk.astype("<u2").tobytes()
    path = _save(ds, tmp_path, "junk.dcm")
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(load_image(ref_path)))


def test_spacing_sources():
    def spacing(**tags):
        return radiograph_spacing(make_radiograph(**tags))

    assert spacing(PixelSpacing=[0.15, 0.15]) == ((0.15, 0.15), "PixelSpacing")
    assert spacing() == ((0.2, 0.25), "ImagerPixelSpacing")
    (row, col), source = spacing(EstimatedRadiographicMagnificationFactor=1.25)
    assert (row, col) == pytest.approx((0.16, 0.2)) and "Magnification" in source
    assert spacing(ImagerPixelSpacing=None) == (None, "unknown")


def test_meta_keeps_view_and_orientation_but_no_patient_fields(tmp_path):
    ds = make_radiograph(ImageLaterality="U", WindowCenter=2000, WindowWidth=3000)
    img = load_image(_save(ds, tmp_path))
    assert img.meta["ViewPosition"] == "PA" and img.meta["PatientOrientation"] == "L\\F"
    assert img.meta["ImageLaterality"] == "U" and img.meta["spacing_source"] == "ImagerPixelSpacing"
    assert np.allclose(img.meta["spacing"], [0.25, 0.2])  # [X = along a row, Y = down the columns]
    assert "SECRET" not in repr(dict(img.meta))


def test_for_processing_is_refused_unless_allowed(tmp_path):
    path = _save(make_radiograph(PresentationIntentType="FOR PROCESSING"), tmp_path)
    with pytest.raises(DataError, match="FOR PROCESSING") as info:
        load_image(path)
    assert "allow_for_processing" in info.value.hint
    assert load_image(path, radiograph=RadiographOptions(allow_for_processing=True)).shape == (32, 24)


def test_views_rule_refuses_a_lateral(tmp_path):
    path = _save(make_radiograph(ViewPosition="LATERAL"), tmp_path)
    with pytest.raises(DataError, match="LATERAL view"):
        load_image(path, radiograph=RadiographOptions(views=("PA", "AP")))
    assert load_image(path).meta["ViewPosition"] == "LATERAL"


# --- bad input: each a DataError saying what is wrong and what to do ---------------------------------

BAD = {
    "voi_lut_without_data": (dict(VOILUTSequence=Sequence([Dataset()])), "malformed VOI LUT Sequence"),
    "voi_lut_wrong_length": (dict(VOILUTSequence=Sequence([_lut_item(n=4096, data=[0, 1, 2])])),
                             "promises 4096 entries"),
    "bits_stored_too_large": (dict(BitsStored=20, HighBit=19), "BitsStored is 20 but BitsAllocated is 16"),
    "monochrome1_lut_descriptor_lies": (
        dict(PhotometricInterpretation="MONOCHROME1",
             VOILUTSequence=Sequence([_lut_item(n=16, bits=8, data=[1000] * 16)])),
        "more than its LUTDescriptor's 8 bits"),
    "linear_window_too_narrow": (dict(WindowCenter=100, WindowWidth=0.5), "LINEAR window needs"),
    "unknown_voi_function": (dict(WindowCenter=100, WindowWidth=50, VOILUTFunction="CUBIC"),
                             "VOILUTFunction 'CUBIC'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_radiographs_are_data_errors(tmp_path, case):
    tags, message = BAD[case]
    path = _save(make_radiograph(**copy.deepcopy(tags)), tmp_path)
    with pytest.raises(DataError, match=message) as info:
        load_image(path)
    assert info.value.path is not None and Path(info.value.path).name == "x.dcm" and info.value.hint


def test_rgb_secondary_capture_is_refused_where_grayscale_is_expected():
    ds = pydicom.dcmread(TEST_FILES / "SC_rgb_small_odd.dcm")
    ds.Modality = "DX"
    with pytest.raises(DataError, match="colour image .* where a grayscale radiograph is expected"):
        display_values(ds, ds.pixel_array, "sc.dcm")


def test_free_text_in_a_code_string_field_never_reaches_the_metadata(tmp_path):
    path = _save(make_radiograph(ViewPosition="DOE^JOHN", ImageLaterality="a note about the patient"),
                 tmp_path)
    meta = load_image(path).meta
    assert meta["ViewPosition"] == "" and meta["ImageLaterality"] == ""
    assert meta["PatientOrientation"] == "L\\F"  # a conformant CS is kept


def test_index_gives_each_radiograph_of_a_series_its_own_row(tmp_path, monkeypatch):
    """Two radiographs in one series (a PA and one whose ViewPosition holds a name) are two cases; the
    name reaches neither index.csv nor the manifest."""
    from medres.config import DataConfig
    from medres.data.index import index_dicom

    monkeypatch.setenv("MEDRES_PROJECT_KEY", "radiograph-index-key-0123456789")
    export = tmp_path / "export"
    export.mkdir()
    for name, view in (("a.dcm", "PA"), ("b.dcm", "DOE^JOHN")):
        ds = make_radiograph(ViewPosition=view, PatientID="MRN123", StudyInstanceUID="1.2.3.4",
                             SeriesInstanceUID="1.2.3.4.5", ImageType=["DERIVED", "PRIMARY"])
        _save(ds, export, name)
    rules = DataConfig(modality="XR", spatial_dims=2, orientation=None).index
    index_dicom(export, tmp_path / "out", rules=rules)
    rows = (tmp_path / "out" / "index.csv").read_text()
    manifest = (tmp_path / "out" / "manifest.csv").read_text()
    assert "DOE" not in rows and "JOHN" not in rows and "DOE" not in manifest and "MRN123" not in manifest
    lines = [line.split(",") for line in manifest.splitlines()]
    head = lines[0]
    assert [r[head.index("view")] for r in lines[1:]] == ["PA", ""]  # a view not known is kept
    assert [r[head.index("case_id")][-3:] for r in lines[1:]] == ["-i1", "-i2"]
    assert "image 1/2 of a series with radiographs" in rows
    for r in lines[1:]:
        assert tuple(load_image(tmp_path / "out" / r[head.index("image")]).shape) == (32, 24)
