"""Heads that attach to a ResNet's ``feature_info``: a classification head and a deconvolutional decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medres.models._layers import (
    ActSpec,
    NormSpec,
    adaptive_avg_pool_type,
    conv_transpose_type,
    conv_type,
    make_act_factory,
    make_norm_factory,
    match_size,
    maybe_checkpoint,
)

__all__ = ["ClassificationHead", "DeconvDecoder"]


def _as_tuple(reduction: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return (reduction,) * spatial_dims if isinstance(reduction, int) else tuple(reduction)


class ClassificationHead(nn.Module):
    """Global average pool, dropout, linear: ``[B, C, *S] -> [B, num_classes]``."""

    def __init__(
        self, in_channels: int, num_classes: int, *, spatial_dims: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.pool = adaptive_avg_pool_type(spatial_dims)(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


class UpStage(nn.Module):
    """Transposed conv by ``scale``, crop to the skip's size, concatenate the skip, 3x3 conv-norm-act."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: tuple[int, ...],
        norm_layer: Any,
        act_layer: Any,
    ) -> None:
        super().__init__()
        self.up = conv_transpose_type(spatial_dims)(
            in_channels, out_channels, kernel_size=scale, stride=scale, bias=False
        )
        self.conv = conv_type(spatial_dims)(
            out_channels + skip_channels, out_channels, kernel_size=3, padding=1, bias=False
        )
        self.norm = norm_layer(out_channels)
        self.act = act_layer()

    def forward(self, x: Tensor, skip: Tensor | None, size: Sequence[int]) -> Tensor:
        x = match_size(self.up(x), size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.act(self.norm(self.conv(x)))


class DeconvDecoder(nn.Module):
    """Segmentation decoder from layer4 back to the full input resolution.

    Built from the backbone's ``feature_info`` (stem, layer1..layer4): one ``UpStage`` per step from
    layer4 to the stem level, each upsampling by the ratio of the two levels' reductions (1 where a stage
    is dilated), then a last transposed convolution by the stem's reduction and a 1x1 convolution to
    ``seg_classes`` logits. Stage widths default to the channels of the level reached (512 -> 256 -> 128
    -> 64 -> 64 for Basic nets, 2048 -> 1024 -> 512 -> 256 -> 64 for Bottleneck nets).

    Sizes that are not a multiple of the reduction: strided convolutions give ``ceil(n / 2)`` at every
    level, so each upsampled map is at most one voxel larger than the level above; it is cropped at its
    far end to that level's size (and, last, to the input's). Nothing is padded or interpolated, so the
    classification head sees the image unchanged and the logits align voxel for voxel.
    """

    def __init__(
        self,
        feature_info: list[dict[str, Any]],
        seg_classes: int,
        *,
        spatial_dims: int,
        skip_connections: bool = True,
        decoder_channels: Sequence[int] | None = None,
        final_channels: int | None = None,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = make_norm_factory(norm, spatial_dims), make_act_factory(act)
        levels = feature_info[::-1]  # layer4, layer3, layer2, layer1, stem
        if decoder_channels is None:
            decoder_channels = [lvl["num_chs"] for lvl in levels[1:]]
        if len(decoder_channels) != len(levels) - 1:
            raise ValueError(
                f"decoder_channels needs {len(levels) - 1} entries, got {list(decoder_channels)}"
            )
        self.skip_connections = skip_connections
        self.grad_checkpointing = grad_checkpointing
        stages, cin = [], levels[0]["num_chs"]
        for src, dst, cout in zip(levels[:-1], levels[1:], decoder_channels):
            scale = tuple(
                a // b
                for a, b in zip(
                    _as_tuple(src["reduction"], spatial_dims), _as_tuple(dst["reduction"], spatial_dims)
                )
            )
            skip = dst["num_chs"] if skip_connections else 0
            stages.append(UpStage(spatial_dims, cin, skip, cout, scale, norm_layer, act_layer))
            cin = cout
        self.stages = nn.ModuleList(stages)
        final_channels = final_channels or max(cin // 2, 8)
        scale = _as_tuple(levels[-1]["reduction"], spatial_dims)
        self.final_up = conv_transpose_type(spatial_dims)(
            cin, final_channels, kernel_size=scale, stride=scale, bias=False
        )
        self.final_norm = norm_layer(final_channels)
        self.final_act = act_layer()
        self.seg = conv_type(spatial_dims)(final_channels, seg_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """``features``: [stem, layer1, ..., layer4] maps; ``size``: the input's spatial size.

        Returns logits ``[B, seg_classes, *size]``.
        """
        feats = list(features)[::-1]
        x, ckpt = feats[0], self.grad_checkpointing
        for stage, skip in zip(self.stages, feats[1:]):
            x = maybe_checkpoint(ckpt, stage, x, skip if self.skip_connections else None, skip.shape[2:])
        return maybe_checkpoint(ckpt, self._final, x, size)  # the full-resolution end is the largest

    def _final(self, x: Tensor, size: Sequence[int]) -> Tensor:
        x = match_size(self.final_up(x), size)
        return self.seg(self.final_act(self.final_norm(x)))
