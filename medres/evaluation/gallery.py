"""The report's worst-case gallery: source slices with masks, and the classification head's Grad-CAM.

Kept apart from ``medres.report`` (which never imports torch): this module loads scans and, when the
fold's checkpoint is present, the model, to draw MONAI's Grad-CAM of the classification head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medres.evaluation.scans import first_path, load_scan, to_ras
from medres.report import GalleryItem, binary_task, case_labels
from medres.report.figures import gallery_figure
from medres.report.run_folder import RunData, has_single_label
from medres.runfolder import RunFolder

__all__ = ["worst_cases", "gallery", "radiograph_view", "radiograph_figure"]


def worst_cases(run: RunData, seg_cases: pd.DataFrame, k: int = 4) -> list[tuple[str, str]]:
    """Up to ``k`` (case_id, why) pairs: the worst classification errors and the lowest Dice scores."""
    picks: dict[str, str] = {}
    if has_single_label(run.config):  # tasks without a single-label task: the mask scores only
        task = binary_task(run.config)
        p = run.predictions
        y = p["y_true"].to_numpy() == task.index
        score = p[task.score_col].to_numpy(np.float64)
        err = np.where(y, 1 - score, score)
        n_cls = k // 2 if len(seg_cases) else k
        for i in np.argsort(-err, kind="stable")[:n_cls]:
            picks[p["case_id"].iloc[i]] = f"classification error {err[i]:.2f}"
    if len(seg_cases):
        present = seg_cases[seg_cases["empty"] != "both"].sort_values("dice", kind="stable")
        for case, dice in zip(present["case_id"], present["dice"]):
            if len(picks) >= k:
                break
            picks.setdefault(case, f"Dice {dice:.2f}")
    return list(picks.items())


def _mask(value: object, run_dir: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    path = first_path(value)
    if path is None:
        return None
    m, _, affine = load_scan(run_dir / path if run_dir is not None else path)
    m = to_ras(m > 0, affine)[0]
    return m if m.shape == shape else None


def _cut(volume: np.ndarray, z: int) -> np.ndarray:
    return volume[..., z] if volume.ndim == 3 else volume


def gallery(run: RunData, seg_cases: pd.DataFrame, k: int = 4) -> tuple[list[GalleryItem], str]:
    """The worst cases drawn: source slice with reference and predicted outlines, and Grad-CAM if possible."""
    task = binary_task(run.config)
    labels, _ = case_labels(run.predictions)
    by_case = run.predictions.set_index("case_id")
    cams = GradCam(run)
    items = []
    for case, why in worst_cases(run, seg_cases, k):
        r = by_case.loc[case]
        if run.config.data.modality == "XR":  # radiographs: the whole film as a radiologist reads it
            items.append(GalleryItem(labels[case], radiograph_figure(r, run, labels[case]), why))
            continue
        image, _, affine = load_scan(first_path(r["image"]))
        if run.config.data.spatial_dims == 2 and image.ndim == 3:  # colour [X, Y, 3]: show as grey
            image = image.mean(axis=-1)
        image, affine = to_ras(image, affine)  # masks share the scan's geometry: same reordering
        ref = _mask(r.get("mask"), None, image.shape)
        pred = _mask(r.get("seg_path"), run.run_dir, image.shape)
        area = next((m for m in (ref, pred) if m is not None and m.any()), None)
        centre = np.argwhere(area).mean(0) if area is not None else (np.asarray(image.shape) - 1) / 2
        z = int(round(centre[-1])) if image.ndim == 3 else 0
        title = (
            f"{labels[case]} (fold {int(r['fold'])}): {run.labels[int(r['y_true'])]}, "
            f"p({task.positive})={r[task.score_col]:.2f}"
        )
        src = gallery_figure(
            _cut(image, z),
            None if ref is None else _cut(ref, z),
            None if pred is None else _cut(pred, z),
            cams(r, centre, affine),
            title=title,
        )
        items.append(GalleryItem(labels[case], src, f"{why}; slice {z}"))
    note = (
        "Worst cases: the largest classification errors (|label - p|) and the lowest Dice scores. "
        "Left: the source scan, reference mask green, predicted mask red. " + cams.note
    )
    return items, note


class GradCam:
    """MONAI's Grad-CAM of the classification head (positive class) around a point of a case.

    The case goes through the evaluation transforms (`medres.data.pipeline.transforms.build_transforms`); a
    ``data.patch_size`` box centred on the point (mapped from source voxels to the model's grid through
    the affines) is fed to the fold's model (`medres.checkpoint.rebuild_model`), with the target
    layer the encoder's last stage (``backbone.layer4``). Without a classification head or checkpoints no
    map is drawn and ``note`` says why; any failure drops the maps with the reason in ``note``.
    """

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.models: dict[int, object] = {}
        self.transform = None
        self.ok = run.config.model.cls_head and bool(run.checkpoints) and has_single_label(run.config)
        self.note = (
            ""
            if self.ok
            else "Grad-CAM not shown: "
            + (
                "the model has no classification head."
                if not run.config.model.cls_head
                else "the tasks have no single-label class to explain."
                if not has_single_label(run.config)
                else "the run folder holds no checkpoints."
            )
        )

    def _model(self, fold: int):
        if fold not in self.models:
            from medres.checkpoint import rebuild_model

            ckpt = RunFolder(self.run.run_dir).predicting_checkpoint(fold)
            if not ckpt.is_file():
                raise FileNotFoundError(f"no checkpoint in {ckpt.parent.name}")
            self.models[fold] = rebuild_model(ckpt)[0]
        return self.models[fold]

    def __call__(
        self, row: pd.Series, centre: np.ndarray, src_affine: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.ok:
            return None
        try:
            slices = self._cam(row, centre, src_affine)
        except Exception as exc:  # noqa: BLE001 - a failure only drops the maps, with its reason shown
            self.ok = False
            self.note = f"Grad-CAM not shown: {type(exc).__name__}: {str(exc)[:160]}"
            return None
        self.note = (
            "Right: Grad-CAM (MONAI) of the classification head for the positive class, on the "
            "model's input grid (after the evaluation transforms; orientation may differ from the "
            "source), in a patch centred on the lesion or the scan's centre."
        )
        return slices

    def _cam(
        self, row: pd.Series, centre: np.ndarray, src_affine: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from monai.visualize import GradCAM

        cfg = self.run.config
        if self.transform is None:
            from medres.data.pipeline.transforms import build_transforms

            self.transform = build_transforms(cfg.data, train=False)
        paths = [p for p in str(row["image"]).split(";") if p]
        img = self.transform({"image": paths if len(paths) > 1 else paths[0]})["image"]  # [C, *spatial]
        spatial = np.asarray(img.shape[1:])
        point = np.ones(4)
        point[: centre.size] = centre
        ijk = np.linalg.solve(np.asarray(img.affine, dtype=float), src_affine @ point)[: spatial.size]
        size = np.minimum(np.asarray(cfg.data.patch_size), spatial)
        start = np.clip(np.round(ijk - size / 2).astype(int), 0, spatial - size)
        box = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size))
        crop = torch.as_tensor(np.asarray(img[(slice(None), *box)]), dtype=torch.float32)[None]
        model = self._model(int(row["fold"]))
        stage = getattr(getattr(model, "backbone", None), "layer4", None)
        if stage is None or not len(stage):
            raise ValueError("no encoder stage 'backbone.layer4' to take Grad-CAM from")
        layer = "inner.backbone.layer4"  # the encoder's last stage (its forward hooks fire)
        cam = (
            GradCAM(nn_module=_ClsLogits(model), target_layers=layer)(crop, class_idx=binary_task(cfg).index)
            .detach()
            .numpy()[0, 0]
        )
        background = crop[0, 0].numpy()
        if background.ndim == 3:
            zc = int(np.clip(round(ijk[2]) - start[2], 0, size[2] - 1))
            return background[..., zc], cam[..., zc]
        return background, cam


def _ClsLogits(model):  # noqa: N802 - builds a module lazily so this file imports without torch
    import torch

    class ClsLogits(torch.nn.Module):
        """The classification logits [B, K] of a dual-head model, for Grad-CAM."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out.cls_logits if hasattr(out, "cls_logits") else out

    return ClsLogits(model)


