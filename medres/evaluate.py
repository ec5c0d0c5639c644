"""``python -m medres.evaluate --run runs/NAME [--output DIR] [--compare runs/OTHER]``: the report bundle.

Reads a run folder, computes per-case segmentation metrics (predicted masks against the manifest's
reference masks, in the source scan's geometry and spacing), the voxel spacing of every scan, the
worst-case gallery (with the classification head's Grad-CAM when the fold's checkpoint and the data
pipeline are available), and hands everything to `medres.report.build_bundle`. Written files:
``report.html``, ``summary.json``, ``predictions.csv``, ``seg_cases.csv``, ``cohort.csv`` in
``--output`` (default ``runs/NAME/report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medres.errors import ConfigError, DataError
from medres.metrics.segmentation import segmentation_metrics
from medres.report import GalleryItem, build_bundle, load_run, provenance
from medres.report.cohort import SPACING_COLUMNS
from medres.report.figures import gallery_figure
from medres.report.run_folder import RunData

__all__ = ["evaluate_run", "segmentation_cases", "add_spacing", "worst_cases", "main"]

log = logging.getLogger("medres.evaluate")

SEG_POLICY = (
    "Empty-mask policy (medres.metrics.segmentation): reference and prediction both empty gives Dice = IoU = "
    "NSD = 1 and no distance; one of them empty gives Dice = IoU = NSD = 0 and no distance. Undefined "
    "values are left out of means and counted: n is the number of cases where a metric is defined. Rows "
    "marked '(reference present)' keep only cases whose reference mask holds the class. NSD tolerance: "
    "{tol} mm. Distances in mm from the voxel spacing of the source scan."
)


def _load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxel array and spacing (mm per axis) of a scan or mask.

    NIfTI is read with nibabel directly (the array as stored, as medres's reader gives it, without
    importing MONAI); DICOM and the rest go through `medres.data.load_image`.
    """
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            return np.asarray(img.dataobj), np.asarray(img.header.get_zooms(), dtype=np.float64)[: img.ndim]
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read NIfTI: {type(exc).__name__}", path=path, hint="the file is damaged or not NIfTI"
            ) from None
    from medres.data import load_image

    img = load_image(path)
    spacing = np.asarray(img.meta.get("spacing", [1.0] * img.ndim), dtype=np.float64)
    return np.asarray(img), spacing[: img.ndim]


def segmentation_cases(run: RunData) -> pd.DataFrame:
    """Per case and foreground class: Dice, IoU, HD, HD95, ASSD, NSD, volumes, and the empty-mask flag.

    Uses the rows with a ``seg_path`` (relative to the run folder) and a reference ``mask``.
    """
    cfg = run.config
    classes = {int(k): v for k, v in cfg.data.mask_labels.items() if int(k) != 0}
    rows = []
    preds = run.predictions
    if "seg_path" not in preds.columns or "mask" not in preds.columns:
        return pd.DataFrame()
    for r in preds.itertuples(index=False):
        seg_path, mask_path = r.seg_path, r.mask
        if not isinstance(seg_path, str) or not seg_path or not isinstance(mask_path, str) or not mask_path:
            continue
        pred, _ = _load(run.run_dir / seg_path)
        ref, spacing = _load(mask_path)
        if pred.shape != ref.shape:
            raise DataError(
                f"predicted mask {pred.shape} and reference mask {ref.shape} differ in shape",
                path=run.run_dir / seg_path,
                case_id=r.case_id,
                hint="predicted masks must be written in the source scan's geometry; re-run inference",
            )
        results = segmentation_metrics(
            np.rint(pred).astype(np.int64),
            np.rint(ref).astype(np.int64),
            spacing,
            classes=classes,
            nsd_tolerance_mm=cfg.evaluate.nsd_tolerance_mm,
        )
        for name, res in results.items():
            rows.append(
                {
                    "case_id": r.case_id,
                    "patient_id": r.patient_id,
                    "fold": int(r.fold),
                    "class": name,
                    **res.as_dict(),
                    "empty": res.empty,
                }
            )
    return pd.DataFrame(rows)


