"""Predictions for cases: probabilities, and masks that overlay the SOURCE scan.

Each case goes through the evaluation pipeline (``medres.data.pipeline.transforms.build_transforms(data,
train=False)``: load, orientation, spacing, intensity), then whole-volume inference
(:func:`medres.inference.sliding.infer_volume`: MONAI sliding windows, optional flip TTA). The stitched
segmentation logits live on the pipeline's grid (e.g. RAS at 1.5 mm); they are softmaxed and resampled
with MONAI's ``SpatialResample`` from that grid's affine to the source scan's affine and shape (both kept
by the reader as ``meta["original_affine"]`` / ``meta["spatial_shape"]``), then argmaxed. Resampling by
affines rather than inverting the pipeline step by step works for any pipeline that tracks its affine,
and the mask written has exactly the source's shape and affine, so it overlays the original scan.

Masks are written with nibabel from a fresh header (only the array and the affine), so no DICOM field
can reach them. The predictions table follows DESIGN.md (see :func:`predict_cases`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from torch import Tensor, nn

from medres.data.records import RECORD_KEYS, Case, as_cases
from medres.errors import DataError
from medres.files import atomic_write
from medres.inference.sliding import Aggregate, SlidingWindow, infer_volume_models
from medres.layout import case_file_stems
from medres.runfolder import RunFolder
from medres.safe_text import csv_safe

__all__ = [
    "mask_to_source", "source_probabilities", "save_mask", "predict_cases", "write_fold_predictions",
    "Prediction", "Predictor", "PredictSettings", "RECORD_KEYS", "check_window",
    "write_table",
]


def _affine(a: Any) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
    return a.astype(np.float64)


def source_geometry(image: MetaTensor) -> tuple[np.ndarray, tuple[int, ...]]:
    """The source scan's RAS affine ``[4, 4]`` and spatial shape, as the reader recorded them."""
    meta = getattr(image, "meta", {})
    if "original_affine" not in meta or "spatial_shape" not in meta:
        raise DataError("the evaluation pipeline lost the source geometry (meta 'original_affine' / "
                        "'spatial_shape')", hint="load images with medres.data.MedresReader")
    return _affine(meta["original_affine"]), tuple(int(s) for s in np.asarray(meta["spatial_shape"]).ravel())


def source_probabilities(probs: Tensor, grid_affine: Any, src_affine: Any,
                         src_shape: Sequence[int]) -> Tensor:
    """Class probabilities ``[S, *src_shape]`` resampled (bilinear, by affines) from the pipeline's grid to
    the source geometry. Resampling is linear, so the mean of several models' resampled maps is the
    resampled mean map (the fold ensemble's mask is the argmax of either)."""
    # the model's output may carry its input's meta (MONAI would warn that grid_affine replaces it)
    plain = probs.as_tensor() if isinstance(probs, MetaTensor) else probs
    probs = MetaTensor(plain.float(), affine=torch.as_tensor(_affine(grid_affine)))
    nsp = probs.ndim - 1
    shape = tuple(src_shape) + (1,) * (nsp - len(src_shape))
    out = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=False, dtype=torch.float64)(
        probs, dst_affine=torch.as_tensor(_affine(src_affine)), spatial_size=shape)
    return out.as_tensor()


def mask_to_source(seg_logits: Tensor, grid_affine: Any, src_affine: Any,
                   src_shape: Sequence[int], *, probabilities: bool = False) -> MetaTensor:
    """Label map in the source geometry from logits on the pipeline's grid.

    Args:
        seg_logits: ``[S, *spatial]`` logits on the grid described by ``grid_affine`` (4x4, RAS)
            (probabilities instead, e.g. a fold ensemble's mean softmax, with ``probabilities=True``).
        src_affine, src_shape: the source scan's 4x4 RAS affine and spatial shape. A source with fewer
            spatial axes than the grid (one 2D slice read into a 3D pipeline) gets size-1 axes.

    Returns a ``MetaTensor`` ``[*src_shape]`` of uint8 class indices whose affine is ``src_affine``.
    """
    probs = seg_logits.float() if probabilities else torch.softmax(seg_logits.float(), dim=0)
    nsp = seg_logits.ndim - 1
    out = source_probabilities(probs, grid_affine, src_affine, src_shape)
    labels = torch.argmax(out, dim=0).to(torch.uint8)
    labels = labels.reshape(tuple(src_shape)) if len(src_shape) < nsp else labels
    return MetaTensor(labels, affine=torch.as_tensor(_affine(src_affine)))


