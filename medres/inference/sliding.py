"""Whole-volume inference for a two-headed model: MONAI sliding windows, flip TTA, window aggregation.

A volume larger than the training patch is covered by overlapping windows (MONAI's
``sliding_window_inference``). The two heads need different treatment:

* **segmentation logits** ``[S, *window]`` are stitched into a full-volume map by MONAI (Gaussian
  blending by default, so window borders weigh less);
* **classification logits** ``[K]`` come one per window and are aggregated into one case-level
  probability vector. The default ``"max"`` takes the probability vector of the *most abnormal
  window* (the one with the lowest probability of ``labels[0]``, the reference/normal class); in the
  binary case this is exactly max-pooling ``p(positive)`` over windows. This is the right pooling
  for nodule detection, where a finding occupies one window: a mean over windows would dilute one
  confident positive window among many empty ones, so the same nodule would score lower in a larger
  scan. ``"mean"`` (softmax of the mean window logit) suits diffuse findings that every window sees.
  A volume no larger than the patch is a single window, and both choices give the plain model output.

With a configuration's ``tasks:`` (a ``medres.config.tasks.TaskLayout``) each task aggregates its own slice
of the windows' logits (:func:`aggregate_task_windows`): a binary/multiclass task as above on its softmax,
a multilabel column by the max (or mean) of its logit over windows (the max logit is the max probability),
a regression task by the mean of its standardised value.

Flip test-time augmentation runs the identity and one flip per spatial axis (``1 + spatial_dims``
passes); each pass's segmentation logits are flipped back before averaging, and the case-level
class probabilities are averaged over passes. A 2D model on a volume runs slice by slice, each
slice's windows joining the case's windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

__all__ = ["VolumePrediction", "SlidingWindow", "split_output", "aggregate_windows", "aggregate_task_windows",
           "infer_volume", "infer_volume_models"]

Aggregate = Literal["max", "mean"]


@dataclass(frozen=True)
class SlidingWindow:
    """How a volume is cut into windows and their outputs put together (:func:`infer_volume`).

    Attributes:
        roi_size: the window, normally the training patch (``data.patch_size``); a volume smaller than
            it is padded (MONAI) and the output cropped back. A 2D window on a volume runs slice by slice.
        overlap: window overlap fraction per axis (``evaluate.sliding_window_overlap``).
        tta: flip test-time augmentation (identity + one flip per spatial axis).
        cls_aggregate: ``"max"`` (most abnormal window; default) or ``"mean"``; see the module docstring.
        sw_batch_size: windows per forward pass.
        blend: MONAI's blending of overlapping segmentation windows.
    """

    roi_size: Sequence[int]
    overlap: float = 0.25
    tta: bool = False
    cls_aggregate: Aggregate = "max"
    sw_batch_size: int = 1
    blend: Literal["gaussian", "constant"] = "gaussian"


@dataclass
class VolumePrediction:
    """One volume's prediction on the grid it was given (the evaluation pipeline's grid).

    Attributes:
        cls_probs: ``[K]`` case-level class probabilities, or None without a classification head.
        seg_logits: ``[S, *spatial]`` stitched (TTA-averaged) segmentation logits, or None.
        window_probs: ``[passes, windows, K]`` per-window class probabilities (for inspection).
        task_values: with a task layout, ``[width]`` case-level outputs by task slice (averaged over TTA
            passes): a single-label task's class probabilities, a multilabel task's logits, a regression
            task's standardised value; ``cls_probs`` and ``window_probs`` are then None.
    """

    cls_probs: Tensor | None
    seg_logits: Tensor | None
    window_probs: Tensor | None
    task_values: Tensor | None = None


def split_output(out: object) -> tuple[Tensor | None, Tensor | None]:
    """``(cls_logits [B, K] | None, seg_logits [B, S, *spatial] | None)`` from a model's output.

    Accepts ``DualOutput`` (or any object with ``cls_logits`` / ``seg_logits``), a plain tensor (a
    2-D tensor is classification logits, a larger one segmentation logits) or a ``(cls, seg)`` pair.
    """
    if hasattr(out, "cls_logits") and hasattr(out, "seg_logits"):
        return out.cls_logits, out.seg_logits
    if isinstance(out, Tensor):
        return (out, None) if out.ndim == 2 else (None, out)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    raise TypeError(f"cannot read classification/segmentation logits from a {type(out).__name__}")


def aggregate_windows(probs: Tensor, how: Aggregate = "max") -> Tensor:
    """Case-level class probabilities ``[K]`` from per-window probabilities ``[N, K]``.

    ``"max"``: the row of the window with the lowest probability of class 0 (the reference class);
    for two classes this is ``max_n p[n, 1]``. ``"mean"``: softmax of the mean window log-probability,
    i.e. of the mean logit up to a per-window constant (a geometric mean of the windows' beliefs).
    """
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"expected [windows, classes] probabilities, got shape {tuple(probs.shape)}")
    if how == "max":
        return probs[torch.argmin(probs[:, 0])]
    if how == "mean":
        return torch.softmax(torch.log(probs.clamp_min(1e-12)).mean(0), dim=0)
    raise ValueError(f"unknown window aggregation {how!r}; use 'max' or 'mean'")


def aggregate_task_windows(logits: Tensor, layout: Any, how: Aggregate = "max") -> Tensor:
    """Case-level task outputs ``[width]`` (float64) from the windows' logits ``[N, width]``, per slot of
    ``layout``: single-label class probabilities (:func:`aggregate_windows` of its softmax), multilabel
    logits (``max``: the max over windows; ``mean``: the mean), regression the mean standardised value."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected [windows, outputs] logits, got shape {tuple(logits.shape)}")
    if how not in ("max", "mean"):
        raise ValueError(f"unknown window aggregation {how!r}; use 'max' or 'mean'")
    z = logits.double()
    out = torch.empty(z.shape[1], dtype=torch.float64)
    for slot in layout:
        part = z[:, slot.start:slot.stop]
        if slot.type in ("binary", "multiclass"):
            out[slot.start:slot.stop] = aggregate_windows(torch.softmax(part, dim=1), how)
        elif slot.type == "multilabel" and how == "max":
            out[slot.start:slot.stop] = part.max(dim=0).values
        else:  # multilabel mean, regression
            out[slot.start:slot.stop] = part.mean(dim=0)
    return out


