"""A small run folder written exactly to the run-folder contract (contracts: DESIGN.md "Run folder").

Used by the report, evaluate and notebook tests until (and beside) a real training run: it holds
``config.yaml``, ``folds.csv``, a manifest with image/mask NIfTIs, and per fold
``predictions.parquet``, ``inner_val_predictions.parquet`` and ``seg/<case_id>.nii.gz`` (predicted
masks in the source scan's geometry). Scores are drawn so that the positive class ranks higher, with
a known seed; patient ids are deliberately recognisable strings so tests can check they never leak.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from medres.config import Config

LABELS = ["normal", "nodule"]
SITES = ["north", "south", "east"]
SCANNERS = ["ScannerA", "ScannerB"]
SHAPE = (16, 16, 8)
SPACING = (0.8, 0.8, 2.5)
FINDINGS = ["opacity", "effusion", "cardiomegaly"]
#: the tasks of ``write_synthetic_run(tasks=True)``: the single label, findings and a ratio
TASKS = [
    {"name": "diagnosis", "type": "binary", "column": "label", "classes": list(LABELS)},
    {"name": "findings", "type": "multilabel", "columns": FINDINGS},
    {"name": "heart", "type": "regression", "column": "ctr", "unit": "ratio", "interval": 0.9},
]
#: fold 0's calibration.json thresholds of the findings (the other folds name none: 0.5)
FOLD0_THRESHOLDS = {"opacity": 0.4, "effusion": 0.6, "cardiomegaly": 0.3}


def patient_id(i: int) -> str:
    """A recognisable patient id, so a leak into the report is easy to find."""
    return f"SECRETPAT{i:04d}"


def _write_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _sphere(center, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
    scaled = (grid - np.asarray(center)) * np.asarray(SPACING)
    return (np.linalg.norm(scaled, axis=-1) <= radius).astype(np.uint8)


def write_synthetic_run(
    root: Path,
    *,
    name: str = "synth",
    n_patients: int = 30,
    n_folds: int = 3,
    seed: int = 0,
    separation: float = 1.5,
    with_seg: bool = True,
    bootstrap_resamples: int = 200,
    extra_scans: int = 6,
    dicom_image: Path | None = None,
    case_ids_with_patient_id: bool = False,
    n_test_patients: int = 0,
    leave_site_out: bool = False,
    test_site: str | None = None,
    tasks: bool = False,
) -> Path:
    """Write a manifest, its NIfTIs and a run folder under ``root``; return the run folder.

    ``extra_scans`` patients get a second scan (so patient clustering matters). With ``dicom_image``
    the first case's image is that DICOM file (copied), to check DICOM fields never leak. With
    ``case_ids_with_patient_id`` case ids embed the patient id (``SECRETPAT0001_S0``), as the demo's do.
    ``n_test_patients`` more patients form a ``split=test`` set that every fold's model predicts
    (``fold_k/test_predictions.parquet``). ``leave_site_out``: ``cv.strategy: leave_group_out`` on
    ``site``, fold k holding out the k-th site in text order (``n_folds`` is then the number of sites).
    ``test_site``: the test patients' site (e.g. one absent from development).
    ``tasks``: the configuration lists `TASKS` and the tables hold their columns (tasks contract), drawn
    from a second generator so the single-label columns stay as without; fold 0's calibration.json names
    `FOLD0_THRESHOLDS`.
    """
    rng = np.random.default_rng(seed)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    run = root / "runs" / name
    run.mkdir(parents=True, exist_ok=True)

    rows = []
    for i in range(n_patients + n_test_patients):
        y = int(i % 3 == 0)  # prevalence 1/3
        n_scans = 2 if i < extra_scans else 1
        for s in range(n_scans):
            case = f"{patient_id(i)}_S{s}" if case_ids_with_patient_id else f"case{i:03d}_{s}"
            rows.append(
                {
                    "case_id": case,
                    "patient_id": patient_id(i),
                    "label": LABELS[y],
                    "y": y,
                    "site": test_site if test_site and i >= n_patients else SITES[(i // 3) % 3],
                    "scanner": SCANNERS[(i // 5) % 2],
                    "sex": "F" if i % 2 else "M",
                    "age": str(35 + (i * 7) % 50),
                    "smoker": "yes" if i % 4 == 0 else "no",
                }
            )
    manifest = pd.DataFrame(rows)
    task_rng = np.random.default_rng(seed + 1000)
    if tasks:  # findings 0/1 with a few unknown cells (NaN); ctr a ratio
        for c, prevalence in zip(FINDINGS, (0.4, 0.3, 0.35)):
            manifest[c] = (task_rng.random(len(manifest)) < prevalence).astype(float)
        manifest.loc[manifest.index[::7], "effusion"] = np.nan
        manifest["ctr"] = np.round(task_rng.normal(0.5, 0.06, len(manifest)), 4)
    if n_test_patients:
        test_ids = {patient_id(i) for i in range(n_patients, n_patients + n_test_patients)}
        manifest["split"] = np.where(manifest.patient_id.isin(test_ids), "test", "train")

    for k, row in manifest.iterrows():
        img = rng.normal(0, 20, SHAPE).astype(np.float32) - 600
        mask = np.zeros(SHAPE, np.uint8)
        if row.y:
            mask = _sphere((8 + rng.integers(-2, 3), 8 + rng.integers(-2, 3), 4), radius=3.0)
            img[mask > 0] = 40
        img_path = data / "images" / f"{row.case_id}_img.nii.gz"
        mask_path = data / "images" / f"{row.case_id}_mask.nii.gz"
        _write_nifti(img_path, img)
        _write_nifti(mask_path, mask)
        manifest.loc[k, "image"] = f"images/{img_path.name}"
        manifest.loc[k, "mask"] = f"images/{mask_path.name}"
    if dicom_image is not None:
        target = data / "images" / "first_scan.dcm"
        target.write_bytes(Path(dicom_image).read_bytes())
        manifest.loc[0, "image"] = f"images/{target.name}"
    manifest.drop(columns="y").to_csv(data / "manifest.csv", index=False)

    cfg = Config()
    cfg.data.manifest = str(data / "manifest.csv")
    cfg.data.labels = list(LABELS)
    if leave_site_out:
        n_folds = len(SITES)
        cfg.cv.strategy, cfg.cv.group_column = "leave_group_out", "site"
    cfg.cv.folds = n_folds
    cfg.model.seg_head = with_seg
    cfg.evaluate.bootstrap_resamples = bootstrap_resamples
    cfg.evaluate.subgroups = ["site", "scanner", "sex", "age_band", "smoker"]
    cfg.evaluate.min_positives = 3
    cfg.output.dir = str(root / "runs")
    cfg.output.name = name
    dumped = cfg.model_dump(mode="json")
    if tasks:
        dumped["tasks"] = TASKS
        Config.model_validate(dumped)
    (run / "config.yaml").write_text(yaml.safe_dump(dumped, sort_keys=False))

    manifest["y"] = [LABELS.index(v) for v in manifest.label]
    test_df = manifest[manifest.get("split", pd.Series("train", index=manifest.index)) == "test"]
    manifest = manifest.drop(index=test_df.index)
    patients = manifest.patient_id.unique()
    # stratified by label: every fold gets positives and negatives
    positive = manifest.groupby("patient_id", sort=False)["y"].max().reindex(patients).to_numpy()
    fold_of = {}
    for cls in (0, 1):
        for j, p in enumerate(patients[positive == cls]):
            fold_of[p] = j % n_folds
    if leave_site_out:
        site_of = dict(zip(manifest.patient_id, manifest.site))
        fold_of = {p: sorted(SITES).index(site_of[p]) for p in patients}
    pd.DataFrame({"patient_id": patients, "fold": [fold_of[p] for p in patients]}).to_csv(
        run / "folds.csv", index=False
    )

    def predictions(df: pd.DataFrame, fold: int, write_seg: bool) -> pd.DataFrame:
        logit = rng.normal(0, 1, len(df)) + separation * df.y.to_numpy() - 0.5
        p1 = 1 / (1 + np.exp(-logit))
        out = pd.DataFrame(
            {
                "case_id": df.case_id.to_numpy(),
                "patient_id": df.patient_id.to_numpy(),
                "fold": fold,
                "y_true": df.y.to_numpy().astype(int),
                f"p_{LABELS[0]}": 1 - p1,
                f"p_{LABELS[1]}": p1,
                "y_pred": (p1 >= 0.5).astype(int),
            }
        )
        for col in ("site", "scanner", "sex", "age", "smoker"):
            out[col] = df[col].to_numpy()
        if tasks:
            for c in FINDINGS:
                truth = df[c].to_numpy()
                z = task_rng.normal(0, 1, len(df)) + 2.0 * np.nan_to_num(truth) - 1.0
                out[f"y_{c}"], out[f"logit_{c}"], out[f"p_{c}"] = truth, z, 1 / (1 + np.exp(-0.8 * z))
            truth = df["ctr"].to_numpy()
            pred = 0.8 * truth + 0.1 + task_rng.normal(0, 0.03, len(df))
            out["y_heart"], out["pred_heart"] = truth, pred  # a regression task's columns: its name
            out["pred_heart_lo"], out["pred_heart_hi"] = pred - 0.05, pred + 0.05
        out["image"] = [str(data / p) for p in df["image"]]
        out["mask"] = [str(data / p) for p in df["mask"]]
        if with_seg and write_seg:
            seg_dir = run / f"fold_{fold}" / "seg"
            seg_dir.mkdir(parents=True, exist_ok=True)
            paths = []
            for case, mask_rel in zip(df.case_id, df["mask"]):
                ref = np.asarray(nib.load(str(data / mask_rel)).dataobj)
                pred = np.roll(ref, int(rng.integers(0, 3)), axis=0)  # a shifted copy: imperfect overlap
                _write_nifti(seg_dir / f"{case}.nii.gz", pred.astype(np.uint8))
                paths.append(f"fold_{fold}/seg/{case}.nii.gz")
            out["seg_path"] = paths
        return out

    for fold in range(n_folds):
        fdir = run / f"fold_{fold}"
        fdir.mkdir(exist_ok=True)
        if tasks and fold == 0:
            columns = {c: {"method": "none", "operating_point": {"threshold": t, "method": "youden"}}
                       for c, t in FOLD0_THRESHOLDS.items()}
            findings = {"type": "multilabel", "columns": columns}
            calibration = {"method": "none", "tasks": {"findings": findings}}
            (fdir / "calibration.json").write_text(json.dumps(calibration))
        held = manifest[manifest.patient_id.map(fold_of) == fold]
        train = manifest[manifest.patient_id.map(fold_of) != fold]
        # every other training patient of each class (stratified, by patient)
        val_patients = set()
        for cls in (0, 1):
            val_patients |= set(train.loc[train.y == cls, "patient_id"].unique()[::2])
        inner = train[train.patient_id.isin(val_patients)]
        predictions(held, fold, True).to_parquet(fdir / "predictions.parquet", index=False)
        predictions(inner, fold, False).to_parquet(fdir / "inner_val_predictions.parquet", index=False)
        if len(test_df):
            predictions(test_df, fold, False).to_parquet(fdir / "test_predictions.parquet", index=False)
        pd.DataFrame(
            {
                "epoch": [1, 2],
                "lr": [1e-3, 5e-4],
                "seconds": [1.0, 1.0],
                "samples_per_s": [10.0, 10.0],
                "loss": [0.9, 0.7],
                "val_loss": [0.8, 0.75],
                "val_auroc": [0.6, 0.7],
                "val_dice": [0.3, 0.4],
            }
        ).to_csv(fdir / "metrics.csv", index=False)
    return run
