"""Every path of a training run folder (DESIGN.md "Run folder"): the one module that spells its names.

::

    runs/<name>/
        config.yaml  folds.csv  train.log  mlflow.db  .mlflow.lock  .lock
        fold_<k>/    checkpoint_last.pt  checkpoint_prev.pt  checkpoint_best.pt  metrics.csv
                     predictions.parquet  inner_val_predictions.parquet  test_predictions.parquet
                     calibration.json  train_patients.csv  seg/  tensorboard/  .lock
        ensemble/    test_predictions.parquet  seg/
        report/      report.html  summary.json  predictions.csv  seg_cases.csv  cohort.csv  private/

Training, prediction, evaluation and export read and write a run only through :class:`RunFolder`.
Torch-free, so the report finds a run without torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medres.errors import DataError
from medres.layout import case_file_stem

__all__ = ["CHECKPOINT_LAST", "CHECKPOINT_PREV", "CHECKPOINT_BEST", "CHECKPOINTS_BEST_FIRST",
           "HELDOUT", "INNER_VAL", "TEST", "TABLES", "BUNDLE_FILES", "EVALUATION_FILES",
           "RunFolder", "FoldFolder", "EnsembleFolder", "ReportFolder",
           "fold_name", "member_name", "member_fold", "fold_index", "is_run"]

CHECKPOINT_LAST = "checkpoint_last.pt"  # written every epoch (and every N steps): what --resume reads
CHECKPOINT_PREV = "checkpoint_prev.pt"  # the last one before it, kept as a fallback for a damaged file
CHECKPOINT_BEST = "checkpoint_best.pt"  # the best epoch by train.early_stopping.monitor: what predicts
CHECKPOINTS_BEST_FIRST = (CHECKPOINT_BEST, CHECKPOINT_LAST)  # a fold's model for prediction, in order

#: a fold's prediction tables (``<name>.parquet``): held-out cases, inner validation, the test split
HELDOUT, INNER_VAL, TEST = "predictions", "inner_val_predictions", "test_predictions"
TABLES = (HELDOUT, INNER_VAL, TEST)

_FOLD_PREFIX = "fold_"  # fold_<k>: a fold's folder
_MEMBER_PREFIX = "fold"  # fold<k>: a fold's name as an ensemble member (probability columns, exports)
_FOLD_DIR = re.compile(r"fold_(\d+)")
_MEMBER = re.compile(r"fold(\d+)")
_LOCK = ".lock"
_SEG = "seg"

_REPORT_HTML, _SUMMARY, _PREDICTIONS_CSV, _SEG_CASES, _COHORT = (
    "report.html", "summary.json", "predictions.csv", "seg_cases.csv", "cohort.csv")
_CASE_KEYS = "private/case_keys.csv"
#: the files of a report bundle, relative to its folder (what a later evaluate may replace there)
BUNDLE_FILES = (_REPORT_HTML, _SUMMARY, _PREDICTIONS_CSV, _SEG_CASES, _COHORT, _CASE_KEYS)
_EVALUATION = "private/evaluation"  # what evaluate measured on the scans; they name cases, so private
_SAVED_SEG, _SAVED_TEST_SEG, _SAVED_SPACING, _SAVED_GALLERY = (
    f"{_EVALUATION}/{n}" for n in ("seg_cases.parquet", "test_seg_cases.parquet", "spacing.parquet",
                                   "gallery.json"))
#: the evaluation's per-case tables in a report folder, read back by the report (``medres.report``)
EVALUATION_FILES = (_SAVED_SEG, _SAVED_TEST_SEG, _SAVED_SPACING, _SAVED_GALLERY)


def fold_name(fold: int) -> str:
    """A fold's folder name: ``fold_<k>``."""
    return f"{_FOLD_PREFIX}{int(fold)}"


def member_name(fold: int) -> str:
    """A fold's name as an ensemble member: ``fold<k>``."""
    return f"{_MEMBER_PREFIX}{int(fold)}"


def member_fold(name: str) -> int:
    """The fold of a member name ``fold<k>`` (:func:`member_name`'s inverse); DataError for another name."""
    m = _MEMBER.fullmatch(str(name))
    if m is None:
        raise DataError(f"{str(name)[:80]!r} is not a fold member name",
                        hint="fold members are named fold0, fold1, ...")
    return int(m.group(1))


