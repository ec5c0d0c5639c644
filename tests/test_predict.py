"""``python -m medres.predict`` and ``Predictor`` on scans the model has not seen (nothing is trained)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from medres.checkpoint import save_checkpoint
from medres.config import load_config
from medres.data.readers.io import load_image
from medres.inference.predictor import Predictor
from medres.layout import case_file_stem
from medres.predict import main
from tests.data.dicom_factory import CT_SMALL, write_series
from tests.tiny_checkpoint import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["case_id", "patient_id", "fold", "y_true", "p_normal", "p_nodule", "y_pred", "y_pred_argmax",
           "image", "mask", "seg_path"]
AFFINE = np.array([[0.0, -1.6, 0.0, 40.0], [-1.4, 0.0, 0.0, 30.0], [0.0, 0.0, 3.0, -20.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A dual-head ResNet-10 with random weights, saved through the engine's checkpoint writer."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.pt")


def ct_volume(shape=(30, 26, 9)) -> np.ndarray:
    """HU: air with a soft-tissue ellipsoid (off-centre)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    inside = ((grid[0] - 18) / 8) ** 2 + ((grid[1] - 10) / 6) ** 2 + ((grid[2] - 4) / 3) ** 2 < 1
    return np.where(inside, 40.0, -1000.0).astype(np.float32)


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(ct_volume(), AFFINE), folder / "a.nii.gz")
    nib.save(nib.Nifti1Image(ct_volume((20, 22, 7))[::-1].copy(), np.diag([2.0, 2.0, 2.5, 1.0])),
             folder / "b.nii")
    return folder


def test_folder_of_scans_gives_table_and_overlaying_masks(checkpoint, scans, tmp_path):
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(scans), "--output", str(out)]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}, keep_default_na=False)
    assert list(df.columns) == COLUMNS
    assert df["case_id"].tolist() == ["a", "b"]
    assert df["y_true"].tolist() == [-1, -1] and df["fold"].tolist() == [-1, -1]
    np.testing.assert_allclose(df[["p_normal", "p_nodule"]].sum(axis=1), 1.0, atol=1e-6)
    assert df["y_pred"].tolist() == (df["p_nodule"] > df["p_normal"]).astype(int).tolist()
    for row in df.itertuples():
        src, mask = nib.load(row.image), nib.load(out / row.seg_path)
        assert mask.shape == src.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)


def test_manifest_input_gives_labels_and_subgroups(checkpoint, scans, tmp_path):
    (scans / "m.csv").write_text("case_id,patient_id,image,label,site,series_uid\n"
                                 "c1,p1,a.nii.gz,nodule,A,1.2.3\nc2,p2,b.nii,,B,1.2.4\n")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(scans / "m.csv"), "--output", str(out),
                 "--no-masks"]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == [*COLUMNS[:8], "site", "image", "mask"]  # no UID, no seg_path
    assert df["y_true"].tolist() == ["1", "-1"] and df["site"].tolist() == ["A", "B"]
    assert df["image"].tolist() == [str(scans / "a.nii.gz"), str(scans / "b.nii")]
    assert not (out / "seg").exists()