# --- radiographs ------------------------------------------------------------------------------------------
def radiograph_view(image: np.ndarray, patient_orientation: str, view: str = "") -> np.ndarray:
    """A radiograph ``[X, Y]`` as loaded (X along a row) -> ``[rows, cols]`` to draw with row 0 on top, the
    way radiologists read it: for PA/AP views the patient's right on the viewer's left, head up.

    ``patient_orientation`` is DICOM PatientOrientation ("L\\F": columns run to the patient's left, rows to
    the feet, already the reading position); "" (e.g. a PNG export) keeps the image as stored.
    """
    shown = np.asarray(image).T
    parts = [p.strip().upper() for p in str(patient_orientation or "").split("\\")]
    if len(parts) == 2:
        row_dir, col_dir = parts
        if view.upper() in ("PA", "AP", "") and row_dir.startswith("R"):
            shown = shown[:, ::-1]  # columns ran toward the patient's right: mirror to put it on the left
        if col_dir.startswith("H"):
            shown = shown[::-1, :]  # rows ran toward the head: feet down
    return shown


def radiograph_figure(row: pd.Series, run: RunData, title: str) -> str:
    """The whole radiograph, reference and predicted label maps as contours per foreground class (solid
    reference, dashed prediction), as a data URI. Full image, never a crop."""
    from matplotlib.figure import Figure

    from medres.data import load_image
    from medres.report.figures import to_data_uri

    cfg = run.config
    image = load_image(first_path(row["image"]))
    meta = image.meta
    orient, view = str(meta.get("PatientOrientation", "") or ""), str(meta.get("ViewPosition", "") or "")
    view = view or str(row.get("view", "") or "")
    shown = radiograph_view(np.asarray(image, dtype=np.float32), orient, view)
    fig = Figure(figsize=(3.6, 3.9))  # no pyplot: the caller's backend stays as it is
    ax = fig.subplots()
    lo, hi = (float(v) for v in np.percentile(shown, [0.5, 99.5]))
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    colours = ["lime", "deepskyblue", "orange", "magenta", "yellow"]
    for source, style, path in (("reference", "solid", row.get("mask")),
                                ("predicted", "dashed", row.get("seg_path"))):
        p = first_path(path)
        if p is None:
            continue
        labels = np.rint(load_scan(run.run_dir / p if source == "predicted" else p)[0])
        if labels.shape != np.asarray(image).shape:
            continue
        labels = radiograph_view(labels, orient, view)
        classes = sorted((int(k), v) for k, v in cfg.data.mask_labels.items() if int(k))
        for i, (value, name) in enumerate(classes):
            m = labels == value
            colour = colours[i % len(colours)]
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=1.0, linestyles=style)
            ax.plot([], [], color=colour, linestyle=style, label=f"{name} ({source})")
    ax.legend(fontsize=5, loc="lower right")
    side = "patient's right on the left" if orient else "as stored (no PatientOrientation)"
    y = int(row["y_true"]) if "y_true" in row and pd.notna(row["y_true"]) else -1
    shown = f"{run.labels[y]}, " if 0 <= y < len(run.labels) else ""
    ax.set_title(f"{title}: {shown}" + (f"view {view}, " if view else "") + side, fontsize=6)
    ax.axis("off")
    return to_data_uri(fig)