def save_mask(mask: MetaTensor, path: str | os.PathLike[str]) -> Path:
    """Write a label map as NIfTI: uint8, its affine as sform and qform, nothing else in the header."""
    img = nib.Nifti1Image(np.asarray(mask.detach().cpu().numpy(), dtype=np.uint8), _affine(mask.affine))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def _data_error(exc: BaseException) -> DataError | None:
    """The DataError behind an exception (MONAI's Compose wraps transform errors in RuntimeError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DataError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _path_text(image: Any) -> str:
    if isinstance(image, (list, tuple)):
        return ";".join(map(str, image))
    return "" if image is None else str(image)


def _eval_transform(data_cfg: Any) -> Callable[[dict], dict]:
    from medres.data.pipeline.transforms import build_transforms

    return build_transforms(data_cfg, train=False)


def _window_memory(channels: int, patch: Sequence[int], outputs: int, classes: int, batch: int,
                   shape: Sequence[int] | None, members: int, tta: bool, overlap: float) -> dict[str, int]:
    """Bytes (float32) a sliding-window inference holds at once, by buffer: the windows' input and
    output (``outputs`` stitched channels of every member), MONAI's weight map, and for a volume of
    ``shape`` (padded to the window) its input (and a flipped copy under TTA), the stitched output and
    count map, the members' summed logits (and the flipped pass added to them) and every window's
    class probabilities of every pass."""
    window = math.prod(patch)
    need = {"input": channels * window * batch * 4, "outputs": (outputs * batch + 1) * window * 4}
    if shape is None:
        return need
    dims = list(shape)
    slices = dims.pop() if len(dims) == len(patch) + 1 else 1  # a 2D model on a volume: slice by slice
    padded = [max(int(s), int(p)) for s, p in zip(dims, patch)]
    volume = math.prod(padded) * slices
    step = [max(1, int(p * (1 - overlap))) for p in patch]
    windows = math.prod(math.ceil((s - p) / t) + 1 for s, p, t in zip(padded, patch, step)) * slices
    passes = 1 + (len(dims) if tta else 0)
    need["input"] += channels * volume * 4 * (3 if tta else 2)
    need["outputs"] += ((outputs + 1) + outputs * (2 if tta else 1)) * volume * 4 \
        + windows * classes * members * passes * 4
    return need


def check_window(config: Any, sw_batch_size: int = 1, *, path: str | os.PathLike[str] | None = None,
                 shape: Sequence[int] | None = None, members: int = 1, tta: bool = False,
                 overlap: float = 0.25, case_id: str | None = None) -> None:
    """Refuse a sliding-window inference that needs more memory than this process may use
    (:func:`medres.data.readers.limits.memory_allowance`), counting its input and output buffers in
    float32: the window batch (channels x prod(data.patch_size) x ``sw_batch_size``) and its
    segmentation logits for every one of ``members`` models, and, given the volume's ``shape`` (after
    the evaluation pipeline), the stitched volume, its count map, the summed logits, the flipped copies
    of ``tta`` and every window's class probabilities. A few-kilobyte export or checkpoint can ask for
    any window (and a scan for any volume): this runs before anything is allocated.

    ``config``: a resolved ``Config`` (or its ``data`` section, as ``predict_cases`` has it).

    Raises:
        DataError: naming the window, the memory needed and the memory allowed.
    """
    from medres.config.schema import input_channels
    from medres.data.readers.limits import memory_allowance

    data = getattr(config, "data", config)
    model = getattr(config, "model", None)
    patch = [int(v) for v in data.patch_size]
    channels = int(getattr(model, "in_channels", None) or input_channels(data))
    seg = int(getattr(model, "seg_classes", None) or len(data.mask_labels))
    classes = int(getattr(model, "num_classes", None) or len(data.labels))
    members, batch = max(int(members), 1), max(int(sw_batch_size), 1)
    parts = _window_memory(channels, patch, seg * members, classes, batch, shape, members, tta, overlap)
    need = sum(parts.values())
    room, what = memory_allowance()
    if room is not None and need > room:
        dims = " x ".join(map(str, patch))
        volume = f" over a {' x '.join(map(str, shape))} volume" if shape is not None else ""
        flips = ", flip TTA" if tta and shape is not None else ""
        raise DataError(f"the sliding window ({channels} channel(s) x {dims} voxels x {batch} window(s) a "
                        f"batch, {members} model(s){flips}){volume} needs {need / 2**30:.1f} GiB "
                        f"({parts['input'] / 2**30:.1f} GiB for its input alone, "
                        f"{parts['outputs'] / 2**30:.1f} GiB for its outputs), more than the process may "
                        f"use: {room / 2**30:.1f} GiB ({what})", path=path, case_id=case_id,
                        hint="use a model whose data.patch_size is a realistic window (e.g. 96 x 96 x 96), "
                             "a lower sliding-window batch, fewer TTA flips or a smaller (resampled) scan")


def _log_probs(probs: Tensor) -> np.ndarray:
    """Case-level log-probabilities: the logits up to a per-case constant (what calibration needs)."""
    return np.log(np.clip(probs.detach().cpu().double().numpy(), 1e-300, None))


@dataclass(frozen=True)
class PredictSettings:
    """How :func:`predict_cases` predicts and what it writes.

    Attributes:
        labels: the class names of the ``p_`` columns (default ``data.labels``).
        fold: the ``fold`` column (-1: not a fold's model).
        seg_dir: where the masks go, ``<name>.nii.gz`` with ``name`` from ``medres.layout.case_file_stem``
            (None: no masks written); two cases whose names would clash are refused before any is written.
        seg_relative_to: ``seg_path`` is written relative to this folder (default: absolute).
        transform: the evaluation pipeline (default: ``build_transforms(data_cfg, train=False)``).
        overlap, tta, cls_aggregate, sw_batch_size, device: see ``infer_volume``.
        calibration: the fitted recalibration map of the model (one per model for several), as
            ``medres.metrics.calibration.fit_calibration`` returns it; None: plain softmax.
        member_names: column suffixes of the members (default ``fold0``, ``fold1``, ...).
        logits: also write ``logit_<class>`` (single model only; the fold tables have them).
        layout: the configuration's ``TaskLayout`` (``medres.config.tasks.task_layout``); with ``tasks:``
            every task's columns (``medres.inference.tasks``) replace the single head's. The members'
            ``calibration`` maps then carry the checkpoints' ``task_scales``.
    """

    labels: Sequence[str] | None = None
    fold: int = -1
    seg_dir: str | os.PathLike[str] | None = None
    seg_relative_to: str | os.PathLike[str] | None = None
    transform: Callable[[dict], dict] | None = None
    overlap: float = 0.25
    tta: bool = False
    cls_aggregate: Aggregate = "max"
    sw_batch_size: int = 1
    device: torch.device | str | None = None
    calibration: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None
    member_names: Sequence[str] | None = None
    logits: bool = False
    layout: Any = None

    def updated(self, **changes: Any) -> PredictSettings:
        """A copy with ``changes`` (field names; an unknown name is a TypeError naming the fields)."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"unknown prediction setting(s) {unknown}; PredictSettings has {names}")
        return replace(self, **changes) if changes else self


def predict_cases(model: nn.Module | Sequence[nn.Module], cases: Iterable[Case | Mapping[str, Any]],
                  data_cfg: Any, settings: PredictSettings | None = None, **changes: Any) -> pd.DataFrame:
    """Predict every case; write masks to ``settings.seg_dir``; return the predictions table.

    Args:
        model: a model whose output is ``DualOutput`` (or plain logits), in any mode (run in eval mode);
            or several (a run's fold models): each window passes through all of them while in memory
            (:func:`medres.inference.sliding.infer_volume_models`), and the table is their ensemble:
            ``p_<class>`` the mean of the members' (calibrated) class probabilities, the mask the argmax
            of the mean of their softmax maps, and per member ``p_<class>_<member>`` beside them.
        cases: :class:`medres.data.records.Case` records as ``manifest_to_records`` makes them (or dict
            records with ``case_id`` and ``image`` at least, read by ``Case.from_mapping``).
        data_cfg: ``Config.data``; ``patch_size`` is the sliding window, ``labels`` the class names.
        settings: see :class:`PredictSettings`; ``changes``: fields of it to change, as keywords.

    Returns one row per record: ``case_id, patient_id, fold, y_true, p_<class>..., y_pred``, the
    subgroup columns, ``image`` and ``mask`` (source paths; several channels joined by ``;``, "" when
    none), ``seg_path`` when masks are written, and with ``logits`` ``logit_<class>`` (the uncalibrated
    case-level log-probabilities, from which calibration is fitted and ``p_`` rebuilt).
    ``y_pred`` is the class called at the operating point kept in ``calibration`` (chosen on the fold's
    inner validation; for several members the mean of their thresholds, as the report's test ensemble),
    ``y_pred_argmax`` the most probable class; without an operating point both are the argmax (-1
    without a classification head). With a task layout (``settings.layout``), each task's columns as
    :func:`medres.inference.tasks.task_columns` writes them. Raises ``DataError`` naming the case when a
    scan cannot be processed.
    """
    from medres.inference.operating_point import decide, ensemble_threshold
    from medres.inference.tasks import record_targets, task_columns, uses_tasks
    from medres.metrics.calibration import apply_calibration

    s = (settings or PredictSettings()).updated(**changes)
    seg_dir, calibration, sw_batch_size = s.seg_dir, s.calibration, s.sw_batch_size
    tta, overlap = s.tta, s.overlap
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if calibration is None or isinstance(calibration, Mapping):
        calibrations = [calibration] * len(models)
    else:
        calibrations = list(calibration)
    if len(calibrations) != len(models):
        raise ValueError(f"{len(calibrations)} calibrations for {len(models)} models")
    ensemble = len(models) > 1
    names = list(s.member_names) if s.member_names is not None else [f"fold{k}" for k in range(len(models))]
    labels = list(s.labels if s.labels is not None else data_cfg.labels)
    threshold = ensemble_threshold(calibrations) if labels == list(data_cfg.labels) else None
    positive = data_cfg.positive_index()
    transform = s.transform or _eval_transform(data_cfg)
    records = as_cases(cases)
    stems = case_file_stems(records) if seg_dir is not None else {}
    multi = uses_tasks(s.layout)
    targets = record_targets(records, s.layout) if multi else {}
    rows = []
    from medres.progress import progress_wanted, track

    for i, rec in enumerate(track(records, desc="predicting", unit="scans", progress=progress_wanted(),
                                  final=False)):
        case_id = rec.case_id
        try:
            extra = {k: rec.extras[k] for k in ("pixel_spacing", "view") if rec.extras.get(k)}  # radiographs
            sample = transform({"image": rec.as_item()["image"], **extra})
        except Exception as exc:
            err = _data_error(exc)
            if err is None:
                raise
            raise err.located(case_id=case_id) from None
        image = sample["image"]
        check_window(data_cfg, sw_batch_size, shape=tuple(image.shape[1:]), members=len(models), tta=tta,
                     overlap=overlap, case_id=case_id)  # the stitched outputs too, before any window runs
        window = SlidingWindow(list(data_cfg.patch_size), overlap, tta, s.cls_aggregate, sw_batch_size)
        preds = infer_volume_models(models, image, window, device=s.device,
                                    **({"layout": s.layout} if multi else {}))
        row: dict[str, Any] = {"case_id": case_id, "patient_id": rec.patient_id, "fold": int(s.fold),
                               "y_true": rec.label}
        if multi and preds[0].task_values is not None:
            row.update(task_columns([p.task_values.numpy() for p in preds], s.layout, calibrations,
                                    {t: v[i] for t, v in targets.items()}, member_names=names,
                                    logits=s.logits))
        has_cls = preds[0].cls_probs is not None
        log_probs = [_log_probs(p.cls_probs) for p in preds] if has_cls else []
        member_probs = [apply_calibration(z, c) for z, c in zip(log_probs, calibrations)]
        probs = np.mean(member_probs, axis=0) if has_cls else None
        if not multi:
            for k, name in enumerate(labels):
                row[f"p_{name}"] = float(probs[k]) if has_cls else float("nan")
        if not multi or s.layout.single_label is None:
            row["y_pred"] = int(decide(probs[None], positive, threshold)[0]) if has_cls else -1
            row["y_pred_argmax"] = int(np.argmax(probs)) if has_cls else -1
        row.update(rec.extras)
        view = getattr(image, "meta", {}).get("ViewPosition", "")  # a Code String already (the reader)
        if view and not str(row.get("view", "") or "").strip():  # a DICOM radiograph's own view, as a
            row["view"] = view  # subgroup column when the manifest has none (the manifest's wins)
        row["image"], row["mask"] = _path_text(rec.image), _path_text(rec.mask)
        segs = [p.seg_logits for p in preds]
        if seg_dir is not None and segs[0] is not None:
            src_affine, src_shape = source_geometry(image)
            if ensemble:
                mean = torch.stack([torch.softmax(s.float(), dim=0) for s in segs]).mean(0)
                mask = mask_to_source(mean, image.affine, src_affine, src_shape, probabilities=True)
            else:
                mask = mask_to_source(segs[0], image.affine, src_affine, src_shape)
            path = save_mask(mask, Path(seg_dir) / f"{stems[case_id]}.nii.gz")
            row["seg_path"] = (os.path.relpath(path, s.seg_relative_to) if s.seg_relative_to is not None
                               else str(path))
        if has_cls and ensemble:
            for m, p in zip(names, member_probs):
                row.update({f"p_{name}_{m}": float(p[k]) for k, name in enumerate(labels)})
        elif has_cls and s.logits:
            row.update({f"logit_{name}": float(log_probs[0][k]) for k, name in enumerate(labels)})
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a predictions table atomically (``.parquet`` or ``.csv`` by suffix). A CSV is for people: its
    text cells are made inert for spreadsheets (``medres.safe_text.csv_safe``); parquet keeps exact values."""
    path = Path(path)
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    return atomic_write(path, lambda tmp: csv_safe(df).to_csv(tmp, index=False))


def write_fold_predictions(run_dir: str | os.PathLike[str], fold: int, model: nn.Module,
                           records: Iterable[Mapping[str, Any]], cfg: Any, name: str = "predictions", *,
                           masks: bool = True, device: torch.device | str | None = None,
                           task_scales: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Predict a fold's cases into ``run_dir/fold_<fold>/<name>.parquet`` and masks into ``fold_<fold>/seg/``.

    ``name`` is ``"predictions"`` (held-out cases), ``"inner_val_predictions"`` or ``"test_predictions"``;
    the case sets are disjoint within a fold, so all masks share ``seg/``. ``seg_path`` is relative to
    ``run_dir``. Window overlap, TTA and window aggregation come from ``cfg.evaluate``
    (``sliding_window_overlap``, ``tta_flips``, ``cls_aggregate``).

    With ``tasks:`` the table has every task's columns, uncalibrated (``medres.training.calibrate`` then
    rewrites ``p_<c>`` and the regression intervals); regression values are put in units with
    ``task_scales`` (default: the fold's predicting checkpoint's).
    """
    from medres.config.tasks import task_layout
    from medres.inference.tasks import uses_tasks

    run_dir = Path(run_dir)
    fold_dir = RunFolder(run_dir).fold(fold)
    ev = cfg.evaluate
    layout = task_layout(cfg) if cfg.tasks is not None else None
    extra: dict[str, Any] = {}
    if uses_tasks(layout):
        if task_scales is None:
            from medres.checkpoint import load_checkpoint

            task_scales = load_checkpoint(fold_dir.predicting_checkpoint()).get("task_scales")
        extra = {"layout": layout, "calibration": {"task_scales": dict(task_scales or {})}}
    df = predict_cases(model, records, cfg.data, fold=fold, seg_dir=fold_dir.seg_dir if masks else None,
                       seg_relative_to=run_dir, overlap=ev.sliding_window_overlap, tta=ev.tta_flips,
                       cls_aggregate=ev.cls_aggregate, device=device, logits=True, **extra)
    write_table(df, fold_dir.table(name))
    return df


@dataclass
class Prediction:
    """One scan's prediction: class probabilities by class name and the mask in the source geometry."""

    probabilities: dict[str, float]
    mask: MetaTensor | None
    decision: str | None = None  # the class called at the operating point (``y_pred``)
    # with tasks: per task, {label: probability} (binary, multiclass, multilabel) or
    # {"value", "lo", "hi"} in the target's units (regression)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The class called at the model's operating point, as ``y_pred`` (the most probable class when
        the model has none; None without a classification head)."""
        return self.decision if self.decision is not None else self.argmax_label

    @property
    def argmax_label(self) -> str | None:
        """The most probable class, as ``y_pred_argmax`` (None without a classification head)."""
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None


def _task_dicts(row: pd.Series, layout: Any) -> dict[str, dict[str, float]]:
    """Each task's output from one predictions-table row (see :class:`Prediction`)."""
    out: dict[str, dict[str, float]] = {}
    for slot in layout or ():
        if slot.type == "regression":
            t = slot.name
            out[t] = {"value": float(row[f"pred_{t}"]), "lo": float(row[f"pred_{t}_lo"]),
                      "hi": float(row[f"pred_{t}_hi"])}
        else:
            out[slot.name] = {c: float(row[f"p_{c}"]) for c in slot.classes}
    return out