def test_ids_that_differ_only_in_unsafe_characters_get_a_mask_each(checkpoint, scans, tmp_path):
    """症例1/病例1 and P1 S1/P1_S1 once shared a mask file: now four files, each row points at its own
    (the four scans differ in shape, so a row pointing at another case's mask would be seen)."""
    for name, shape in (("c.nii.gz", (24, 20, 8)), ("d.nii.gz", (18, 16, 6))):
        nib.save(nib.Nifti1Image(ct_volume(shape), AFFINE), scans / name)
    (scans / "m.csv").write_text("case_id,patient_id,image\n症例1,p1,a.nii.gz\n病例1,p2,b.nii\n"
                                 "P1 S1,p3,c.nii.gz\nP1_S1,p4,d.nii.gz\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(scans / "m.csv"), "--output", str(out)]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False, encoding="utf-8")
    assert df["case_id"].tolist() == ["症例1", "病例1", "P1 S1", "P1_S1"]
    assert len({p.casefold() for p in df["seg_path"]}) == 4
    assert sorted(p.name for p in (out / "seg").iterdir()) == sorted(Path(p).name for p in df["seg_path"])
    for row in df.itertuples():
        assert Path(row.seg_path).name == f"{case_file_stem(row.case_id)}.nii.gz"
        assert nib.load(out / row.seg_path).shape == nib.load(row.image).shape


def test_predictions_csv_holds_no_spreadsheet_formula(checkpoint, scans, tmp_path):
    """Manifest text reaches predictions.csv quoted (OWASP); numbers stay numbers."""
    (scans / "m.csv").write_text('case_id,patient_id,image,site,score\n'
                                 '"=HYPERLINK(""http://x"",""y"")",p1,a.nii.gz,"+cmd|\' /C calc\'!A0",-1.5\n'
                                 '@SUM(1),p2,b.nii,-2+3,7\n', encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(scans / "m.csv"), "--output", str(out),
                 "--no-masks"]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert df["case_id"].tolist() == ["'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(1)"]
    assert df["site"].tolist() == ["'+cmd|' /C calc'!A0", "'-2+3"]
    assert df["score"].tolist() == ["-1.5", "7"]
    assert pd.read_csv(out / "predictions.csv")["p_nodule"].between(0, 1).all()


def test_predictor_on_path_and_on_loaded_tensor_agree(checkpoint, scans):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    by_path = predictor.predict(scans / "a.nii.gz")
    by_tensor = predictor.predict(load_image(scans / "a.nii.gz"))
    assert set(by_path.probabilities) == {"normal", "nodule"}
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0)
    for k, v in by_path.probabilities.items():
        assert by_tensor.probabilities[k] == pytest.approx(v, abs=1e-5)
    assert by_path.mask.shape == ct_volume().shape
    np.testing.assert_allclose(by_path.mask.affine.numpy(), AFFINE, atol=1e-5)
    assert torch.equal(by_path.mask, by_tensor.mask)
    tta = Predictor.from_checkpoint(checkpoint, device="cpu", tta=True).predict(scans / "a.nii.gz")
    assert tta.mask.shape == by_path.mask.shape


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "medres.predict", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _patient_bytes() -> list[bytes]:
    ds = pydicom.dcmread(CT_SMALL)
    values = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientName).replace("^", " ")]
    return [v.encode() for v in values if len(v) >= 3]


@pytest.mark.slow
def test_cli_on_dicom_series_leaks_no_patient_fields(checkpoint, tmp_path):
    series = tmp_path / "series_1"
    write_series(series, 4)  # copies of pydicom's CT_small: PatientName and PatientID kept
    secrets = _patient_bytes()
    assert any(s in (series / "IM0000.dcm").read_bytes() for s in secrets)  # the input does hold them
    out = tmp_path / "out"
    done = _run_cli("--checkpoint", str(checkpoint), "--input", str(series), "--output", str(out), "--tta")
    assert done.returncode == 0, done.stderr
    assert list(out.glob("seg/*.dcm")) and "copy attributes of module" not in done.stderr  # no SEG chatter
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert df["case_id"].tolist() == ["series_1"]
    src = load_image(series)
    mask = nib.load(out / df.loc[0, "seg_path"])
    assert mask.shape == tuple(src.shape)
    np.testing.assert_allclose(mask.affine, src.affine.numpy(), atol=1e-4)
    # the DICOM SEG goes back to the patient's record with its patient module
    # (tests/data/dicom_objects/test_dicom_seg.py)
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert len(files) == 3  # the table, the mask and the written-files list
    for path in files:
        raw = path.read_bytes()
        raw += gzip.decompress(raw) if path.name.endswith(".gz") else b""
        for s in secrets:
            assert s not in raw, f"{s!r} found in {path.name}"
    for s in secrets:
        assert s.decode() not in done.stdout + done.stderr