def _one_pass(models: Sequence[nn.Module], x: Tensor, roi_size: Sequence[int], overlap: float,
              sw_batch_size: int, blend: str, device: torch.device, raw: bool = False
              ) -> list[tuple[Tensor | None, Tensor | None]]:
    """Sliding windows over ``x`` [1, C, *spatial]; each window goes through every model while in memory.

    Returns per model (per-window class probabilities [N, K] (``raw``: logits) | None, stitched seg logits
    [1, S, *spatial] | None). The models' segmentation logits are stitched together as one tensor of
    concatenated channels: MONAI's blending is the same weighted sum per channel, so each model's share
    is exactly what stitching it alone gives.
    """
    window_probs: list[list[Tensor]] = [[] for _ in models]
    channels: list[int | None] = [None] * len(models)  # seg channels per model (None: no seg head)

    def predictor(patch: Tensor, _coords: object) -> Tensor:
        patch = patch.to(device)
        segs = []
        for m, model in enumerate(models):
            cls, seg = split_output(model(patch))
            if cls is not None:
                window_probs[m].append(cls.float().cpu() if raw else torch.softmax(cls.float(), dim=1).cpu())
            channels[m] = None if seg is None else int(seg.shape[1])
            # A classification-only model still needs a tensor for MONAI to stitch: one empty channel.
            segs.append(seg.float() if seg is not None else patch.new_zeros((patch.shape[0], 1,
                                                                             *patch.shape[2:])))
        return segs[0] if len(segs) == 1 else torch.cat(segs, dim=1)

    seg = sliding_window_inference(x, roi_size, sw_batch_size, predictor, overlap=overlap, mode=blend,
                                   sw_device=device, device=torch.device("cpu"), with_coord=True)
    out, start = [], 0
    for m in range(len(models)):
        width = channels[m] or 1
        probs = torch.cat(window_probs[m]) if window_probs[m] else None
        out.append((probs, seg[:, start:start + width] if channels[m] is not None else None))
        start += width
    return out


