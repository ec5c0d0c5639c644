"""A whole cross-validated run: cohort, folds, each fold's training and predictions, then the evaluation.

Layout (DESIGN.md): ``runs/<name>/config.yaml``, ``folds.csv`` and ``fold_k/{checkpoint_last.pt,
checkpoint_best.pt, metrics.csv, predictions.parquet, inner_val_predictions.parquet, ...}``.
Folds are independent jobs: ``folds=[k]`` trains one; the evaluation runs once every fold has its
predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medres.config import Config, save_resolved
from medres.engine.distributed import DistInfo, barrier, broadcast_object
from medres.engine.fold import FoldData, build_model, load_best_weights, train_fold
from medres.engine.loop import LoopState
from medres.engine.precision import FastPath
from medres.errors import ConfigError, DataError

__all__ = ["Run", "run_cv", "load_cohort"]

log = logging.getLogger("medres.engine")


@dataclass
class Run:
    """What a run produced, for notebooks: the folder, and per fold its metrics and predictions."""

    run_dir: Path
    config: Config
    metrics: dict[int, pd.DataFrame] = field(default_factory=dict)  # fold -> metrics.csv
    predictions: dict[int, pd.DataFrame] = field(default_factory=dict)  # fold -> predictions.parquet
    states: dict[int, LoopState] = field(default_factory=dict)
    report: Path | None = None

    @property
    def oof(self) -> pd.DataFrame:
        """All folds' out-of-fold predictions in one table."""
        frames = [df for _, df in sorted(self.predictions.items())]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _image_folder_manifest(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """ImageNet-style ``folder/<class>/<image>`` (or ``folder/{train,val}/<class>/<image>``, val being the
    test split): a manifest, one row per image, and the sorted class names."""
    if not folder.is_dir():
        raise DataError("image folder not found", path=folder, hint="check data.image_folder")
    parts = {"train": folder / "train", "test": folder / "val"}
    if not all(p.is_dir() for p in parts.values()):
        parts = {"train": folder}
    classes = sorted(p.name for p in parts["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class subfolders found", path=folder,
                        hint="put the images of each class in a subfolder named after it")
    rows = []
    for split, root in parts.items():
        for c in classes:
            for f in sorted((root / c).iterdir()) if (root / c).is_dir() else []:
                if f.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    case = f"{split}/{c}/{f.stem}" if len(parts) > 1 else f"{c}/{f.stem}"
                    rows.append({"case_id": case, "patient_id": case, "image": str(f), "mask": "", "label": c,
                                 "split": split})
    if not rows:
        raise DataError("no PNG/JPEG images in the class subfolders", path=folder)
    return pd.DataFrame(rows, dtype=str), classes


def load_cohort(cfg: Config, *, is_main: bool = True) -> tuple[Config, pd.DataFrame]:
    """The manifest as a DataFrame (the demo cohort generated first when configured) and the config with
    ``data.manifest`` / ``data.labels`` filled in for the run."""
    from medres.data import read_manifest

    d = cfg.data
    if d.image_folder is not None:
        df, classes = _image_folder_manifest(Path(d.image_folder))
        if cfg.model.num_classes != len(classes) and d.labels != classes:
            raise ConfigError(f"{len(classes)} class folders but model.num_classes={cfg.model.num_classes}",
                              field="model.num_classes", hint=f"set model.num_classes={len(classes)}")
        data = d.model_copy(update={"labels": classes, "mask_column": None, "positive_label": None})
        return cfg.model_copy(update={"data": data}), df
    if d.manifest is None:
        if d.demo is None:
            raise ConfigError("no data: set data.manifest (a CSV), data.image_folder or data.demo",
                              field="data.manifest")
        from medres.data.demo import generate_demo

        if is_main:
            log.info("demo cohort: %s (generated on first use, %d patients)", Path(d.demo.out).resolve(),
                     d.demo.n_patients)
            manifest = generate_demo(d.demo.out, n_patients=d.demo.n_patients, seed=d.demo.seed)
        barrier()
        manifest = broadcast_object(str(manifest) if is_main else None)
        cfg = cfg.model_copy(update={"data": d.model_copy(update={"manifest": str(manifest)})})
    df = read_manifest(cfg.data.manifest, vocabulary=cfg.data.labels, root=cfg.data.root)
    return cfg, df


def _fold_data(cfg: Config, df: pd.DataFrame, folds: pd.DataFrame, k: int, test: pd.DataFrame) -> FoldData:
    from medres.cv import fold_split, inner_validation_split
    from medres.data.datasets import manifest_to_records

    train_df, held_df = fold_split(df, folds, k)
    tr_ids, val_ids = inner_validation_split(train_df, fraction=cfg.cv.val_fraction, seed=cfg.cv.seed + k,
                                             labels=cfg.data.labels)
    val_set = set(map(str, val_ids))
    in_val = train_df["patient_id"].astype(str).isin(val_set).to_numpy()
    rec = lambda frame: manifest_to_records(frame, cfg.data) if len(frame) else []  # noqa: E731
    return FoldData(fold=k, train=rec(train_df[~in_val]), inner_val=rec(train_df[in_val]),
                    heldout=rec(held_df), test=rec(test))


def run_cv(cfg: Config, *, fast: FastPath, dist_info: DistInfo | None = None,
           folds: Sequence[int] | None = None, resume: bool = False, force: bool = False,
           progress: bool = False,
           should_stop: Callable[[], int | None] = lambda: None, evaluate: bool = True,
           predict: bool = True) -> Run:
    """Train the configured folds (all by default) and write their predictions; evaluate when complete.

    ``predict=False`` only trains (a later ``resume=True`` run finds the folds finished and predicts).
    """
    from medres.cv import audit_folds, make_folds, read_folds, split_test, write_folds

    dist_info = dist_info or DistInfo()
    run_dir = Path(cfg.output.dir) / cfg.output.name
    cfg, df = load_cohort(cfg, is_main=dist_info.is_main)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "config.yaml")
    dev, test = split_test(df)
    if cfg.cv.folds_file is not None:
        fold_table = read_folds(cfg.cv.folds_file, n_folds=cfg.cv.folds)
    elif resume and (run_dir / "folds.csv").exists():
        fold_table = read_folds(run_dir / "folds.csv", n_folds=cfg.cv.folds)
    else:
        fold_table = make_folds(df, n_folds=cfg.cv.folds, seed=cfg.cv.seed, labels=cfg.data.labels)
    audit_folds(df, fold_table)
    if dist_info.is_main:
        write_folds(fold_table, run_dir / "folds.csv")
        log.info("run folder: %s (%d scans, %d folds%s)", run_dir.resolve(), len(df), cfg.cv.folds,
                 f", {len(test)} test scans held out" if len(test) else "")

    wanted = list(range(cfg.cv.folds)) if folds is None else list(folds)
    bad = [k for k in wanted if not 0 <= k < cfg.cv.folds]
    if bad:
        raise ConfigError(f"fold {bad[0]} does not exist (cv.folds={cfg.cv.folds})", field="cv.folds",
                          hint=f"use --fold 0..{cfg.cv.folds - 1}")
    result = Run(run_dir=run_dir, config=cfg)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else (run_dir / ".cache" if
                                                                     cfg.data.cache == "disk" else None)
    for k in wanted:
        fold_dir = run_dir / f"fold_{k}"
        data = _fold_data(cfg, df, fold_table, k, test)
        log.info("fold %d/%d: %d training, %d inner-validation, %d held-out scans", k + 1, cfg.cv.folds,
                 len(data.train), len(data.inner_val), len(data.heldout))
        result.states[k] = train_fold(cfg, data, fold_dir, fast=fast, dist_info=dist_info, resume=resume,
                                      force=force, progress=progress, should_stop=should_stop,
                                      cache_dir=cache_dir)
        if dist_info.is_main:
            if predict:
                _predict_fold(cfg, data, fold_dir, run_dir, fast)
            result.metrics[k] = pd.read_csv(fold_dir / "metrics.csv")
            if (fold_dir / "predictions.parquet").exists():
                result.predictions[k] = pd.read_parquet(fold_dir / "predictions.parquet")
        barrier()

    complete = all((run_dir / f"fold_{k}" / "predictions.parquet").exists() for k in range(cfg.cv.folds))
    if dist_info.is_main and predict and complete and len(test):  # issue 10: the test split by the ensemble
        from medres.data.datasets import manifest_to_records
        from medres.engine.ensemble import write_test_ensemble

        write_test_ensemble(run_dir, manifest_to_records(test, cfg.data), cfg, device=fast.device)
    if dist_info.is_main and evaluate and predict and complete:
        result.report = _evaluate(run_dir)
    elif dist_info.is_main and not complete:
        log.info("folds still to train before the evaluation: %s", [k for k in range(cfg.cv.folds) if not (
            run_dir / f"fold_{k}" / "predictions.parquet").exists()])
    return result


def _predict_fold(cfg: Config, data: FoldData, fold_dir: Path, run_dir: Path, fast: FastPath) -> None:
    """Held-out, inner-validation (and test) predictions of the fold's best model (DESIGN.md contract)."""
    model = build_model(cfg)
    load_best_weights(model, fold_dir)
    model = model.to(fast.device).eval()
    from medres.engine.inference import write_fold_predictions

    sets = (("predictions", data.heldout, True), ("inner_val_predictions", data.inner_val, False),
            ("test_predictions", data.test, True))
    for name, records, masks in sets:
        if records:
            write_fold_predictions(run_dir, data.fold, model, records, cfg, name, masks=masks,
                                   device=fast.device)
    from medres.engine.calibrate import calibrate_fold  # issue 10: fitted on inner validation only

    calibrate_fold(fold_dir, cfg)
    log.info("fold %d predictions: %s", data.fold, (fold_dir / "predictions.parquet").resolve())


def _evaluate(run_dir: Path) -> Path | None:
    try:
        from medres.evaluate import evaluate_run
    except ImportError:
        log.info("evaluation not available yet; the predictions are in %s/fold_*/predictions.parquet",
                 run_dir.resolve())
        return None
    out: Any = evaluate_run(run_dir)
    report = Path(out) if isinstance(out, (str, Path)) else getattr(out, "report", None)
    if report is not None:
        log.info("report: %s", Path(report).resolve())
    return report
