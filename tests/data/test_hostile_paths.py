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

    from medres.data.readers.io import load_image
    from tests.data.dicom_factory import ct_small

    ds = copy.deepcopy(ct_small())
    ds.PixelData = b""
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(DataError, match="empty PixelData element"):
        load_image(tmp_path / "empty.dcm")


def test_links_into_an_indexed_export_are_followed_and_nothing_wider(layout, tmp_path, monkeypatch):
    """medres.data.index names its export in a signed private/link_roots.txt: links into that folder
    are followed, links elsewhere are still refused, and a signed '/' trusts nothing."""
    from medres.data.project_key import project_key, write_link_roots

    monkeypatch.setenv("MEDRES_PROJECT_KEY", "hostile-paths-test-key-0123456789")
    root, outside = layout
    export = tmp_path / "export"
    _nifti(export / "scan.nii.gz", 3)
    os.symlink(export / "scan.nii.gz", root / "e.nii.gz")
    os.symlink(outside / "passwd", root / "p.dcm")
    write_link_roots(root / "private" / "link_roots.txt", [str(export)], project_key())
    df = read_manifest(_manifest(root, [("E", "P1", "e.nii.gz")]))
    assert df["image"].tolist() == [str(root / "e.nii.gz")]
    errors = _problems(_manifest(root, [("E", "P1", "e.nii.gz"), ("P", "P2", "p.dcm")]))
    assert [e.case_id for e in errors] == ["P"] and "outside the data root" in errors[0].reason
    write_link_roots(root / "private" / "link_roots.txt", ["/"], project_key())
    errors = _problems(_manifest(root, [("E", "P1", "e.nii.gz")]))
    assert [e.case_id for e in errors] == ["E"]


@pytest.mark.parametrize("forgery", ["plain", "other_key", "edited"])
def test_a_link_roots_file_the_data_folder_ships_grants_nothing(layout, tmp_path, monkeypatch, forgery):
    """A hostile data folder's own private/link_roots.txt (unsigned, signed under another key, or a
    signed file with its folder changed) names an outside folder: the link there is still refused, and
    the refusal says why the file was ignored."""
    from medres.data.project_key import project_key, write_link_roots

    root, outside = layout
    os.symlink(outside / "passwd", root / "p.dcm")
    listing = root / "private" / "link_roots.txt"
    listing.parent.mkdir()
    if forgery == "plain":
        listing.write_text(f"{outside}\n")
    elif forgery == "other_key":
        monkeypatch.setenv("MEDRES_PROJECT_KEY", "the-attackers-own-key-0123456789")
        write_link_roots(listing, [str(outside)], project_key())
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "the-projects-real-key-0123456789")
    if forgery == "edited":  # signed under the project's key for another folder, then edited
        (tmp_path / "elsewhere").mkdir()
        write_link_roots(listing, [str(tmp_path / "elsewhere")], project_key())
        listing.write_text(listing.read_text().replace(str(tmp_path / "elsewhere"), str(outside)))
    errors = _problems(_manifest(root, [("P", "P1", "p.dcm")]))
    assert [e.case_id for e in errors] == ["P"] and "outside the data root" in errors[0].reason
    assert "link_roots.txt beside the manifest was ignored" in errors[0].hint
    expected = {"plain": "not signed", "other_key": "does not verify", "edited": "does not verify"}[forgery]
    assert expected in errors[0].hint


def test_the_user_names_the_folders_links_may_lead_into(layout, tmp_path):
    """data.link_roots / read_manifest(link_roots=) / check --link-root: the user's own trust."""
    from medres.config import load_config
    from medres.data.check.__main__ import main as check_main
    from medres.errors import ConfigError

    root, outside = layout
    os.symlink(outside / "scan.nii.gz", root / "b.nii.gz")
    manifest = _manifest(root, [("B", "P1", "b.nii.gz")])
    _problems(manifest)
    df = read_manifest(manifest, link_roots=[str(outside)])
    assert df["image"].tolist() == [str(root / "b.nii.gz")]
    assert check_main(["--manifest", str(manifest), "--manifest-only"]) == 1
    assert check_main(["--manifest", str(manifest), "--manifest-only", "--link-root", str(outside)]) == 0
    with pytest.raises(ConfigError, match="not a folder"):
        read_manifest(manifest, link_roots=[str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="'/'"):
        read_manifest(manifest, link_roots=["/"])
    assert load_config(None, [f"data.link_roots=[{str(outside)!r}]"]).data.link_roots == [str(outside)]
    for bad in ("relative/folder", "/"):
        with pytest.raises(ConfigError, match="data.link_roots"):
            load_config(None, [f"data.link_roots=[{bad!r}]"])


def test_paths_no_file_system_takes_are_row_errors_not_tracebacks(layout, capsys):
    """A NUL byte, a 300-byte file name, a path past the system's length limit and a leading '~' are
    each a row error saying what is wrong (also with --manifest-only), never a raw ValueError/OSError."""
    from medres.data.check.__main__ import main as check_main

    root, _ = layout
    deep = "/".join(["d" * 200] * 30)  # every name fits, the whole path does not (PATH_MAX 4096)
    manifest = _manifest(root, [("N", "P1", "a\0b.nii.gz"), ("L", "P2", "x" * 300 + ".nii.gz"),
                                ("D", "P3", deep), ("T", "P4", "~/a.nii.gz"), ("A", "P5", "a.nii.gz")])
    errors = {e.case_id: e.reason for e in _problems(manifest)}
    assert sorted(errors) == ["D", "L", "N", "T"]
    assert "holds a NUL byte" in errors["N"]
    assert "a file or folder name of 307 bytes; file systems allow at most 255" in errors["L"]
    assert "ENAMETOOLONG" in errors["D"]
    assert "starts with '~', which medres does not expand" in errors["T"] and "'..'" not in errors["T"]
    assert check_main(["--manifest", str(manifest), "--manifest-only"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "NUL byte" in captured.out
    with pytest.raises(DataError, match="NUL byte"):
        read_manifest(str(root / "m\0.csv"))