@torch.inference_mode()
def infer_volume(model: nn.Module, image: Tensor, window: SlidingWindow, *,
                 device: torch.device | str | None = None, layout: Any = None) -> VolumePrediction:
    """Predict one volume ``image`` [C, *spatial] (after the evaluation pipeline) with ``model`` in eval mode.

    A 2D model on a volume (``image`` [C, X, Y, Z] with a 2D ``roi_size``) runs slice by slice along the
    last (axial, after RAS orientation) axis; every slice's windows then count as the case's windows.

    Args:
        window: the window's size, overlap, flips, aggregation, batch and blending (:class:`SlidingWindow`).
        device: where the model runs (default: the model's parameters' device).
        layout: a configuration's ``TaskLayout`` with ``tasks:`` (None or the single head: one softmax).

    Returns a ``VolumePrediction`` on the CPU, on ``image``'s grid.
    """
    return infer_volume_models([model], image, window, device=device, layout=layout)[0]


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def infer_volume_models(models: Sequence[nn.Module], image: Tensor, window: SlidingWindow, *,
                        device: torch.device | str | None = None, layout: Any = None
                        ) -> list[VolumePrediction]:
    """:func:`infer_volume` for several models (the folds of a run) in one sweep of windows.

    Each window (and each TTA flip, each slice of a 2D model) is cut once and passed through every
    model while it is in memory; the result for each model is exactly what :func:`infer_volume` gives
    for it alone (same windows, same blending). Returns one ``VolumePrediction`` per model.
    """
    roi_size, overlap, tta, cls_aggregate = window.roi_size, window.overlap, window.tta, window.cls_aggregate
    sw_batch_size, blend = window.sw_batch_size, window.blend
    models = list(models)
    if not models:
        raise ValueError("infer_volume_models needs at least one model")
    device = torch.device(device) if device is not None else _device_of(models[0])
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    x = torch.as_tensor(image).float()[None]  # plain tensor [1, C, *spatial]
    by_slice = x.ndim - 2 == len(roi_size) + 1  # a 2D model on a volume: axial slices (last axis)
    spatial = list(range(2, x.ndim - 1 if by_slice else x.ndim))
    flips: list[tuple[int, ...]] = [()] + ([(d,) for d in spatial] if tta else [])
    n = len(models)
    all_probs: list[list[Tensor]] = [[] for _ in models]
    case_probs: list[list[Tensor]] = [[] for _ in models]
    seg_sum: list[Tensor | None] = [None] * n

    tasks = layout is not None and not getattr(layout, "single_head", True)

    def run(xf: Tensor) -> list[tuple[Tensor | None, Tensor | None]]:
        return _one_pass(models, xf, list(roi_size), overlap, sw_batch_size, blend, device, raw=tasks)

    try:
        for dims in flips:
            xf = torch.flip(x, dims) if dims else x
            if by_slice:
                parts = [run(xf[..., z]) for z in range(xf.shape[-1])]  # [slice][model]
                per_model = []
                for m in range(n):
                    ps = [p[m] for p in parts]
                    probs = torch.cat([p for p, _ in ps]) if ps[0][0] is not None else None
                    seg = torch.stack([s for _, s in ps], dim=-1) if ps[0][1] is not None else None
                    per_model.append((probs, seg))
            else:
                per_model = run(xf)
            for m, (probs, seg) in enumerate(per_model):
                if probs is not None and tasks:
                    case_probs[m].append(aggregate_task_windows(probs, layout, cls_aggregate))
                elif probs is not None:
                    all_probs[m].append(probs)
                    case_probs[m].append(aggregate_windows(probs, cls_aggregate))
                if seg is not None:
                    seg = torch.flip(seg, dims) if dims else seg
                    seg_sum[m] = seg if seg_sum[m] is None else seg_sum[m] + seg
    finally:
        for m, was in zip(models, was_training):
            m.train(was)
    out = []
    for m in range(n):
        cls = torch.stack(case_probs[m]).mean(0) if case_probs[m] else None
        seg_logits = (seg_sum[m] / len(flips))[0] if seg_sum[m] is not None else None
        ap = all_probs[m]
        window_probs = torch.stack(ap) if ap and len({p.shape for p in ap}) == 1 else None
        if tasks:
            out.append(VolumePrediction(None, seg_logits, None, task_values=cls))
            continue
        out.append(VolumePrediction(cls, seg_logits, window_probs))
    return out
