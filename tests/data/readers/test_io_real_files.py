"""Every real file docs/reference.md §3 lists (pydicom's and nibabel's shipped test data) loads correctly or
raises a DataError whose reason is the true one. Values are checked against pydicom/nibabel/MONAI."""

from __future__ import annotations

import shutil
import warnings
from importlib.util import find_spec

import numpy as np
import pydicom
import pytest
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage

from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.dicom_factory import ct_small_hu


def _monai(path, reader):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LoadImage(reader=reader, image_only=True)(str(path))


def test_ct_small_in_hounsfield_units_with_monais_geometry(dicom_files):
    img = load_image(dicom_files / "CT_small.dcm")
    assert tuple(img.shape) == (128, 128)  # [X, Y]: X runs along a row (the column index)
    hu = ct_small_hu()  # pydicom's pixel_array * RescaleSlope + RescaleIntercept, [rows, cols]
    np.testing.assert_array_equal(img.numpy(), hu.T)
    assert hu.min() < -500 < 0 < hu.max()  # intercept -1024 really applied: air/tissue in HU
    np.testing.assert_allclose(img.meta["spacing"], [0.661468, 0.661468])
    ref = _monai(dicom_files / "CT_small.dcm", PydicomReader())
    np.testing.assert_allclose(img.affine.numpy(), ref.affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(img.numpy(), ref.numpy())
    assert img.meta["Modality"] == "CT" and img.meta["space"] == "RAS"


TWINS = ["MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
         "MR_small_padded.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]


@pytest.mark.parametrize("name", TWINS)
def test_mr_small_twins_give_equal_pixels(dicom_files, name):
    ref = load_image(dicom_files / "MR_small.dcm")
    twin = load_image(dicom_files / name)
    assert tuple(ref.shape) == (64, 64)
    np.testing.assert_array_equal(twin.numpy(), ref.numpy())
    np.testing.assert_allclose(twin.affine.numpy(), ref.affine.numpy())
    expected = pydicom.dcmread(dicom_files / "MR_small.dcm").pixel_array.T
    np.testing.assert_array_equal(ref.numpy(), expected)


# nibabel's 0.dcm/1.dcm (the oblique cases) are Siemens MOSAIC files, which medres now refuses
# (tests/data/readers/test_hostile_realfiles.py); an oblique non-mosaic file is still to be found for this
# test
@pytest.mark.parametrize("name", ["MR_small.dcm", "examples_overlay.dcm"])
def test_geometry_matches_monais_pydicom_reader(dicom_files, nibabel_files, name):
    path = dicom_files / name
    img, ref = load_image(path), _monai(path, PydicomReader())
    assert img.shape == ref.shape
    # in-plane axes and origin as MONAI; the 3rd column of a single frame is the true slice normal
    # (MONAI puts e_z there even for oblique slices)
    np.testing.assert_allclose(img.affine.numpy()[:, [0, 1, 3]], ref.affine.numpy()[:, [0, 1, 3]], atol=1e-5)
    ds = pydicom.dcmread(path)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    normal_ras = np.cross(iop[:3], iop[3:]) * [-1, -1, 1]
    np.testing.assert_allclose(img.affine.numpy()[:3, 2], normal_ras, atol=1e-6)
    np.testing.assert_allclose(img.meta["spacing"], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])],
                               rtol=1e-5)


@pytest.mark.parametrize("name", ["anatomical.nii", "functional.nii", "example4d.nii.gz",
                                  "example_nifti2.nii.gz", "standard.nii.gz"])
def test_nifti_matches_monais_nibabel_reader(nibabel_files, name):
    img, ref = load_image(nibabel_files / name), _monai(nibabel_files / name, NibabelReader())
    assert img.shape == ref.shape
    np.testing.assert_array_equal(img.numpy(), ref.numpy())
    np.testing.assert_allclose(img.affine.numpy(), ref.affine.numpy())
    assert img.meta["original_channel_dim"] == ref.meta["original_channel_dim"] or (
        np.isnan(img.meta["original_channel_dim"]) and np.isnan(ref.meta["original_channel_dim"]))
    import nibabel as nib
    zooms = nib.load(nibabel_files / name).header.get_zooms()[:3]
    np.testing.assert_allclose(img.meta["spacing"], zooms, rtol=1e-5)


def test_colour_and_palette_files_keep_colour_last(dicom_files):
    rgb = load_image(dicom_files / "SC_rgb_jpeg.dcm")
    assert tuple(rgb.shape) == (256, 256, 3) and rgb.meta["original_channel_dim"] == -1
    ds = pydicom.dcmread(dicom_files / "SC_rgb_jpeg.dcm")
    np.testing.assert_array_equal(rgb.numpy(), np.swapaxes(ds.pixel_array, 0, 1))
    palette = load_image(dicom_files / "examples_palette.dcm")
    assert tuple(palette.shape) == (800, 350, 3)  # palette indices mapped through the colour LUT
    ds = pydicom.dcmread(dicom_files / "examples_palette.dcm")
    lut = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(palette.numpy(), np.swapaxes(lut, 0, 1))


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "liver_1frame.dcm"])
def test_nm_and_compressed_secondary_captures(dicom_files, name):
    """JPEG 2000 (decoded by Pillow's openjpeg) and 12-bit JPEG Extended (pylibjpeg) load; the SEG not."""
    path = dicom_files / name
    if name.startswith("liver"):
        with pytest.raises(DataError, match="Segmentation Storage"):
            load_image(path)
        return
    img = load_image(path)
    ds = pydicom.dcmread(path)
    assert tuple(img.shape) == (256, 1024) and img.meta["Modality"] == "NM"
    np.testing.assert_array_equal(img.numpy(), ds.pixel_array.T)
    np.testing.assert_allclose(img.meta["spacing"], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])


