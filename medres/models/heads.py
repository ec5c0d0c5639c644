"""The segmentation head that attaches to a ResNet's ``feature_info``: a deconvolutional decoder.

(The classification head is the ResNet's own ``forward_head``: pool, dropout, ``fc``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medres.errors import ConfigError
from medres.models._layers import (
    ActSpec,
    NormSpec,
    as_tuple,
    conv_transpose_type,
    conv_type,
    make_act_factory,
    make_norm_factory,
    match_size,
    maybe_checkpoint,
)

__all__ = ["DeconvDecoder"]


class UpStage(nn.Module):
    """Transposed conv by ``scale``, crop to the skip's size, concatenate the skip, conv-norm-act.

    The fusing convolution is 3x3 (``kernel=3``) or 1x1 (``kernel=1``, used at high resolution).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: tuple[int, ...],
        norm_layer: Any,
        act_layer: Any,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.up = conv_transpose_type(spatial_dims)(
            in_channels, out_channels, kernel_size=scale, stride=scale, bias=False
        )
        self.conv = conv_type(spatial_dims)(
            out_channels + skip_channels, out_channels, kernel_size=kernel, padding=kernel // 2, bias=False
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
    layer4 down to the stem's level, each a transposed convolution by the ratio of the two levels'
    reductions (1 where a stage is dilated) followed by a fusing convolution with that level's skip;
    then a transposed convolution by the stem's reduction straight to ``seg_classes`` logits.

    Widths: the first stage reads layer4 (512 channels in Basic nets, 2048 in Bottleneck nets) and the
    skips have the backbone's widths; the stages' own widths default to 4x, 2x, 1x and 1/2x the stem
    width (256, 128, 64, 32 at base 64), so a Bottleneck net's decoder does not carry its 4x-expanded
    widths up to high resolution. Cost: levels at reduction >= 4 fuse with a 3x3 convolution; the
    stem's level (reduction 2, eight times the voxels of layer1 in 3D) fuses with a 1x1 convolution and
    nothing wider than ``seg_classes`` is computed at full resolution; in 3D a 3x3 convolution there
    would cost more than the whole ResNet-18 backbone.

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
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = make_norm_factory(norm, spatial_dims), make_act_factory(act)
        levels = feature_info[::-1]  # layer4, layer3, layer2, layer1, stem
        if decoder_channels is None:
            stem = feature_info[0]["num_chs"]
            decoder_channels = [stem * 4, stem * 2, stem, max(stem // 2, 8)]
        if len(decoder_channels) != len(levels) - 1:
            raise ConfigError(
                f"decoder_channels needs {len(levels) - 1} entries, got {list(decoder_channels)}",
                field="decoder_channels",
            )
        self.skip_connections = skip_connections
        self.grad_checkpointing = grad_checkpointing
        stages, cin = [], levels[0]["num_chs"]
        for src, dst, cout in zip(levels[:-1], levels[1:], decoder_channels):
            src_red, dst_red = (
                as_tuple(src["reduction"], spatial_dims, "reduction"),
                as_tuple(dst["reduction"], spatial_dims, "reduction"),
            )
            scale = tuple(a // b for a, b in zip(src_red, dst_red))
            skip = dst["num_chs"] if skip_connections else 0
            kernel = 3 if min(dst_red) >= 4 else 1
            stages.append(UpStage(spatial_dims, cin, skip, cout, scale, norm_layer, act_layer, kernel))
            cin = cout
        self.stages = nn.ModuleList(stages)
        scale = as_tuple(levels[-1]["reduction"], spatial_dims, "reduction")
        self.final_up = conv_transpose_type(spatial_dims)(cin, seg_classes, kernel_size=scale, stride=scale)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """``features``: [stem, layer1, ..., layer4] maps; ``size``: the input's spatial size.

        Returns logits ``[B, seg_classes, *size]``.
        """
        feats = list(features)[::-1]
        x, ckpt = feats[0], self.grad_checkpointing
        for stage, skip in zip(self.stages, feats[1:]):
            x = maybe_checkpoint(ckpt, stage, x, skip if self.skip_connections else None, skip.shape[2:])
        return match_size(self.final_up(x), size)
