"""medres.data.index attaches every SEG class the SEG reader reads: a Label Map SEG (built with highdicom
over a small CT series) becomes the series' mask, equal to ``annotation_to_mask``'s conversion."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from medres.config import IndexConfig
from medres.data.dicom_objects.annotations import annotation_to_mask
from medres.data.dicom_objects.seg_read import SEG_SOP_CLASSES
from medres.data.index import index_dicom
from medres.data.index.headers import ANNOTATION_CLASSES, read_header
from tests.data.annotation_factory import reference_order
from tests.data.dicom_factory import write_series

LABEL_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
LABELS = {0: "background", 1: "nodule", 2: "vessel"}


@pytest.fixture(autouse=True)
def _project_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "index-annotations-test-key-0123456789")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _label_map_export(root: Path) -> tuple[list[Path], Path, np.ndarray]:
    """A 6-slice axial CT series and a Label Map SEG of two segments drawn on it (in another folder)."""
    frame_uid = pydicom.uid.generate_uid()
    paths = write_series(root / "ct", 6, spacing=2.0,
                         edit=lambda k, ds: setattr(ds, "FrameOfReferenceUID", frame_uid))
    frames = np.zeros((6, 128, 128), np.uint8)  # [slice, rows, cols] in slice order
    frames[1:3, 10:40, 20:50] = 1
    frames[2:5, 30:60, 40:70] = 2
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, name in enumerate(["Nodule", "Vessel"])]
    seg = hd.seg.Segmentation(
        source_images=reference_order(paths), pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    (root / "seg").mkdir()
    seg_path = root / "seg" / "labelmap.dcm"
    seg.save_as(seg_path)
    return paths, seg_path, frames


def test_the_index_attaches_every_seg_class_the_reader_reads() -> None:
    assert LABEL_MAP_SEG in SEG_SOP_CLASSES
    assert set(SEG_SOP_CLASSES) <= ANNOTATION_CLASSES


def test_label_map_seg_becomes_the_series_mask(tmp_path: Path) -> None:
    root = tmp_path / "export"
    paths, seg_path, frames = _label_map_export(root)
    assert pydicom.dcmread(seg_path).SOPClassUID == LABEL_MAP_SEG
    assert read_header(str(seg_path))["annotation"]["kind"] == "SEG"
    out = tmp_path / "out"
    index_dicom(root, out, rules=IndexConfig(min_slices=4), mask_labels=LABELS)

    manifest = _rows(out / "manifest.csv")
    assert len(manifest) == 1 and manifest[0]["mask"] == f"masks/{manifest[0]['case_id']}.nii.gz"
    index = _rows(out / "index.csv")
    seg_rows = [r for r in index if r["kind"] == "SEG"]
    assert [(r["verdict"], r["case_id"]) for r in seg_rows] == [("used", manifest[0]["case_id"])]
    assert "labels: nodule, vessel" in seg_rows[0]["reason"]
    assert not any("not an image" in r["reason"] for r in index)

    reference = annotation_to_mask(seg_path, paths, list(LABELS.values()), None, tmp_path / "ref.nii.gz")
    got, want = nib.load(out / manifest[0]["mask"]), nib.load(reference.path)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    np.testing.assert_allclose(got.affine, want.affine)
    # and the voxels are the label map's own: same count per label as the frames drawn
    values = np.asarray(got.dataobj)
    assert [int((values == v).sum()) for v in (1, 2)] == [int((frames == v).sum()) for v in (1, 2)]