REFUSED = {
    "MR_truncated.dcm": "pixel data truncated",
    "no_meta.dcm": "not a DICOM file",
    "rtplan.dcm": "RT Plan Storage",
    "rtstruct.dcm": "RT Structure Set Storage",  # no file meta header: read anyway, refused by SOP class
    "rtdose.dcm": "RT Dose Storage",
    "badVR.dcm": "RT Dose Storage",  # refused by SOP class before its bad value matters
    "liver_1frame.dcm": "Segmentation Storage",
    "test-SR.dcm": "structured report",
    "waveform_ecg.dcm": "waveform",
    "JPEG-lossy.dcm": "could not be decoded (JPEG Extended",  # pylibjpeg's libjpeg rejects this file
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
}


@pytest.mark.parametrize("name,reason", sorted(REFUSED.items()))
def test_refused_dicom_files_name_the_true_reason(dicom_files, name, reason):
    with pytest.raises(DataError) as info:
        load_image(dicom_files / name)
    assert reason in info.value.reason
    assert info.value.path == str(dicom_files / name)
    assert info.value.hint


def test_dicomdir_is_refused_with_what_to_do(dicom_files):
    with pytest.raises(DataError, match="is a DICOMDIR index") as info:
        load_image(dicom_files / "dicomdirtests" / "DICOMDIR")
    assert "series folder" in info.value.hint


def test_analyze_header_is_refused_as_a_format(nibabel_files):
    with pytest.raises(DataError, match="Analyze"):
        load_image(nibabel_files / "analyze.hdr")


def test_missing_decoder_is_named(dicom_files, tmp_path):
    """HTJ2K needs pylibjpeg-openjpeg (not in the dev extra): a DataError names it; with it, it loads."""
    path = tmp_path / "htj2k.dcm"
    shutil.copy(dicom_files / "MR_small_jp2klossless.dcm", path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless  # a J2K codestream is valid HTJ2K
    ds.save_as(path)
    if find_spec("openjpeg") is None:
        with pytest.raises(DataError, match="no decoder for it is installed") as info:
            load_image(path)
        assert "pylibjpeg-openjpeg" in info.value.reason and "pylibjpeg-openjpeg" in info.value.hint
    else:
        np.testing.assert_array_equal(load_image(path).numpy(), load_image(dicom_files / "MR_small.dcm"))


def test_transfer_syntax_without_any_decoder(dicom_files, tmp_path):
    path = tmp_path / "mpeg.dcm"
    ds = pydicom.dcmread(dicom_files / "MR_small_jp2klossless.dcm")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.save_as(path)
    with pytest.raises(DataError, match="MPEG2 .* no installed DICOM decoder supports"):
        load_image(path)


def test_png_and_jpeg_like_monais_pil_reader(tmp_path):
    from monai.data import PILReader
    from PIL import Image

    gray = (np.arange(7 * 12).reshape(7, 12) * 3 % 256).astype(np.uint8)  # [H, W]
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray, 255 - gray, gray // 2], -1)).save(tmp_path / "c.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "c.jpg", quality=95)
    for name, shape in [("g.png", (12, 7)), ("c.png", (12, 7, 3)), ("c.jpg", (12, 7, 3))]:
        img, ref = load_image(tmp_path / name), _monai(tmp_path / name, PILReader())
        assert tuple(img.shape) == shape
        np.testing.assert_array_equal(img.numpy(), ref.numpy())
    np.testing.assert_array_equal(load_image(tmp_path / "g.png").numpy(), gray.T)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a readable PNG/JPEG"):
        load_image(tmp_path / "bad.png")


def test_monochrome1_is_inverted_to_monochrome2(dicom_files, tmp_path):
    # MONOCHROME1 shows the lowest stored value as white; medres mirrors the stored values within their
    # range before the rescale, so higher means brighter for every greyscale scan.
    ds = pydicom.dcmread(dicom_files / "CT_small.dcm")
    stored = ds.pixel_array.astype(np.int64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    img = load_image(tmp_path / "mono1.dcm")
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    expected = ((lo + hi) - stored) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.numpy(), expected.T)
    assert img.meta["PhotometricInterpretation"] == "MONOCHROME2"
    normal = load_image(dicom_files / "CT_small.dcm").numpy()
    assert np.corrcoef(img.numpy().ravel(), normal.ravel())[0, 1] < -0.99  # really inverted