def fold_index(path: str | os.PathLike[str]) -> int | None:
    """The fold number of a folder named ``fold_<k>``, else None."""
    m = _FOLD_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def is_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run folder: a folder holding the run's resolved configuration."""
    return RunFolder(path).config.is_file()


def _seg_path(seg_dir: Path, case_id: str, suffix: str) -> Path:
    return seg_dir / f"{case_file_stem(case_id)}{suffix}"


@dataclass(frozen=True)
class FoldFolder:
    """``fold_<k>/`` of a run: its checkpoints, tables, masks and lock (``index``: k, None if unknown)."""

    dir: Path
    index: int | None = None

    @property
    def checkpoint_last(self) -> Path:
        return self.dir / CHECKPOINT_LAST

    @property
    def checkpoint_prev(self) -> Path:
        return self.dir / CHECKPOINT_PREV

    @property
    def checkpoint_best(self) -> Path:
        return self.dir / CHECKPOINT_BEST

    @property
    def metrics_csv(self) -> Path:
        """One row per epoch (``medres.training.tracking``)."""
        return self.dir / "metrics.csv"

    def table(self, name: str) -> Path:
        """The prediction table ``name`` (one of :data:`TABLES`)."""
        if name not in TABLES:
            raise ValueError(f"unknown prediction table {name!r}; one of {TABLES}")
        return self.dir / f"{name}.parquet"

    @property
    def predictions(self) -> Path:
        """The held-out (out-of-fold) predictions."""
        return self.table(HELDOUT)

    @property
    def inner_val_predictions(self) -> Path:
        return self.table(INNER_VAL)

    @property
    def test_predictions(self) -> Path:
        return self.table(TEST)

    @property
    def calibration(self) -> Path:
        """The fitted calibration map (``medres.training.calibrate``)."""
        return self.dir / "calibration.json"

    @property
    def train_patients(self) -> Path:
        """The training patients of a learning-curve sub-run's fold."""
        return self.dir / "train_patients.csv"

    @property
    def seg_dir(self) -> Path:
        return self.dir / _SEG

    def seg_path(self, case_id: str, suffix: str = ".nii.gz") -> Path:
        """A case's mask in ``seg/``, named by ``medres.layout.case_file_stem``."""
        return _seg_path(self.seg_dir, case_id, suffix)

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    def weights_digest(self, rank: int) -> Path:
        """The SHA-256 of rank ``rank``'s parameters after distributed training."""
        return self.dir / f"weights_rank{int(rank)}.sha256"

    @property
    def lock(self) -> Path:
        """Held while a process trains the fold (``medres.training.run_guard``)."""
        return self.dir / _LOCK

    @property
    def member(self) -> str:
        """The fold's ensemble member name (:func:`member_name`)."""
        if self.index is None:
            raise ValueError(f"{self.dir.name!r} is not a fold_<k> folder")
        return member_name(self.index)

    def checkpoints(self) -> list[Path]:
        """The checkpoint files present, sorted by name."""
        return sorted(self.dir.glob("checkpoint_*.pt"))

    def predicting_checkpoint(self) -> Path:
        """The checkpoint the fold predicts with: the best, else the last (which may not exist yet)."""
        for name in CHECKPOINTS_BEST_FIRST:
            if (self.dir / name).exists():
                return self.dir / name
        return self.dir / CHECKPOINTS_BEST_FIRST[-1]


@dataclass(frozen=True)
class EnsembleFolder:
    """``ensemble/`` of a run: the fold ensemble's predictions of the test split."""

    dir: Path

    @property
    def test_predictions(self) -> Path:
        return self.dir / f"{TEST}.parquet"

    @property
    def seg_dir(self) -> Path:
        return self.dir / _SEG

    def seg_path(self, case_id: str, suffix: str = ".nii.gz") -> Path:
        return _seg_path(self.seg_dir, case_id, suffix)


