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


# --- the writers not covered by their own modules' tests: pull, demo export, push ---------------------------
# (index: tests/data/index/test_index.py; plan: tests/plan/test_planner.py; predict, export, evaluate,
# train output.dir/output.name and data.cache_dir: tests/test_predict.py, test_export.py, test_evaluate.py,
# test_train.py)


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def test_pull_out_and_index_never_meet_their_inputs(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``medres.data.pull``: --out is not, around or inside the accessions file, and --index not the
    export, inside it or around it; refused before any server is asked, both paths named."""
    from medres.data.pull import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    accessions = inputs / "cohort.csv"
    accessions.write_text("AccessionNumber\nACC1\n")
    export = tmp_path / "export"
    before = _snapshot(tmp_path)
    cases = [(["--out", str(accessions)], "is the accessions file", accessions),
             (["--out", str(inputs)], "contains the accessions file", inputs),
             (["--out", str(export), "--index", str(export)], "is the export (--out)", export),
             (["--out", str(export), "--index", str(export / "indexed")], "lies inside the export (--out)",
              export / "indexed"),
             (["--out", str(export), "--index", str(tmp_path)], "contains the export (--out)", tmp_path)]
    for extra, said, out in cases:
        argv = ["--dicomweb", "http://127.0.0.1:9/dicom-web", "--accessions", str(accessions), *extra,
                "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and str(out) in err, err
        assert str(accessions if "accessions" in said else export) in err
        assert _snapshot(tmp_path) == before  # nothing written, no export folder made


def test_demo_export_never_meets_the_cohort_it_reads(tmp_path: Path) -> None:
    """``generate_export(manifest, out)`` writes ``out/export``: never the cohort's folder, inside it or
    around it (being or holding it, ``out/export`` exists: refused as any existing export is)."""
    from medres.data.demo.export import generate_export

    cohort = tmp_path / "a" / "export"
    cohort.mkdir(parents=True)
    (cohort / "manifest.csv").write_text("case_id,image,mask\n")
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match="already holds an export"):  # out/export is the cohort: it exists
        generate_export(cohort / "manifest.csv", tmp_path / "a")
    with pytest.raises(DataError) as err:
        generate_export(cohort / "manifest.csv", cohort / "sub")
    msg = str(err.value)
    assert "lies inside the demo cohort" in msg
    assert str(cohort) in msg and str(cohort / "sub" / "export") in msg
    assert _snapshot(tmp_path) == before
    inner = tmp_path / "b" / "export" / "builtin"
    inner.mkdir(parents=True)
    (inner / "manifest.csv").write_text("case_id,image,mask\n")
    with pytest.raises(DataError, match="already holds an export"):  # around the cohort: out/export exists
        generate_export(inner / "manifest.csv", tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "export").iterdir()) == ["builtin"]


def test_push_csv_replaces_only_a_push_csv_medres_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """``medres.data.pacs.push`` writes ``push.csv`` into the predictions folder it reads: never over a
    link to an input (predictions.csv) or a hard link of a SEG it sends; refused before pushing."""
    from medres.data.pacs.push import main

    pred = tmp_path / "pred"
    (pred / "seg").mkdir(parents=True)
    seg = pred / "seg" / "c1.dcm"
    seg.write_bytes(b"DICM-ish")
    (pred / "predictions.csv").write_text("case_id\nc1\n")
    for make in (lambda p: p.symlink_to(pred / "predictions.csv"), lambda p: os.link(seg, p)):
        make(pred / "push.csv")
        before = _snapshot(tmp_path)
        assert main(["--predictions", str(pred), "--push-dimse", "127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        assert "holds push.csv, a file medres did not write" in err and str(pred) in err
        assert str(pred / "push.csv") in err
        assert _snapshot(tmp_path) == before
        (pred / "push.csv").unlink()


def test_copy_and_link_checked_take_only_the_file_that_was_checked(tmp_path: Path) -> None:
    from medres.files import FileChanged, copy_checked, link_checked

    src, outside = tmp_path / "in" / "slice.dcm", tmp_path / "outside.dcm"
    src.parent.mkdir()
    src.write_bytes(b"inside")
    outside.write_bytes(b"secret")
    st = os.lstat(src)
    ident = (st.st_dev, st.st_ino)
    copy_checked(src, tmp_path / "copy", ident)
    link_checked(src, tmp_path / "link", ident)
    assert (tmp_path / "copy").read_bytes() == b"inside" and os.stat(tmp_path / "link").st_ino == st.st_ino
    os.link(src, tmp_path / "keep")  # the old inode stays alive: the replacement gets a new one
    src.unlink()
    src.symlink_to(outside)  # swapped for a link after the check
    for act in (copy_checked, link_checked):
        with pytest.raises(FileChanged, match="symbolic link"):
            act(src, tmp_path / f"bad_{act.__name__}", ident)
    src.unlink()
    src.write_bytes(b"other")  # another file under the checked name
    for act in (copy_checked, link_checked):
        with pytest.raises(FileChanged, match="another file"):
            act(src, tmp_path / f"bad_{act.__name__}", ident)
    assert not list(tmp_path.glob("bad_*")) and outside.stat().st_nlink == 1


def test_a_written_list_naming_paths_outside_its_folder_names_nothing(tmp_path: Path) -> None:
    from medres.files import WRITTEN_LIST, check_replace, written_list

    (tmp_path / "victim.csv").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / WRITTEN_LIST).write_text('{"files": ["a.csv", "../victim.csv", "/etc/passwd", "b/../../x", ""]}')
    assert written_list(out) == ["a.csv"]
    with pytest.raises(DataError, match="a file outside it"):
        check_replace(out, ["../victim.csv"], what="x")
    assert (tmp_path / "victim.csv").read_text() == "precious"
