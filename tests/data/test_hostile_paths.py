"""Issue 8 item 2: symbolic links cannot lead a manifest out of its data root (images, masks, and each
file of a DICOM series folder); the refusal names the link and where it points, relative to the root."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from medres.data.manifest import read_manifest, validate_manifest
from medres.errors import DataError, DataErrors
from tests.data.dicom_factory import write_series


def _nifti(path, value=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, np.int16), np.eye(4)), path)
    return path


def _manifest(root, rows, mask=False):
    lines = ["case_id,patient_id,image" + (",mask" if mask else "")]
    lines += [",".join(r) for r in rows]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _nifti(root / "a.nii.gz")
    _nifti(outside / "scan.nii.gz", 7)
    (outside / "passwd").write_text("root:x:0:0:DOE JOHN MRN123456:/root:/bin/sh\n")
    return root, outside


def _problems(manifest):
    with pytest.raises(DataErrors) as info:
        read_manifest(manifest)
    return info.value.errors


def test_link_to_a_scan_outside_the_root_is_refused(layout):
    root, outside = layout
    os.symlink(outside / "scan.nii.gz", root / "b.nii.gz")
    errors = _problems(_manifest(root, [("A", "P1", "a.nii.gz"), ("B", "P2", "b.nii.gz")]))
    assert len(errors) == 1 and isinstance(errors[0], DataError)
    err = errors[0]
    assert err.row == 2 and err.case_id == "B"
    assert "b.nii.gz is a symbolic link to ../outside/scan.nii.gz" in err.reason
    assert "outside the data root" in err.reason


def test_link_to_a_system_file_is_refused_without_reading_it(layout):
    root, outside = layout
    os.symlink(outside / "passwd", root / "c.dcm")
    errors = _problems(_manifest(root, [("C", "P3", "c.dcm")]))
    text = str(errors[0])
    assert "c.dcm is a symbolic link to ../outside/passwd" in text
    for word in ("DOE", "JOHN", "MRN123456", "root:x"):
        assert word not in text


def test_a_linked_series_folder_is_refused(layout):
    root, outside = layout
    write_series(outside / "series", 2)
    os.symlink(outside / "series", root / "s")
    errors = _problems(_manifest(root, [("S", "P1", "s")]))
    assert errors[0].row == 1 and "s is a symbolic link to ../outside/series" in errors[0].reason


def test_mask_link_is_refused(layout):
    root, outside = layout
    os.symlink(outside / "scan.nii.gz", root / "m.nii.gz")
    errors = _problems(_manifest(root, [("A", "P2", "a.nii.gz", "m.nii.gz")], mask=True))
    assert len(errors) == 1 and errors[0].reason.startswith("mask path 'm.nii.gz' leaves the data root")


def test_a_file_of_a_series_folder_linking_out_is_refused(layout):
    root, outside = layout
    write_series(root / "s", 2)
    os.symlink(outside / "passwd", root / "s" / "IM9999.dcm")
    errors = _problems(_manifest(root, [("S", "P1", "s")]))
    assert "s/IM9999.dcm is a symbolic link to ../outside/passwd" in errors[0].reason


def test_links_that_stay_inside_the_root_are_fine(layout):
    root, _ = layout
    os.symlink(root / "a.nii.gz", root / "alias.nii.gz")
    (root / "sub").mkdir()
    os.symlink("../a.nii.gz", root / "sub" / "rel.nii.gz")
    df = read_manifest(_manifest(root, [("A", "P1", "alias.nii.gz"), ("B", "P2", "sub/rel.nii.gz")]))
    assert len(df) == 2


def test_a_root_reached_through_a_link_still_works(layout, tmp_path):
    root, _ = layout
    os.symlink(root, tmp_path / "root_link")
    df = read_manifest(_manifest(tmp_path / "root_link", [("A", "P1", "a.nii.gz")]))
    assert len(df) == 1


def test_dangling_and_looping_links_are_named(layout):
    root, _ = layout
    os.symlink(root / "gone.nii.gz", root / "d.nii.gz")
    os.symlink(root / "loop2.nii.gz", root / "loop1.nii.gz")
    os.symlink(root / "loop1.nii.gz", root / "loop2.nii.gz")
    _, errors = validate_manifest(_manifest(root, [("D", "P1", "d.nii.gz"), ("L", "P2", "loop1.nii.gz")]))
    assert len(errors) == 2
    assert all(e.row in (1, 2) for e in errors)


# --- issue 8 item 8: careless manifests and files ------------------------------------------------


def test_duplicate_header_column_is_refused(layout):
    root, _ = layout
    (root / "m.csv").write_text("case_id,patient_id,image,label,label\nA,P1,a.nii.gz,x,y\n")
    with pytest.raises(DataError) as info:
        read_manifest(root / "m.csv")
    assert "names column 'label' twice (columns 4 and 5)" in info.value.reason


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs")])
def test_other_delimiters_are_named(layout, sep, name):
    root, _ = layout
    (root / "m.csv").write_text(sep.join(["case_id", "patient_id", "image"]) + "\n" +
                                sep.join(["A", "P1", "a.nii.gz"]) + "\n")
    with pytest.raises(DataError) as info:
        read_manifest(root / "m.csv")
    assert f"is separated by {name}" in info.value.reason
    assert not isinstance(info.value, DataErrors)  # one error, not four "missing column" ones


def test_zero_length_pixel_data_is_a_data_error(tmp_path):
    import copy

    from medres.data.io import load_image
    from tests.data.dicom_factory import ct_small

    ds = copy.deepcopy(ct_small())
    ds.PixelData = b""
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(DataError, match="empty PixelData element"):
        load_image(tmp_path / "empty.dcm")


def test_links_into_an_indexed_export_are_followed_and_nothing_wider(layout, tmp_path):
    """medres.data.index names its export in private/link_roots.txt: links into that folder are followed,
    links elsewhere are still refused, and a recorded '/' trusts nothing."""
    root, outside = layout
    export = tmp_path / "export"
    _nifti(export / "scan.nii.gz", 3)
    os.symlink(export / "scan.nii.gz", root / "e.nii.gz")
    os.symlink(outside / "passwd", root / "p.dcm")
    (root / "private").mkdir()
    (root / "private" / "link_roots.txt").write_text(f"{export}\n")
    df = read_manifest(_manifest(root, [("E", "P1", "e.nii.gz")]))
    assert df["image"].tolist() == [str(root / "e.nii.gz")]
    errors = _problems(_manifest(root, [("E", "P1", "e.nii.gz"), ("P", "P2", "p.dcm")]))
    assert [e.case_id for e in errors] == ["P"] and "outside the data root" in errors[0].reason
    (root / "private" / "link_roots.txt").write_text("/\n")
    errors = _problems(_manifest(root, [("E", "P1", "e.nii.gz")]))
    assert [e.case_id for e in errors] == ["E"]
