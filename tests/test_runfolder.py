"""medres.runfolder: a run folder's paths, "best, else last", the trained folds, member names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medres.errors import DataError
from medres.runfolder import (
    BUNDLE_FILES,
    TABLES,
    FoldFolder,
    RunFolder,
    fold_index,
    fold_name,
    is_run,
    member_fold,
    member_name,
)


def test_paths_keep_the_run_folder_layout(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    rel = {k: getattr(run, k).relative_to(tmp_path).as_posix() for k in
           ("config", "folds_csv", "log", "lock", "mlflow_db", "mlflow_lock", "ensemble_dir", "report_dir")}
    assert rel == {"config": "config.yaml", "folds_csv": "folds.csv", "log": "train.log", "lock": ".lock",
                   "mlflow_db": "mlflow.db", "mlflow_lock": ".mlflow.lock", "ensemble_dir": "ensemble",
                   "report_dir": "report"}
    fold = run.fold(3)
    assert fold == FoldFolder(tmp_path / "fold_3", 3) and fold.index == 3
    rel = {k: getattr(fold, k).relative_to(tmp_path).as_posix() for k in
           ("dir", "checkpoint_last", "checkpoint_prev", "checkpoint_best", "metrics_csv", "predictions",
            "inner_val_predictions", "test_predictions", "calibration", "train_patients", "seg_dir",
            "tensorboard", "lock")}
    assert rel == {"dir": "fold_3", "checkpoint_last": "fold_3/checkpoint_last.pt",
                   "checkpoint_prev": "fold_3/checkpoint_prev.pt",
                   "checkpoint_best": "fold_3/checkpoint_best.pt", "metrics_csv": "fold_3/metrics.csv",
                   "predictions": "fold_3/predictions.parquet",
                   "inner_val_predictions": "fold_3/inner_val_predictions.parquet",
                   "test_predictions": "fold_3/test_predictions.parquet",
                   "calibration": "fold_3/calibration.json", "train_patients": "fold_3/train_patients.csv",
                   "seg_dir": "fold_3/seg", "tensorboard": "fold_3/tensorboard", "lock": "fold_3/.lock"}
    assert [fold.table(t).name for t in TABLES] == [
        "predictions.parquet", "inner_val_predictions.parquet", "test_predictions.parquet"]
    with pytest.raises(ValueError):
        fold.table("train_predictions")
    assert fold.weights_digest(1) == tmp_path / "fold_3" / "weights_rank1.sha256"
    assert run.ensemble.test_predictions == tmp_path / "ensemble" / "test_predictions.parquet"
    assert run.report.summary == tmp_path / "report" / "summary.json"
    assert run.report.case_keys == tmp_path / "report" / "private" / "case_keys.csv"
    assert sorted(p.relative_to(run.report_dir).as_posix() for p in (
        run.report.html, run.report.summary, run.report.predictions_csv, run.report.seg_cases,
        run.report.cohort, run.report.case_keys)) == sorted(BUNDLE_FILES)


def test_seg_path_is_the_case_file_name(tmp_path: Path) -> None:
    """``<readable prefix>-<first 12 hex digits of SHA-256 of the id>``, computed here independently."""
    case = "P1 S1/ü"
    digest = hashlib.sha256(case.encode("utf-8")).hexdigest()[:12]
    fold = RunFolder(tmp_path).fold(0)
    assert fold.seg_path(case) == tmp_path / "fold_0" / "seg" / f"P1_S1__-{digest}.nii.gz"
    assert fold.seg_path(case, ".dcm").name == f"P1_S1__-{digest}.dcm"
    assert RunFolder(tmp_path).ensemble.seg_path(case).parent == tmp_path / "ensemble" / "seg"


def test_predicting_checkpoint_is_the_best_else_the_last(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    fold = run.fold(0)
    assert run.predicting_checkpoint(0) == fold.checkpoint_last  # nothing yet: where it will be
    fold.dir.mkdir()
    fold.checkpoint_prev.write_bytes(b"p")
    assert run.predicting_checkpoint(0) == fold.checkpoint_last
    fold.checkpoint_last.write_bytes(b"l")
    assert run.predicting_checkpoint(0) == fold.checkpoint_last
    fold.checkpoint_best.write_bytes(b"b")
    assert run.predicting_checkpoint(0) == fold.checkpoint_best
    fold.checkpoint_last.unlink()
    assert fold.predicting_checkpoint() == fold.checkpoint_best
    assert fold.checkpoints() == [fold.checkpoint_best, fold.checkpoint_prev]


def test_trained_folds_are_the_fold_folders_with_a_checkpoint(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    for k, name in ((0, "checkpoint_best.pt"), (2, "checkpoint_last.pt"), (10, "checkpoint_best.pt"),
                    (3, "checkpoint_prev.pt"), (4, None)):
        (tmp_path / f"fold_{k}").mkdir()
        if name:
            (tmp_path / f"fold_{k}" / name).write_bytes(b"x")
    (tmp_path / "fold_x").mkdir()
    (tmp_path / "fold_5").write_text("a file, not a fold folder")
    (tmp_path / "ensemble").mkdir()
    assert run.trained_folds() == [0, 2, 10]  # numeric order; a previous checkpoint alone does not predict
    assert [f.index for f in run.folds()] == [0, 2, 3, 4, 10]
    assert RunFolder(tmp_path / "missing").trained_folds() == []


def test_member_names_round_trip(tmp_path: Path) -> None:
    for k in (0, 7, 12):
        assert member_fold(member_name(k)) == k
        assert fold_index(fold_name(k)) == k
        assert RunFolder(tmp_path).member(member_name(k)) == RunFolder(tmp_path).fold(k)
        assert RunFolder(tmp_path).fold(k).member == f"fold{k}"
    for bad in ("fold_1", "model0", "fold", "fold1a", "ensemble"):
        with pytest.raises(DataError):
            member_fold(bad)
    assert fold_index(tmp_path / "fold1") is None and fold_index("seg") is None


def test_is_run_and_the_run_of_a_checkpoint(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    assert not is_run(run.root)
    run.fold(1).dir.mkdir(parents=True)
    assert not is_run(run.root) and RunFolder.of_checkpoint(run.fold(1).checkpoint_best) is None
    run.config.write_text("data: {}\n")
    assert is_run(run.root)
    assert RunFolder.of_checkpoint(run.fold(1).checkpoint_best).root == run.root.absolute()