def add_spacing(preds: pd.DataFrame) -> pd.DataFrame:
    """Add ``spacing_x_mm``, ``spacing_y_mm``, ``spacing_z_mm`` of each case's (first) image."""
    import nibabel as nib

    out = preds.copy()
    if "image" not in out.columns:
        return out
    values = []
    for path in out["image"]:
        first = path[0] if isinstance(path, (list, tuple, np.ndarray)) else path
        try:
            if str(first).endswith((".nii", ".nii.gz")):
                sp = np.asarray(nib.load(str(first)).header.get_zooms()[:3], dtype=np.float64)
            else:
                sp = _load(first)[1]
        except (DataError, OSError):
            sp = np.array([])
        values.append(list(sp[:3]) + [np.nan] * (3 - min(3, sp.size)))
    out[list(SPACING_COLUMNS)] = np.asarray(values, dtype=np.float64)
    return out


def worst_cases(run: RunData, seg_cases: pd.DataFrame, k: int = 4) -> list[tuple[str, str]]:
    """Up to ``k`` (case_id, why) pairs: the worst classification errors and the lowest Dice scores."""
    from medres.report import binary_task

    task = binary_task(run.config)
    p = run.predictions
    y = p["y_true"].to_numpy() == task.index
    score = p[task.score_col].to_numpy(np.float64)
    err = np.where(y, 1 - score, score)
    order = np.argsort(-err, kind="stable")
    picks: dict[str, str] = {}
    n_cls = k // 2 if len(seg_cases) else k
    for i in order[:n_cls]:
        picks[p["case_id"].iloc[i]] = f"classification error {err[i]:.2f}"
    if len(seg_cases):
        present = seg_cases[seg_cases["empty"] != "both"].sort_values("dice", kind="stable")
        for case, dice in zip(present["case_id"], present["dice"]):
            if len(picks) >= k:
                break
            picks.setdefault(case, f"Dice {dice:.2f}")
    return list(picks.items())


def _slice(volume: np.ndarray, z: int) -> np.ndarray:
    return volume if volume.ndim == 2 else volume[..., z]


