"""DualHeadResNet: a ResNet backbone with a classification head and a deconvolutional segmentation head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from medres.errors import ConfigError
from medres.models.heads import DeconvDecoder
from medres.models.registry import register_model
from medres.models.resnet import ARCHS, BasicBlock, Bottleneck, ResNet

__all__ = ["DualOutput", "DualHeadResNet"]


class DualOutput(NamedTuple):
    """``cls_logits`` [B, C] and ``seg_logits`` [B, K, *spatial]; None where that head is off."""

    cls_logits: Tensor | None
    seg_logits: Tensor | None


class DualHeadResNet(nn.Module):
    """ResNet backbone + classification head + segmentation decoder, in 2D or 3D.

    Args:
        block, layers: as for ``ResNet``.
        spatial_dims, in_channels: input layout ``[B, in_channels, *spatial]`` (defaults: 3D, 1 channel).
        num_classes: classification logits.
        seg_classes: segmentation logit channels (2 for background / foreground with softmax).
        cls_head, seg_head: build the head (False: its output is None, no parameters).
        skip_connections: concatenate stem/layer1..3 maps into the decoder (U-Net-like); False gives a
            plain deconvolution stack from layer4.
        dropout: dropout before the classification layer (the backbone's ``drop_rate``).
        decoder_channels: widths of the four decoder stages (default 4x, 2x, 1x, 1/2x base_channels).
        mask_scores: ``(logit, mask class)`` pairs: that classification logit is replaced by the logit of
            the mask class's largest softmax probability in the input (the most confident pixel: a finding
            is there when its lesion is segmented), taken without gradient so the mask is trained by the
            segmentation loss alone. A small lesion dilutes into the globally pooled features; its mask
            does not. Needs both heads; none by default.
        **backbone_kwargs: passed to ``ResNet`` (norm, act, base_channels, groups, width_per_group,
            stem_kernel, stem_stride, stem_pool, replace_stride_with_dilation, grad_checkpointing, ...).
            ``norm`` and ``act`` also shape the decoder.

    ``forward(x)`` returns ``DualOutput``; the segmentation logits have exactly the input's spatial size,
    whatever that size (see ``DeconvDecoder``). ``load_pretrained`` applies to the backbone.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        seg_classes: int = 2,
        cls_head: bool = True,
        seg_head: bool = True,
        skip_connections: bool = True,
        dropout: float | None = None,
        decoder_channels: Sequence[int] | None = None,
        mask_scores: Sequence[Sequence[int]] = (),
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if not (cls_head or seg_head):
            raise ConfigError(
                "both heads are switched off",
                field="model",
                hint="keep cls_head or seg_head, or use a plain ResNet for features",
            )
        self.mask_scores = _check_mask_scores(mask_scores, cls_head and seg_head, num_classes, seg_classes)
        if dropout is not None:
            backbone_kwargs["drop_rate"] = dropout
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.num_classes, self.seg_classes = num_classes, seg_classes
        # the classification head is the backbone's own (pool, dropout, fc: ResNet.forward_head). Its fc
        # is made after the backbone's own initialisation, as a separate head module's was: the same seed
        # gives the same weights, so earlier runs' folds and metrics reproduce.
        self.backbone = ResNet(block, layers, spatial_dims=spatial_dims, in_channels=in_channels,
                               num_classes=0, **backbone_kwargs)
        self._has_cls = cls_head
        b = self.backbone
        if cls_head:
            b.fc, b.num_classes = nn.Linear(b.num_features, num_classes), num_classes
        self.seg_head = (
            DeconvDecoder(
                b.feature_info,
                seg_classes,
                spatial_dims=spatial_dims,
                skip_connections=skip_connections,
                decoder_channels=decoder_channels,
                norm=b.norm_spec,
                act=b.act_spec,
                grad_checkpointing=b.grad_checkpointing,
            )
            if seg_head
            else None
        )

    @property
    def cls_head(self) -> nn.Module | None:
        """The classification layer (``backbone.fc``), or None when that head is off."""
        return self.backbone.fc if self._has_cls else None

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        return [{**d, "module": f"backbone.{d['module']}"} for d in self.backbone.feature_info]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
        if self.seg_head is not None:
            self.seg_head.grad_checkpointing = enable

    def forward(self, x: Tensor) -> DualOutput:
        """``x`` [B, in_channels, *spatial] -> DualOutput(cls [B, C] | None, seg [B, K, *spatial] | None)"""
        if self.seg_head is not None:
            feats = self.backbone.forward_intermediates(x)
            seg = self.seg_head(feats, x.shape[2:])
            top = feats[-1]
        else:
            top, seg = self.backbone.forward_features(x), None
        cls = self.backbone.forward_head(top) if self._has_cls else None
        if self.mask_scores:
            cls = _with_mask_scores(cls, seg, self.mask_scores)
        return DualOutput(cls, seg)