def test_bad_inputs_are_one_message_and_exit_2(checkpoint, tmp_path, capsys):
    # One CT slice where the checkpoint's pipeline needs a volume: a DataError naming the file.
    assert main(["--checkpoint", str(checkpoint), "--input", str(CT_SMALL),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "CT_small.dcm" in err and "volume" in err and "Traceback" not in err
    assert not any(s.decode() in err for s in _patient_bytes())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--input", str(CT_SMALL),
                 "--output", str(tmp_path / "o")]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("id,path\n1,x.nii.gz\n")
    assert main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "m.csv"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "required column 'case_id' is missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_input_and_checkpoint_exit_2(checkpoint, tmp_path, capsys):
    assert main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "nope.nii.gz"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "nope.nii.gz: does not exist" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--input", str(tmp_path / "scans"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "holds no scans" in capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_output_on_around_or_inside_an_input_is_refused(checkpoint, scans, tmp_path, capsys):
    (scans / "m.csv").write_text("case_id,patient_id,image,label\nc1,p1,a.nii.gz,nodule\n")
    run = tmp_path / "runs" / "r"
    (run / "fold_0").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {}\n")
    fold_ckpt = run / "fold_0" / "checkpoint_best.pt"
    fold_ckpt.write_bytes(checkpoint.read_bytes())
    before = {"scans": _files(scans), "model": _files(checkpoint.parent), "run": _files(run)}
    attempts = [
        (["--checkpoint", str(checkpoint), "--input", str(scans)], scans, "is the input"),
        (["--checkpoint", str(checkpoint), "--input", str(scans)], tmp_path, "contains the input"),
        (["--checkpoint", str(checkpoint), "--input", str(scans)], scans / "pred", "lies inside the input"),
        (["--checkpoint", str(checkpoint), "--input", str(scans / "a.nii.gz")], scans / "a.nii.gz",
         "is the input"),
        (["--checkpoint", str(checkpoint), "--input", str(scans / "m.csv")], scans,
         "is the manifest's folder"),
        (["--checkpoint", str(checkpoint), "--input", str(scans)], checkpoint.parent,
         "contains the checkpoint"),
        (["--checkpoint", str(fold_ckpt), "--input", str(scans)], run / "fold_0" / "seg",
         "lies inside the run holding the checkpoint"),
        (["--run", str(run), "--input", str(scans)], run / "fold_0" / ".." / "pred", "lies inside the run"),
        (["--model", str(run), "--input", str(scans)], run.parent, "contains the export folder"),
    ]
    for argv, out, said in attempts:
        assert main([*argv, "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and str(out) in err, (said, err)
    assert {"scans": _files(scans), "model": _files(checkpoint.parent), "run": _files(run)} == before
    assert not (scans / "pred").exists() and not (run / "pred").exists()


def test_an_existing_output_holding_a_listed_scan_is_refused(checkpoint, scans, tmp_path, capsys):
    """A folder inside the manifest's folder is fine, unless it holds a scan the manifest lists."""
    (scans / "sub").mkdir()
    nib.save(nib.Nifti1Image(ct_volume(), AFFINE), scans / "sub" / "c.nii.gz")
    (scans / "m.csv").write_text("case_id,patient_id,image,label\nc1,p1,sub/c.nii.gz,nodule\n")
    before = (scans / "sub" / "c.nii.gz").read_bytes()
    argv = ["--checkpoint", str(checkpoint), "--input", str(scans / "m.csv"), "--no-masks"]
    assert main([*argv, "--output", str(scans / "sub")]) == 2
    assert "contains the image 1 of case 'c1'" in capsys.readouterr().err
    assert (scans / "sub" / "c.nii.gz").read_bytes() == before
    assert not (scans / "sub" / "predictions.csv").exists()
    assert main([*argv, "--output", str(scans / "predictions")]) == 0  # beside the manifest: allowed
    assert (scans / "predictions" / "predictions.csv").is_file()


def test_a_file_predict_did_not_write_is_never_overwritten(checkpoint, scans, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.csv").write_text("the user's own table\n")
    (out / "notes.txt").write_text("kept")
    argv = ["--checkpoint", str(checkpoint), "--input", str(scans), "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds predictions.csv, a file medres did not write there" in err and str(out) in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert (out / "predictions.csv").read_text() == "the user's own table\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "predictions.csv"]  # nothing written
    (out / "predictions.csv").unlink()
    assert main(argv) == 0 and main(argv) == 0  # a rerun replaces its own files; the user's stay
    assert len(pd.read_csv(out / "predictions.csv")) == 2 and (out / "notes.txt").read_text() == "kept"
    (out / "seg" / f"{case_file_stem('a')}.nii.gz").unlink()  # a link in its place is nobody's to follow
    (out / "seg" / f"{case_file_stem('a')}.nii.gz").symlink_to(tmp_path / "outside.nii.gz")
    assert main(argv) == 2
    assert f"holds seg/{case_file_stem('a')}.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "outside.nii.gz").exists()


def test_a_checkpoint_asking_for_a_huge_window_is_refused_before_inference(checkpoint, scans, tmp_path,
                                                                            capsys):
    import resource

    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["patch_size"] = [4096, 4096, 4096]
    huge = tmp_path / "huge" / "checkpoint_best.pt"
    save_checkpoint(state, huge)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    argv = ["--checkpoint", str(huge), "--input", str(scans), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 2**30
    err = capsys.readouterr().err
    assert "4096 x 4096 x 4096 voxels" in err and "for its input alone" in err and str(huge) in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    config = load_config({"data": {"patch_size": [64, 64, 64]}})  # 1 MiB: a real window passes
    from medres.inference.predictor import check_window

    check_window(config, 4)