class Predictor:
    """A trained model (or a run's fold ensemble) with its evaluation pipeline, for notebooks.

    >>> pred = Predictor.from_checkpoint("runs/ct_chest/fold_0/checkpoint_best.pt")
    >>> pred = Predictor.from_run("runs/ct_chest")   # every fold's model: their ensemble
    >>> p = pred.predict("scan.nii.gz")          # or a DICOM series folder, or a loaded MetaTensor
    >>> p.probabilities, p.mask.shape, p.mask.affine   # mask overlays the source scan

    ``calibration`` is each model's fitted recalibration map (a checkpoint's ``calibration`` entry);
    class probabilities are calibrated with it before the members are averaged. With ``tasks:``,
    ``predict(...).tasks`` holds every task's output (probabilities per label; value, lo, hi in units).
    """

    def __init__(self, model: nn.Module | Sequence[nn.Module], config: Any,
                 settings: PredictSettings | None = None, **changes: Any) -> None:
        """``settings``: how to predict (default: the configuration's ``evaluate`` window overlap, flips and
        aggregation, the best device); ``changes``: :class:`PredictSettings` fields replacing its values
        (``device``, ``tta``, ``overlap``, ``cls_aggregate``, ``sw_batch_size``, ``calibration``,
        ``member_names``; None keeps the value)."""
        ev = config.evaluate
        s = settings or PredictSettings(overlap=ev.sliding_window_overlap, tta=ev.tta_flips,
                                        cls_aggregate=ev.cls_aggregate)
        s = s.updated(**{k: v for k, v in changes.items() if v is not None})
        check_window(config, s.sw_batch_size)  # before a model is moved or a window allocated
        auto = s.device in (None, "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else s.device)
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.models = [m.to(self.device).eval() for m in models]
        self.model = self.models[0]
        self.calibration = s.calibration
        self.member_names = list(s.member_names) if s.member_names is not None else None
        self.config = config
        self.tta, self.overlap, self.cls_aggregate = s.tta, s.overlap, s.cls_aggregate
        self.sw_batch_size = s.sw_batch_size
        self.transform = s.transform or _eval_transform(config.data)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **kwargs: Any) -> Predictor:
        """Load ``path`` with ``medres.checkpoint.rebuild_model`` (and its fitted calibration, if
        any); keyword arguments as ``__init__``."""
        from medres.inference.members import load_members

        models, config, cals, _ = load_members([path])
        check_window(config, kwargs.get("sw_batch_size", 1), path=path)
        kwargs.setdefault("calibration", cals[0])
        return cls(models[0], config, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], folds: Sequence[int] | None = None,
                 **kwargs: Any) -> Predictor:
        """The fold ensemble of a run folder (``folds``: a subset; default all trained folds)."""
        from medres.inference.members import load_run_members

        models, config, cals, names = load_run_members(run_dir, folds)
        check_window(config, kwargs.get("sw_batch_size", 1), path=run_dir)
        return cls(models, config, calibration=cals, member_names=names, **kwargs)

    @classmethod
    def from_export(cls, folder: str | os.PathLike[str], **kwargs: Any) -> Predictor:
        """The model(s) of a ``python -m medres.export`` folder, without the run folder."""
        from medres.inference.members import load_export

        models, config, cals, names = load_export(folder)
        check_window(config, kwargs.get("sw_batch_size", 1), path=Path(folder) / "export.json")
        return cls(models if len(models) > 1 else models[0], config, calibration=cals if len(models) > 1
                   else cals[0], member_names=names, **kwargs)

    @property
    def labels(self) -> list[str]:
        """The class names of the single-label task (``data.labels`` without ``tasks:``; [] without one)."""
        layout = self.task_layout
        if layout is None:
            return list(self.config.data.labels)
        return list(layout.single_label.classes) if layout.single_label is not None else []

    def decision_rule(self) -> str:
        """How ``y_pred`` is called: at the operating point chosen on inner validation, or the argmax."""
        from medres.inference.operating_point import ensemble_threshold

        cals = self.calibration if isinstance(self.calibration, (list, tuple)) else [self.calibration]
        thr = ensemble_threshold(cals)
        if not self.labels:
            return "y_pred: -1 (no binary or multiclass task); each task's columns hold its output"
        if thr is None:
            notes = [((c or {}).get("operating_point") or {}).get("note") for c in cals]
            why = next((n for n in notes if n), "the model holds no operating point")
            return f"y_pred: the most probable class ({why}); y_pred_argmax: the same"
        op = (cals[0] or {}).get("operating_point") or {}
        pos = self.labels[int(op.get("positive", self.config.data.positive_index()))]
        how = (cals[0] or {}).get("operating_point", {}).get("method", "?")
        how += ", mean of the folds" if len(cals) > 1 else ""
        return (f"y_pred: {pos} where p_{pos} >= {thr:.4g}, the operating point chosen on inner validation "
                f"({how}) as in the report; y_pred_argmax: the most probable class")

    @property
    def settings(self) -> PredictSettings:
        """This predictor's :class:`PredictSettings` (pipeline, windows, device, calibration)."""
        return PredictSettings(transform=self.transform, overlap=self.overlap, tta=self.tta,
                               cls_aggregate=self.cls_aggregate, sw_batch_size=self.sw_batch_size,
                               device=self.device, calibration=self.calibration,
                               member_names=self.member_names, **self._task_settings())

    def _task_settings(self) -> dict[str, Any]:
        """The :class:`PredictSettings` fields of a ``tasks:`` configuration (its task layout)."""
        if self.config.tasks is None:
            return {}
        from medres.config.tasks import task_layout

        return {"layout": task_layout(self.config)}

    @property
    def task_layout(self) -> Any:
        """The configuration's ``TaskLayout``, or None without ``tasks:``."""
        return self._task_settings().get("layout")

    def predict_records(self, records: Iterable[Case | Mapping[str, Any]],
                        seg_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> pd.DataFrame:
        """The predictions table for several cases (see :func:`predict_cases`; keywords: fields of
        :class:`PredictSettings`)."""
        model = self.models if len(self.models) > 1 else self.model
        return predict_cases(model, records, self.config.data, self.settings, seg_dir=seg_dir, **kwargs)

    def predict(self, image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Tensor | np.ndarray
                ) -> Prediction:
        """Predict one scan: a path (file or DICOM series folder), a list of paths (one per channel), or an
        array/``MetaTensor`` as ``medres.data.load_image`` returns it (``[*spatial]``, or ``[C, *spatial]``
        for several image columns; a plain array gets an identity affine)."""
        with tempfile.TemporaryDirectory(prefix="medres-predict-") as tmp:
            is_path = isinstance(image, (str, os.PathLike, list, tuple))
            source = image if is_path else self._to_files(image, tmp)
            df = self.predict_records([Case(case_id="case", image=source)], seg_dir=tmp)
            row = df.iloc[0]
            probs = {c: float(row[f"p_{c}"]) for c in self.labels} if row["y_pred"] >= 0 else {}
            decision = self.labels[int(row["y_pred"])] if row["y_pred"] >= 0 else None
            tasks = _task_dicts(row, self.task_layout)
            mask = None
            if "seg_path" in row and isinstance(row["seg_path"], str):
                nii = nib.load(row["seg_path"])
                mask = MetaTensor(torch.from_numpy(np.asarray(nii.dataobj)),
                                  affine=torch.as_tensor(nii.affine))
        return Prediction(probs, mask, decision, tasks)

    def _to_files(self, image: Tensor | np.ndarray, folder: str) -> list[str]:
        """Write an in-memory scan as float32 NIfTI file(s): it then goes through the pipeline as a path."""
        arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        affine = _affine(image.affine) if isinstance(image, MetaTensor) else np.eye(4)
        channels = len(self.config.data.image_columns)
        arrays = list(arr) if channels > 1 else [arr]
        if len(arrays) != channels:
            raise DataError(f"expected {channels} channels (one per image column), got an array of shape "
                            f"{arr.shape}", hint="pass [C, *spatial] with C = len(data.image_columns)")
        paths = []
        for i, a in enumerate(arrays):
            paths.append(os.path.join(folder, f"input_{i}.nii.gz"))
            nib.save(nib.Nifti1Image(np.asarray(a, dtype=np.float32), affine), paths[-1])
        return paths