def gallery(run: RunData, seg_cases: pd.DataFrame, k: int = 4) -> tuple[list[GalleryItem], str]:
    """The worst cases drawn: source slice with reference and predicted outlines, and Grad-CAM if possible."""
    from medres.report import binary_task, case_labels

    task = binary_task(run.config)
    labels, _ = case_labels(run.predictions)
    by_case = run.predictions.set_index("case_id")
    cams = _GradCam(run)
    items = []
    for case, why in worst_cases(run, seg_cases, k):
        r = by_case.loc[case]
        image_path = r["image"][0] if isinstance(r["image"], (list, tuple, np.ndarray)) else r["image"]
        image, _ = _load(image_path)
        ref = _load(r["mask"])[0] > 0 if isinstance(r.get("mask"), str) and r["mask"] else None
        seg_path = r.get("seg_path")
        pred = _load(run.run_dir / seg_path)[0] > 0 if isinstance(seg_path, str) and seg_path else None
        if ref is not None and ref.shape != image.shape:
            ref = None
        if pred is not None and pred.shape != image.shape:
            pred = None
        area = next((m for m in (ref, pred) if m is not None and m.any()), None)
        z = (
            int(np.argmax(area.reshape(-1, area.shape[-1]).sum(0)))
            if area is not None and image.ndim == 3
            else (image.shape[-1] // 2 if image.ndim == 3 else 0)
        )
        cam = cams(r, image.shape, z)
        title = (
            f"{labels[case]} (fold {int(r['fold'])}): {run.labels[int(r['y_true'])]}, "
            f"p({task.positive})={r[task.score_col]:.2f}"
        )
        src = gallery_figure(
            _slice(image, z),
            None if ref is None else _slice(ref, z),
            None if pred is None else _slice(pred, z),
            cam,
            title=title,
        )
        items.append(GalleryItem(labels[case], src, f"{why}; slice {z}"))
    note = (
        "Worst cases: the largest classification errors (|label - p|) and the lowest Dice scores. "
        "Green: reference mask, red: predicted mask, on the source scan. " + cams.note
    )
    return items, note


class _GradCam:
    """Grad-CAM (MONAI) of the classification head on a case, resampled to the source slice grid.

    Needs the fold's checkpoint (`medres.engine.checkpoint.load_model`) and the evaluation transforms
    (`medres.data.transforms.build_transforms`); when either is missing ``note`` says why and no map is drawn.
    """

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.models: dict[int, object] = {}
        self.note = ""
        self.ok = run.config.model.cls_head
        if not self.ok:
            self.note = "Grad-CAM not shown: the model has no classification head."
        elif not run.checkpoints:
            self.ok = False
            self.note = "Grad-CAM not shown: the run folder holds no checkpoints."

    def _model(self, fold: int):
        if fold not in self.models:
            from medres.engine.checkpoint import load_model

            fd = self.run.run_dir / f"fold_{fold}"
            ckpt = next(
                (fd / n for n in ("checkpoint_best.pt", "checkpoint_last.pt") if (fd / n).is_file()), None
            )
            if ckpt is None:
                raise FileNotFoundError(f"no checkpoint in fold_{fold}")
            self.models[fold] = load_model(ckpt)[0]
        return self.models[fold]

    def __call__(self, row: pd.Series, shape: tuple[int, ...], z: int) -> np.ndarray | None:
        if not self.ok:
            return None
        try:
            import torch
            from monai.visualize import GradCAM

            from medres.data.transforms import build_transforms

            model = self._model(int(row["fold"]))
            cfg = self.run.config
            sample = build_transforms(cfg.data, train=False)({"image": row["image"], "mask": row["mask"]})
            image = torch.as_tensor(np.asarray(sample["image"]))[None].float()
            cam_net = GradCAM(nn_module=_ClsLogits(model), target_layers=_last_conv_layer(model))
            cam = cam_net(image, class_idx=self._positive()).detach().numpy()[0, 0]
        except Exception as exc:  # noqa: BLE001 - any failure only drops the map, with the reason shown
            self.ok = False
            self.note = f"Grad-CAM not shown: {type(exc).__name__}: {str(exc)[:160]}"
            return None
        self.note = (
            "Right: Grad-CAM (MONAI) of the classification head for the positive class, on the "
            "model's input grid, resized to the source slice (orientation may differ)."
        )
        return _resize(
            _slice(cam, int(round(z * cam.shape[-1] / shape[-1]))) if cam.ndim == 3 else cam, shape[:2]
        )

    def _positive(self) -> int:
        from medres.report import binary_task

        return binary_task(self.run.config).index


def _ClsLogits(model):  # noqa: N802 - a module factory
    import torch

    class ClsLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out.cls_logits if hasattr(out, "cls_logits") else out

    return ClsLogits(model)


def _last_conv_layer(model) -> str:
    """Name (as seen from the ClsLogits wrapper) of the encoder's last convolution-bearing stage."""
    import torch

    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
        and not any(k in n for k in ("seg", "decoder", "head"))
    ]
    if not names:
        raise ValueError("no convolution found in the encoder")
    return "inner." + names[-1]


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    return zoom(a, (shape[0] / a.shape[0], shape[1] / a.shape[1]), order=1)


def evaluate_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    compare: str | Path | None = None,
    *,
    gallery_size: int = 4,
) -> Path:
    """Write the report bundle of a run folder; returns the path of ``report.html``."""
    run = load_run(run_dir)
    out = Path(output) if output is not None else run.run_dir / "report"
    run.predictions = add_spacing(run.predictions)
    seg = segmentation_cases(run) if run.has_seg else pd.DataFrame()
    items, note = gallery(run, seg, gallery_size)
    other = load_run(compare) if compare is not None else None
    prov = provenance(run.config, run.run_dir, run.checkpoints, report_seed=run.config.train.seed)
    build_bundle(
        run,
        out,
        seg_cases=seg if len(seg) else None,
        gallery=items,
        provenance=prov,
        compare=other,
        seg_policy=SEG_POLICY.format(tol=run.config.evaluate.nsd_tolerance_mm),
        gallery_note=note,
    )
    log.info("report written to %s", out / "report.html")
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the run folder (runs/NAME)")
    parser.add_argument("--output", help="where to write the bundle (default: RUN/report)")
    parser.add_argument(
        "--compare", help="another run folder: paired DeLong and paired bootstrap differences"
    )
    parser.add_argument("--gallery", type=int, default=4, help="number of worst cases shown (default 4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = evaluate_run(args.run, args.output, args.compare, gallery_size=args.gallery)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
