"""medres.files: the outputs-vs-inputs rule (check_output) and removing only what medres wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medres.errors import DataError
from medres.files import check_output, foreign_entries, remove_written


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.nii.gz").write_bytes(b"scan")
    (tmp_path / "data" / "cohort.csv").write_text("case_id\n")
    return tmp_path


def _refused(out: Path, inputs: dict, **kw: object) -> str:
    with pytest.raises(DataError) as err:
        check_output(out, inputs=inputs, what="output folder", **kw)
    return str(err.value)


def test_is_contains_and_lies_inside_are_refused(project: Path) -> None:
    data = project / "data"
    assert "is the data folder" in _refused(data, {"data folder": data})
    assert "contains the data folder" in _refused(project, {"data folder": data})
    assert "lies inside the data folder" in _refused(data / "out", {"data folder": data})
    assert "is the manifest" in _refused(data / "cohort.csv", {"manifest": data / "cohort.csv"})
    msg = _refused(project, {"manifest": data / "cohort.csv"})
    assert str(project) in msg and str(data / "cohort.csv") in msg  # both paths named


def test_a_sibling_or_an_allowed_inside_passes(project: Path) -> None:
    data = project / "data"
    out = project / "out"
    assert check_output(out, inputs={"data folder": data}, what="x") == out.resolve()
    assert check_output(data / "runs", inputs={"data root": data}, what="x", may_lie_inside={"data root"})
    # may_lie_inside never allows being or containing
    assert "is the data root" in _refused(data, {"data root": data}, may_lie_inside={"data root"})
    assert check_output(project / "o", inputs={"none": None, "empty": ""}, what="x")


def test_dot_dot_and_symlinks_are_resolved(project: Path) -> None:
    data = project / "data"
    sneaky = data / "images" / ".." / ".."  # = project, which contains data
    assert "contains the data folder" in _refused(sneaky, {"data folder": data})
    (project / "link").symlink_to(data, target_is_directory=True)
    msg = _refused(project / "link", {"data folder": data})
    assert "is the data folder" in msg and "resolved" in msg
    assert "lies inside" in _refused(project / "link" / "new", {"data folder": data})
    (project / "elsewhere").mkdir()
    (project / "elsewhere" / "up").symlink_to(project, target_is_directory=True)
    assert "contains" in _refused(project / "elsewhere" / "up", {"data folder": data})
    # a relative output, resolved against the working directory
    cwd = os.getcwd()
    try:
        os.chdir(data / "images")
        assert "contains the data folder" in _refused(Path("../.."), {"data folder": data})
    finally:
        os.chdir(cwd)


def test_a_hard_link_of_an_input_is_the_input(project: Path) -> None:
    manifest = project / "data" / "cohort.csv"
    os.link(manifest, project / "other.csv")
    assert "is the manifest" in _refused(project / "other.csv", {"manifest": manifest})


def test_scans_are_checked_only_when_the_output_exists(project: Path) -> None:
    scans = {"image of row 1": project / "data" / "images" / "a.nii.gz"}
    new = project / "data" / "new"
    assert check_output(new, inputs={}, what="x", scans=scans)
    assert "contains the image of row 1" in _refused(project / "data" / "images", {}, scans=scans)


def test_remove_written_removes_only_the_listed_files(tmp_path: Path) -> None:
    folder = tmp_path / "series" / "c1"
    folder.mkdir(parents=True)
    for name in ("00001.dcm", "00002.dcm", "mine.txt"):
        (folder / name).write_text(name)
    assert foreign_entries(folder, ["00001.dcm", "00002.dcm"]) == ["mine.txt"]
    left = remove_written(folder, ["00001.dcm", "00002.dcm", "00003.dcm"])
    assert left == ["mine.txt"] and sorted(p.name for p in folder.iterdir()) == ["mine.txt"]
    (folder / "mine.txt").unlink()
    (folder / "00001.dcm").write_text("x")
    assert remove_written(folder, ["00001.dcm"]) == [] and not folder.exists()  # empty: removed
    assert (tmp_path / "series").is_dir()  # above the folder: untouched


def test_remove_written_never_follows_a_link_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00001.dcm").write_text("precious")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "c1").symlink_to(outside, target_is_directory=True)
    assert remove_written(tmp_path / "series" / "c1", ["00001.dcm"]) == ["."]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "sub").symlink_to(outside, target_is_directory=True)
    assert remove_written(tmp_path / "f", ["sub/00001.dcm"]) == ["sub"]
    assert (outside / "00001.dcm").read_text() == "precious"


def test_remove_written_ignores_names_that_leave_the_folder(tmp_path: Path) -> None:
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "f").mkdir()
    assert remove_written(tmp_path / "f", ["../victim.txt", str(tmp_path / "victim.txt")]) == []
    assert (tmp_path / "victim.txt").read_text() == "precious"


def test_claim_outputs_replaces_only_what_medres_listed(tmp_path: Path) -> None:
    from medres.files import WRITTEN_LIST, claim_outputs, written_list

    out = tmp_path / "out"
    with claim_outputs(out, ["a.csv", "seg/b.nii.gz", "never.txt"], what="output folder"):
        (out / "a.csv").write_text("1")
        (out / "seg").mkdir()
        (out / "seg" / "b.nii.gz").write_bytes(b"m")
    assert written_list(out) == ["a.csv", "seg/b.nii.gz"]  # what was not written is not listed
    with claim_outputs(out, ["a.csv"], what="output folder"):  # a rerun replaces its own file
        (out / "a.csv").write_text("2")
    assert written_list(out) == ["a.csv", "seg/b.nii.gz"]
    (out / "mine.csv").write_text("user")
    (out / "never.txt").write_text("user")
    (tmp_path / "elsewhere").mkdir()
    (out / "link.csv").symlink_to(tmp_path / "elsewhere" / "x.csv")
    for name in ("mine.csv", "never.txt", "link.csv", "seg"):
        with pytest.raises(DataError, match=f"holds {name}, a file medres did not write"), \
                claim_outputs(out, [name, "a.csv"], what="output folder"):
            raise AssertionError("refused before the body runs")
    assert (out / "mine.csv").read_text() == "user" and (out / "never.txt").read_text() == "user"
    assert not (tmp_path / "elsewhere" / "x.csv").exists()
    with claim_outputs(out, ["a.csv", "mine2.csv"], what="output folder"):  # other user files: untouched
        pass
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), claim_outputs(new, ["a.csv"], what="output folder"):
        raise RuntimeError("the command failed before writing")
    assert not new.exists() and not (out / "mine2.csv").exists() and (out / WRITTEN_LIST).is_file()
