"""DICOM series folders built from copies of CT_small with edited tags: correct assembly and every fault
docs/reference.md §3 found MONAI's PydicomReader loading silently."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from monai.data import PydicomReader
from monai.transforms import LoadImage

from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.dicom_factory import (
    AXIAL,
    SLICE_STEP,
    ct_small,
    ct_small_hu,
    write_enhanced_multiframe,
    write_series,
)


def _slice_offsets(volume) -> list[float]:
    """Which factory slice k each z holds: (voxels - CT_small HU) / SLICE_STEP."""
    hu = ct_small_hu().T
    return [float(np.mean(volume[:, :, z].numpy() - hu)) / SLICE_STEP for z in range(volume.shape[2])]


def test_series_orders_by_position_not_instance_number(tmp_path):
    # InstanceNumber disagrees with position: slice k=0 says 5, k=4 says 1, ...
    write_series(tmp_path / "s", 5, spacing=2.5, instance_numbers=[5, 3, 1, 2, 4])
    img = load_image(tmp_path / "s")
    assert tuple(img.shape) == (128, 128, 5)
    assert _slice_offsets(img) == [0.0, 1.0, 2.0, 3.0, 4.0]  # position order, in HU
    np.testing.assert_allclose(img.meta["spacing"], [0.661468, 0.661468, 2.5])
    # RAS affine: LPS origin (-158, -179, -75) -> (158, 179, -75); z steps +2.5 mm
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], [158.0, 179.0, -75.0])
    np.testing.assert_allclose(img.affine.numpy()[:3, 2], [0, 0, 2.5])
    # MONAI's PydicomReader (InstanceNumber order) gets this volume wrong: the reason medres checks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "s"))
    assert _slice_offsets(monai) != [0.0, 1.0, 2.0, 3.0, 4.0]


def test_descending_positions_and_sagittal_orientation(tmp_path):
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x column = -x (LPS)
    # slice k at LPS x = 10 + 3k: along the normal -x the order is k = 3, 2, 1, 0
    write_series(tmp_path / "sag", 4, orientation=sagittal, spacing=3.0,
                 positions=[(10.0 + 3.0 * k, 0.0, 0.0) for k in range(4)])
    img = load_image(tmp_path / "sag")
    assert _slice_offsets(img) == [3.0, 2.0, 1.0, 0.0]
    np.testing.assert_allclose(img.affine.numpy()[:3, 2], [3.0, 0.0, 0.0])  # LPS -x = RAS +x, 3 mm steps
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], [-19.0, 0.0, 0.0])  # first voxel: k = 3, x = 19


@pytest.mark.parametrize("depths,reason", [
    ((0, 2.5, 5, 10, 12.5), r"1 slice\(s\) missing"),
    ((0, 2.5, 5, 8, 10.5), "uneven slice spacing"),
    ((0, 2.5, 5, 5, 7.5), "duplicate slice position"),
])
def test_spacing_faults(tmp_path, depths, reason):
    write_series(tmp_path / "s", len(depths), positions=[(0.0, 0.0, z) for z in depths])
    with pytest.raises(DataError, match=reason) as info:
        load_image(tmp_path / "s")
    assert info.value.path == str(tmp_path / "s") and info.value.hint


def test_spacing_within_tolerance_is_accepted(tmp_path):
    write_series(tmp_path / "s", 4, positions=[(0.0, 0.0, z) for z in (0, 2.5004, 4.9998, 7.5003)])
    assert tuple(load_image(tmp_path / "s").shape) == (128, 128, 4)
    # 0.625 mm slices with positions rounded to 0.01 mm (gaps 0.62 / 0.63) are one regular series
    write_series(tmp_path / "r", 5, positions=[(0.0, 0.0, z) for z in (0, 0.62, 1.25, 1.88, 2.5)])
    img = load_image(tmp_path / "r")
    assert img.meta["spacing"][2] == pytest.approx(0.625)


def test_an_extra_slice_is_uneven_not_missing(tmp_path):
    write_series(tmp_path / "s", 6, positions=[(0.0, 0.0, z) for z in (0, 2.5, 5, 6.25, 7.5, 10)])
    with pytest.raises(DataError, match="uneven slice spacing.*1.25 mm between IM0002.dcm and IM0003.dcm, "
                                        "where the series steps 2.50 mm"):
        load_image(tmp_path / "s")


def test_tilted_slice_is_refused(tmp_path):
    tilted = (1.0, 0.0, 0.0, 0.0, 0.984808, 0.173648)  # 10 degrees about x
    write_series(tmp_path / "s", 5, orientations=[AXIAL] * 2 + [tilted] + [AXIAL] * 2)
    with pytest.raises(DataError, match="1 of 5 slices have another orientation.*IM0002.dcm"):
        load_image(tmp_path / "s")


def test_in_plane_drift_is_refused(tmp_path):
    positions = [(0.0, 0.0, 0.0), (0.0, 0.0, 2.5), (0.0, 3.0, 5.0), (0.0, 0.0, 7.5)]
    write_series(tmp_path / "s", 4, positions=positions)
    with pytest.raises(DataError, match="drift within the slice plane by up to 3.00 mm"):
        load_image(tmp_path / "s")


def test_two_series_listed_and_chosen_by_series_uid(tmp_path):
    write_series(tmp_path / "s", 4, series_uid="1.2.826.0.1.3680043.8.498.1", series_number=3,
                 description="AXIAL 2.5")
    write_series(tmp_path / "s", 3, series_uid="1.2.826.0.1.3680043.8.498.2", series_number=7,
                 description="COR MPR", name="B{:03d}.dcm", spacing=1.0)
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s")
    msg = str(info.value)
    assert "2 image series" in msg
    assert "series 1 of 2 (CT, 4 file(s), axial, series_uid ending '3.8.498.1')" in msg
    assert "series 2 of 2 (CT, 3 file(s), axial, series_uid ending '3.8.498.2')" in msg
    assert "AXIAL 2.5" not in msg and "COR MPR" not in msg  # free-text descriptions never shown
    assert "1.2.826.0.1.3680043.8.498" not in msg  # no whole UIDs in messages
    img = load_image(tmp_path / "s", series_uid="1.2.826.0.1.3680043.8.498.2")
    assert tuple(img.shape) == (128, 128, 3) and img.meta["spacing"][2] == pytest.approx(1.0)
    with pytest.raises(DataError, match="no series whose SeriesInstanceUID is or ends with"):
        load_image(tmp_path / "s", series_uid="1.2.3")


def test_stray_files_are_skipped_with_a_log_line(tmp_path, caplog, dicom_files):
    write_series(tmp_path / "s", 3)
    (tmp_path / "s" / "notes.txt").write_text("scanned on the new scanner\n")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (tmp_path / "s" / "rtplan.dcm").write_bytes((dicom_files / "rtplan.dcm").read_bytes())
    (tmp_path / "s" / "DICOMDIR").write_bytes((dicom_files / "dicomdirtests" / "DICOMDIR").read_bytes())
    (tmp_path / "s" / "sub").mkdir()  # sub-folders are not searched
    with caplog.at_level(logging.WARNING, logger="medres"):
        img = load_image(tmp_path / "s")
    assert tuple(img.shape) == (128, 128, 3)
    text = caplog.text
    assert "skipping notes.txt" in text and "skipping .DS_Store" in text
    assert "skipping rtplan.dcm: is a radiotherapy object (RT Plan Storage)" in text
    assert "skipping DICOMDIR: is a DICOMDIR index" in text


def test_folder_without_images_says_what_it_holds(tmp_path, dicom_files):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no DICOM files"):
        load_image(tmp_path / "empty")
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "plan.dcm").write_bytes((dicom_files / "rtplan.dcm").read_bytes())
    with pytest.raises(DataError, match="only non-image objects.*RT Plan"):
        load_image(tmp_path / "rt")


def test_damaged_slice_is_an_error_not_skipped(tmp_path):
    paths = write_series(tmp_path / "s", 3)
    paths[1].write_bytes(paths[1].read_bytes()[:3000])  # header intact, pixel data cut
    with pytest.raises(DataError, match="holds no pixel data .CT Image Storage.; .* truncated") as info:
        load_image(tmp_path / "s")
    assert "IM0001.dcm" in str(info.value)


def test_slices_of_different_size(tmp_path):
    def shrink(k, ds):
        if k == 2:
            ds.Rows, ds.Columns = 64, 64
            ds.PixelData = ds.PixelData[: 64 * 64 * 2]
    write_series(tmp_path / "s", 4, edit=shrink)
    with pytest.raises(DataError, match="slices differ in size"):
        load_image(tmp_path / "s")


def test_per_slice_rescale_is_applied(tmp_path):
    def rescale(k, ds):
        ds.RescaleSlope, ds.RescaleIntercept = (2, -2048) if k == 1 else (1, -1024)
    write_series(tmp_path / "s", 3, edit=rescale)
    img = load_image(tmp_path / "s")
    stored = ct_small().pixel_array.T.astype(np.float64)
    np.testing.assert_array_equal(img[:, :, 1].numpy(), (stored + SLICE_STEP) * 2 - 2048)
    np.testing.assert_array_equal(img[:, :, 2].numpy(), stored + 2 * SLICE_STEP - 1024)


def test_enhanced_multiframe_uses_functional_groups(tmp_path):
    path = write_enhanced_multiframe(tmp_path / "mf.dcm", order=(2, 0, 1), spacing=3.0, slope=2.0,
                                     intercept=-1000.0)
    img = load_image(path)
    assert tuple(img.shape) == (128, 128, 3)
    stored = ct_small().pixel_array.T.astype(np.float64)
    for z in range(3):  # frames re-ordered by their per-frame positions, rescale from shared groups
        np.testing.assert_array_equal(img[:, :, z].numpy(), (stored + z * SLICE_STEP) * 2.0 - 1000.0)
    np.testing.assert_allclose(img.meta["spacing"], [0.75, 0.5, 3.0])  # PixelSpacing is (row, column)
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], [100.0, 120.0, -50.0])


def test_single_file_is_not_a_volume(tmp_path):
    paths = write_series(tmp_path / "s", 3)
    assert tuple(load_image(paths[0]).shape) == (128, 128)
    with pytest.raises(DataError, match="where a 3D image was expected") as info:
        load_image(paths[0], ndim=3)
    assert "series folder" in info.value.hint
    assert tuple(load_image(tmp_path / "s", ndim=3).shape) == (128, 128, 3)