@dataclass(frozen=True)
class ReportFolder:
    """A report bundle's folder: the run's ``report/`` or an ``evaluate --output``."""

    dir: Path

    @property
    def html(self) -> Path:
        return self.dir / _REPORT_HTML

    @property
    def summary(self) -> Path:
        """The long-format metric records (``medres.report.bundle``)."""
        return self.dir / _SUMMARY

    @property
    def predictions_csv(self) -> Path:
        return self.dir / _PREDICTIONS_CSV

    @property
    def seg_cases(self) -> Path:
        return self.dir / _SEG_CASES

    @property
    def cohort(self) -> Path:
        return self.dir / _COHORT

    @property
    def case_keys(self) -> Path:
        """The case-key table, kept apart from the shareable files."""
        return self.dir / _CASE_KEYS

    @property
    def evaluation_dir(self) -> Path:
        """The evaluation's per-case tables (``medres.report.evaluation_tables``)."""
        return self.dir / _EVALUATION

    @property
    def saved_seg_cases(self) -> Path:
        """The held-out masks' scores per case and class, as evaluate computed them."""
        return self.dir / _SAVED_SEG

    @property
    def saved_test_seg_cases(self) -> Path:
        """The test split's mask scores per case and class: each fold's and the ensemble's."""
        return self.dir / _SAVED_TEST_SEG

    @property
    def saved_spacing(self) -> Path:
        """Each held-out case's voxel spacing."""
        return self.dir / _SAVED_SPACING

    @property
    def saved_gallery(self) -> Path:
        """The worst cases evaluate drew, with their note."""
        return self.dir / _SAVED_GALLERY


@dataclass(frozen=True)
class RunFolder:
    """``runs/<name>/``: every path training, prediction, evaluation and export use in a run."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """The resolved configuration the run was trained with."""
        return self.root / "config.yaml"

    @property
    def folds_csv(self) -> Path:
        """The patient-to-fold split (``patient_id,fold``)."""
        return self.root / "folds.csv"

    @property
    def log(self) -> Path:
        """Library log lines of the training processes."""
        return self.root / "train.log"

    @property
    def lock(self) -> Path:
        """Held briefly while a job writes the files all fold jobs share."""
        return self.root / _LOCK

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_lock(self) -> Path:
        """Held around each write to :attr:`mlflow_db` (fold jobs share it)."""
        return self.root / ".mlflow.lock"

    @property
    def ensemble(self) -> EnsembleFolder:
        return EnsembleFolder(self.root / "ensemble")

    @property
    def ensemble_dir(self) -> Path:
        return self.ensemble.dir

    @property
    def report(self) -> ReportFolder:
        """The run's own report bundle (``python -m medres.evaluate`` without ``--output``)."""
        return ReportFolder(self.root / "report")

    @property
    def report_dir(self) -> Path:
        return self.report.dir

    def fold(self, k: int) -> FoldFolder:
        return FoldFolder(self.root / fold_name(k), int(k))

    def member(self, name: str) -> FoldFolder:
        """The fold of an ensemble member name ``fold<k>``."""
        return self.fold(member_fold(name))

    def folds(self) -> list[FoldFolder]:
        """Every ``fold_<k>/`` folder present, by fold number."""
        found = [(k, p) for p in self.root.glob(f"{_FOLD_PREFIX}*")
                 if p.is_dir() and (k := fold_index(p)) is not None]
        return [FoldFolder(p, k) for k, p in sorted(found)]

    def tables_glob(self, name: str = HELDOUT) -> str:
        """A glob pattern for the prediction table ``name`` of every fold (to show a user)."""
        return str(self.root / f"{_FOLD_PREFIX}*" / FoldFolder(self.root).table(name).name)

    def trained_folds(self) -> list[int]:
        """The fold numbers with a checkpoint to predict with, sorted."""
        return [int(f.index) for f in self.folds() if f.predicting_checkpoint().exists()]

    def predicting_checkpoint(self, k: int) -> Path:
        """Fold ``k``'s checkpoint for prediction: the best, else the last."""
        return self.fold(k).predicting_checkpoint()

    @classmethod
    def of_checkpoint(cls, path: str | os.PathLike[str]) -> RunFolder | None:
        """The run a fold's checkpoint lies in (``<run>/fold_<k>/<file>``), or None when it lies elsewhere."""
        run = cls(Path(path).absolute().parent.parent)
        return run if is_run(run.root) else None