def mask_score_logits(seg_logits: Tensor, classes: Sequence[int]) -> Tensor:
    """``[B, K, *spatial]`` segmentation logits -> ``[B, len(classes)]``: the logit of each class's largest
    softmax probability in the input (clamped to [1e-6, 1 - 1e-6]), without gradient."""
    probs = torch.softmax(seg_logits.detach().float(), dim=1)[:, list(classes)].flatten(2)
    return torch.logit(probs.amax(dim=2).clamp(1e-6, 1 - 1e-6))


def _with_mask_scores(cls: Tensor, seg: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    scores = mask_score_logits(seg, [k for _, k in pairs]).to(cls.dtype)
    where = {i: j for j, (i, _) in enumerate(pairs)}
    return torch.stack([scores[:, where[i]] if i in where else cls[:, i] for i in range(cls.shape[1])], dim=1)


def _check_mask_scores(pairs: Sequence[Sequence[int]], both_heads: bool, num_classes: int, seg_classes: int
                       ) -> tuple[tuple[int, int], ...]:
    out = tuple((int(p[0]), int(p[1])) for p in pairs if len(p) == 2)
    field = "model.options.mask_scores"
    if len(out) != len(pairs):
        raise ConfigError("mask_scores must be (logit, mask class) pairs", field=field,
                          hint="e.g. [[0, 2]]: logit 0 scored from mask class 2")
    if out and not both_heads:
        raise ConfigError("mask_scores read the segmentation head into the classification logits, but one "
                          "head is off", field=field, hint="keep both heads, or remove mask_scores")
    for i, k in out:
        if not (0 <= i < num_classes and 1 <= k < seg_classes):
            raise ConfigError(f"mask_scores pair ({i}, {k}) is outside the {num_classes} logits or the "
                              f"foreground mask classes 1..{seg_classes - 1}", field=field,
                              hint="name an existing logit and a foreground mask class")
    if len({i for i, _ in out}) != len(out):
        raise ConfigError("mask_scores replace one logit twice", field=field, hint="one pair per logit")
    return out


def _dual(arch: str, kwargs: dict[str, Any]) -> DualHeadResNet:
    block, layers, defaults = ARCHS[arch]
    return DualHeadResNet(block, layers, **{**defaults, **kwargs})


@register_model
def dual_resnet10(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-10 (BasicBlock [1, 1, 1, 1])."""
    return _dual("resnet10", kwargs)


@register_model
def dual_resnet18(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-18."""
    return _dual("resnet18", kwargs)


@register_model
def dual_resnet34(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-34."""
    return _dual("resnet34", kwargs)


@register_model
def dual_resnet50(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-50."""
    return _dual("resnet50", kwargs)


@register_model
def dual_resnet101(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-101."""
    return _dual("resnet101", kwargs)


@register_model
def dual_resnet152(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNet-152."""
    return _dual("resnet152", kwargs)


@register_model
def dual_resnext50_32x4d(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNeXt-50 32x4d."""
    return _dual("resnext50_32x4d", kwargs)


@register_model
def dual_resnext101_32x8d(**kwargs: Any) -> DualHeadResNet:
    """Dual-head ResNeXt-101 32x8d."""
    return _dual("resnext101_32x8d", kwargs)


@register_model
def dual_wide_resnet50_2(**kwargs: Any) -> DualHeadResNet:
    """Dual-head Wide ResNet-50-2."""
    return _dual("wide_resnet50_2", kwargs)


@register_model
def dual_wide_resnet101_2(**kwargs: Any) -> DualHeadResNet:
    """Dual-head Wide ResNet-101-2."""
    return _dual("wide_resnet101_2", kwargs)
