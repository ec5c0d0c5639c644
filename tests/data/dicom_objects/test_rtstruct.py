"""Reading an RTSTRUCT costs memory and time by its contours' points, never points x slices, and a
structure set beyond the point and contour bounds is refused before its contours are parsed."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from medres.data.dicom_objects import rtstruct
from medres.data.dicom_objects.annotations import annotation_to_mask, write_rtstruct
from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.annotation_factory import labelled_mask, write_source

LABELS = ["background", "nodule", "vessel"]
SLICES = 40


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A 40-slice source series, a label mask on it and the RTSTRUCT medres writes from the mask."""
    tmp = tmp_path_factory.mktemp("rt")
    folder = tmp / "series"
    paths = write_source(folder, SLICES)
    image = load_image(folder)
    mask = labelled_mask(tuple(image.shape))
    rt = write_rtstruct(mask, folder, LABELS, tmp / "rt.dcm")
    return folder, paths, mask, rt


def _densify(src, dst, per_edge: int) -> int:
    """Rewrite the longest contour with ``per_edge`` collinear points per edge (the same polygon); returns
    its new number of points."""
    ds = pydicom.dcmread(src)
    contour = max((c for item in ds.ROIContourSequence for c in item.ContourSequence),
                  key=lambda c: len(c.ContourData))
    pts = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
    nxt = np.roll(pts, -1, axis=0)
    t = np.arange(per_edge) / per_edge
    dense = (pts[:, None, :] + (nxt - pts)[:, None, :] * t[None, :, None]).reshape(-1, 3)
    contour.ContourData = [f"{v:.4f}" for v in dense.ravel()]
    contour.NumberOfContourPoints = most = len(dense)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # a value over 64 KiB needs implicit VR
    ds.save_as(dst, enforce_file_format=True)
    return most


def _convert(rt, paths, out):
    tracemalloc.start()
    try:
        result = annotation_to_mask(rt, paths, LABELS, None, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def test_dense_contours_cost_their_points_not_points_times_slices(written, tmp_path):
    folder, paths, mask, rt = written
    dense = tmp_path / "dense.dcm"
    most = _densify(rt, dense, 400)
    assert most >= 20_000
    sparse_result, sparse_peak = _convert(rt, paths, tmp_path / "sparse.nii.gz")
    start = time.perf_counter()
    dense_result, dense_peak = _convert(dense, paths, tmp_path / "dense.nii.gz")
    elapsed = time.perf_counter() - start
    # the same polygons give the same mask: the one the structure set was written from
    np.testing.assert_array_equal(load_image(dense_result.path).numpy().astype(np.uint8), mask)
    np.testing.assert_array_equal(load_image(sparse_result.path).numpy().astype(np.uint8), mask)
    # what the dense file adds is about its own bytes (pydicom holds them), far below one points x slices
    # float64 array for the largest contour alone (or pydicom's ~100-byte DS object per number)
    points_by_slices = most * SLICES * 8
    growth = dense_peak - sparse_peak
    assert growth < min(points_by_slices / 2, 4 * dense.stat().st_size), (growth, points_by_slices)
    assert elapsed < 60


def test_a_contour_over_the_point_bound_is_refused_before_parsing(written, tmp_path, monkeypatch):
    folder, paths, mask, rt = written
    dense = tmp_path / "dense.dcm"
    most = _densify(rt, dense, 50)
    monkeypatch.setattr(rtstruct, "MAX_CONTOUR_POINTS", most - 1)
    with pytest.raises(DataError) as info:
        annotation_to_mask(dense, paths, LABELS, None, tmp_path / "m.nii.gz")
    assert f"a contour of {most} points, more than the {most - 1}" in info.value.reason
    assert "refused before reading it" in info.value.reason
    assert not (tmp_path / "m.nii.gz").exists()


def test_the_total_points_and_contours_are_bounded(written, tmp_path, monkeypatch):
    folder, paths, mask, rt = written
    ds = pydicom.dcmread(rt)
    total = sum(len(c.ContourData) // 3 for item in ds.ROIContourSequence for c in item.ContourSequence)
    contours = sum(len(item.ContourSequence) for item in ds.ROIContourSequence)
    monkeypatch.setattr(rtstruct, "MAX_STRUCTURE_POINTS", total - 1)
    with pytest.raises(DataError, match=f"more than {rtstruct.MAX_STRUCTURE_CONTOURS} contours or "
                                        f"{total - 1} points"):
        annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")
    monkeypatch.setattr(rtstruct, "MAX_STRUCTURE_POINTS", total)
    monkeypatch.setattr(rtstruct, "MAX_STRUCTURE_CONTOURS", contours - 1)
    with pytest.raises(DataError, match="contours or"):
        annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")
    monkeypatch.setattr(rtstruct, "MAX_STRUCTURE_CONTOURS", contours)
    annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")  # exactly at the bounds: read


def test_only_mapped_rois_count(written, tmp_path, monkeypatch):
    folder, paths, mask, rt = written
    ds = pydicom.dcmread(rt)
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    vessel = sum(len(c.ContourData) // 3 for item in ds.ROIContourSequence for c in item.ContourSequence
                 if names[item.ReferencedROINumber] == "vessel")
    monkeypatch.setattr(rtstruct, "MAX_STRUCTURE_POINTS", vessel)
    result = annotation_to_mask(rt, paths, LABELS, {"nodule": ""}, tmp_path / "m.nii.gz")
    assert result.labels_found == ["vessel"]


def test_fill_matches_the_even_odd_rule_on_a_known_shape():
    # a square ring (outer 2..12, inner 5..9 reversed): centres strictly between the two are inside
    outer = np.array([[2, 2], [12, 2], [12, 12], [2, 12]], dtype=float)
    inner = np.array([[5, 5], [5, 9], [9, 9], [9, 5]], dtype=float)
    got = rtstruct.rasterise_contours([outer, inner], (16, 16), atol_mm=0.01)
    xs, ys = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    in_outer = (xs >= 2) & (xs <= 12) & (ys >= 2) & (ys <= 12)
    in_inner = (xs > 5) & (xs < 9) & (ys > 5) & (ys < 9)
    np.testing.assert_array_equal(got, in_outer & ~in_inner)
