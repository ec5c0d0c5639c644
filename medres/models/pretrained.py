"""Load pretrained weights from local files: torchvision, MedicalNet or medres checkpoints.

Nothing is downloaded. Files are read with ``torch.load(weights_only=True)``. The loader adapts the
stem to the model's input channels (timm's ``adapt_input_conv``), inflates 2D kernels into a 3D model
(I3D: repeated along depth and divided by the depth), skips tensors whose shape differs (a head with
another ``num_classes``) and returns a ``LoadReport`` listing every loaded, missing, unexpected and
skipped key, which it also logs.

MedicalNet (Tencent, 3D ResNet-10..200): files hold ``{"state_dict": {"module.conv1.weight": ...}}``;
ResNet-18/34 use parameter-free "type A" shortcuts and every MedicalNet net dilates layer3/layer4 in all
of their blocks (output stride 8). ``medicalnet_kwargs(depth)`` gives the matching medres options::

    model = create_model("resnet18", **medicalnet_kwargs(18), num_classes=2)
    load_pretrained(model, "resnet_18_23dataset.pth", source="medicalnet")

A model built without them still loads (the tensors have the same shapes) but computes something else
than MedicalNet did; with shortcut "B" the downsample weights of ResNet-18/34 are reported missing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from medres.errors import ConfigError
from medres.models.dual import DualHeadResNet
from medres.models.resnet import ResNet

__all__ = ["LoadReport", "load_pretrained", "adapt_input_conv", "inflate_weight", "medicalnet_kwargs"]

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "medicalnet", "medres")


@dataclasses.dataclass
class LoadReport:
    """What ``load_pretrained`` did, key by key.

    ``loaded``, ``missing`` and ``adapted`` use the model's ``state_dict`` names; ``adapted`` maps keys
    that were changed to fit (input channels, 2D -> 3D) to what was done. ``unexpected`` (in the file,
    not in the model) and ``skipped`` (not loaded, with the reason) use the file's names after the
    ``module.`` / ``backbone.`` prefixes are removed.
    """

    path: str
    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    adapted: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.source} weights from {self.path}: {len(self.loaded)} loaded, "
            f"{len(self.adapted)} adapted, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.skipped)} skipped"
        )


def medicalnet_kwargs(depth: int) -> dict[str, Any]:
    """ResNet options reproducing MedicalNet's network of the given depth (10, 18, 34, 50, 101, 152)."""
    return {
        "spatial_dims": 3,
        "in_channels": 1,
        "replace_stride_with_dilation": (False, True, True),
        "dilate_first_block": True,
        "shortcut": "A" if depth in (18, 34) else "B",
    }


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Stem kernel ``[O, I, *k]`` -> ``[O, in_channels, *k]`` (timm's ``adapt_input_conv``, any I).

    1 channel: the sum over the input channels (a grey image seen as R=G=B gives the same response);
    N channels: the kernels repeated to N and scaled by I/N, so the response to N equal channels is kept.
    """
    src = weight.shape[1]
    if in_channels == src:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // src)
    return weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_channels] * (src / in_channels)


def inflate_weight(weight: Tensor, depth: int, *, transposed: bool = False, stride: int = 1) -> Tensor:
    """2D kernel ``[O, I, kh, kw]`` -> 3D ``[O, I, depth, kh, kw]``, repeated along depth.

    Divided by ``depth`` (by ``depth / stride`` for a transposed convolution, where only that many taps
    reach each output), so a volume of identical slices gives the 2D response on every slice.
    """
    w = weight.unsqueeze(2).repeat(1, 1, depth, 1, 1)
    return w / (depth / stride if transposed else depth)


def _read_state_dict(path: str | os.PathLike[str], source: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(
            f"no weight file at {os.fspath(path)!r}",
            field="model.pretrained",
            hint="give the path of a local .pth/.pt file; medres downloads nothing",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, a corrupt file or not a torch file at all
        raise ConfigError(
            f"cannot read weights: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            path=path,
            hint="save a plain state_dict (tensors only) with torch.save",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # MedicalNet, medres/engine checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(
            f"no state dict of tensors found in this {source} file",
            path=path,
            hint="expected a dict of tensors, or one under 'state_dict' / 'model'",
        )
    out = {}
    for k, v in obj.items():
        k = k.removeprefix("module.")  # DataParallel / DDP wrapping (MedicalNet files have it)
        out[k.removeprefix("backbone.")] = v  # a medres DualHeadResNet file: its backbone in ResNet names
    return out


def _target_key(model: nn.Module, key: str) -> str:
    """ResNet-layout key of the file -> key in ``model``'s state dict."""
    if not isinstance(model, DualHeadResNet) or key.startswith("seg_head."):
        return key
    return "backbone." + key


def _module_of(model: nn.Module, key: str) -> nn.Module | None:
    try:
        return model.get_submodule(key.rsplit(".", 1)[0])
    except AttributeError:
        return None


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    source: str = "torchvision",
    *,
    strict_backbone: bool = True,
) -> LoadReport:
    """Load a local weight file into a ``ResNet`` or ``DualHeadResNet`` (its backbone and, if present, heads).

    Args:
        model: the model; loaded in place.
        path: a ``.pth``/``.pt`` file: a state dict, or one under ``state_dict`` / ``model``.
        source: ``"torchvision"`` (2D ImageNet ResNets), ``"medicalnet"`` (3D, ``module.`` prefix), or
            ``"medres"`` (a medres ``ResNet`` / ``DualHeadResNet`` state dict or checkpoint).
        strict_backbone: raise ``ConfigError`` when a backbone weight is missing from the file or
            cannot be fitted (another architecture). Heads are never strict: a classification layer
            of another shape and a decoder absent from the file are reported, not fatal.

    Returns:
        ``LoadReport``; also logged (summary at INFO, each missing/skipped key at WARNING).
    """
    if source not in SOURCES:
        raise ConfigError(
            f"unknown weight source {source!r}",
            field="model.pretrained_source",
            hint=f"one of {', '.join(SOURCES)}",
        )
    if not isinstance(model, (ResNet, DualHeadResNet)):
        raise ConfigError(
            f"load_pretrained needs a medres ResNet or DualHeadResNet, got {type(model).__name__}"
        )
    report = LoadReport(path=os.fspath(path), source=source)
    file_sd = _read_state_dict(path, source)
    own = model.state_dict()
    in_channels = model.in_channels
    new_sd: dict[str, Tensor] = {}
    shape_skipped: set[str] = set()
    for fkey, value in file_sd.items():
        key = _target_key(model, fkey)
        if key not in own:
            report.unexpected.append(fkey)
            reason = (
                "MedicalNet's segmentation head (conv_seg) has no counterpart in medres"
                if fkey.startswith("conv_seg.")
                else "no such parameter in this model"
            )
            report.skipped[fkey] = reason
            continue
        target, notes = own[key], []
        if value.ndim == 4 and target.ndim == 5:
            mod = _module_of(model, key)
            transposed = isinstance(mod, nn.ConvTranspose3d)
            stride = mod.stride[0] if transposed else 1
            value = inflate_weight(value, target.shape[2], transposed=transposed, stride=stride)
            notes.append(f"inflated 2D -> 3D (depth {target.shape[2]})")
        is_stem = key in ("conv1.weight", "backbone.conv1.weight")
        if is_stem and value.ndim == target.ndim and value.shape[1] != in_channels:
            notes.append(f"input channels {value.shape[1]} -> {in_channels}")
            value = adapt_input_conv(value, in_channels)
        if value.shape != target.shape:
            report.skipped[fkey] = (
                f"shape {tuple(value.shape)} in the file, {tuple(target.shape)} in the model"
                + (
                    " (another num_classes: the head keeps its initialization)"
                    if key.split(".")[-2] == "fc"
                    else ""
                )
            )
            shape_skipped.add(key)
            continue
        new_sd[key] = value.to(target.dtype)
        if notes:
            report.adapted[key] = "; ".join(notes)
        else:
            report.loaded.append(key)
    report.missing = [k for k in own if k not in new_sd and k not in shape_skipped]

    is_head = ("fc.", "backbone.fc.", "seg_head.")
    bad = [k for k in report.missing if not k.startswith(is_head) and not k.endswith("num_batches_tracked")]
    bad += [
        k
        for k in report.skipped
        if k not in report.unexpected and not _target_key(model, k).startswith(is_head)
    ]
    for k in report.missing:  # logged before a strict failure too, so the log shows every problem
        log.warning("pretrained %s: %s missing from the file (kept at initialization)", source, k)
    for k, why in report.skipped.items():
        log.warning("pretrained %s: %s skipped: %s", source, k, why)
    if strict_backbone and bad:
        hint = "check the architecture and options (for MedicalNet: medicalnet_kwargs(depth))"
        if source == "medicalnet" and any("downsample" in k for k in bad):
            hint = "MedicalNet ResNet-18/34 use shortcut type A: build with medicalnet_kwargs(depth)"
        raise ConfigError(
            f"{len(bad)} backbone weight(s) could not be loaded: {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else ""),
            path=path,
            hint=hint + ", or pass strict_backbone=False to load the rest",
        )
    model.load_state_dict(new_sd, strict=False)
    log.info("%s", report)
    return report
