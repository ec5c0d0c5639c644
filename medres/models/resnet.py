"""ResNet, ResNeXt and wide ResNet in 2D and 3D.

One ``ResNet`` class serves ``spatial_dims`` 2 and 3. In 2D with 3 input channels and 1000 classes every
builder has torchvision's parameter count and state-dict names, so torchvision checkpoints load with
``strict=True``. Normalization and activation are chosen once and reach every block (stem, residual
blocks, downsample shortcuts). The forward is split as in timm (``forward_features``, ``forward_head``,
``forward_intermediates``) and ``feature_info`` lists each stage's channels and reduction, the seam
where the segmentation decoder and detectors attach.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medres.errors import ConfigError
from medres.models._layers import (
    ActSpec,
    NormSpec,
    adaptive_avg_pool_type,
    as_tuple,
    conv_type,
    make_act_factory,
    make_norm_factory,
    max_pool_type,
    maybe_checkpoint,
)
from medres.models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut, conv_nd
from medres.models.registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


class ResNet(nn.Module):
    """ResNet for 2D ``[B, C, H, W]`` or 3D ``[B, C, D, H, W]`` inputs.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        spatial_dims: 2 or 3.
        in_channels: input channels (3 for RGB; 1 for CT).
        num_classes: outputs of the final linear layer; 0 replaces it by identity (features only).
        groups, width_per_group: ResNeXt cardinality and width (torchvision's meaning).
        zero_init_residual: zero the last norm of each block, so each block starts as identity.
        replace_stride_with_dilation: three booleans for layer2..4 (torchvision's meaning).
        dilate_first_block: also dilate the first block of a dilated stage (MedicalNet's convention;
            torchvision keeps the first block at the previous dilation).
        stem_kernel, stem_stride: the first convolution (int or one per spatial dim).
        stem_pool: keep the 3x3 stride-2 max-pool after the stem.
        norm, act: names (``"batch"``, ``"instance"``, ``"group"``; ``"relu"``, ``"gelu"``, ...), a
            ``(name, kwargs)`` pair or a callable; they reach every block.
        base_channels: stem width; the four stages get 1x, 2x, 4x, 8x of it (times the block expansion).
        shortcut: ``"B"`` (1x1 convolution + norm, torchvision) or ``"A"`` (zero padding, MedicalNet 18/34).
        padding_mode: padding of the convolutions (``"zeros"`` as torchvision; ``"replicate"`` makes
            2D -> 3D inflation exact on depth-constant volumes).
        drop_rate: dropout before the final linear layer.
        grad_checkpointing: recompute each block's activations in the backward pass (less memory).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        dilate_first_block: bool = False,
        stem_kernel: int | Sequence[int] = 7,
        stem_stride: int | Sequence[int] = 2,
        stem_pool: bool = True,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        base_channels: int = 64,
        shortcut: str = "B",
        padding_mode: str = "zeros",
        drop_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ConfigError(f"layers must list 4 stage depths, got {list(layers)}", field="layers")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(replace_stride_with_dilation) != 3:
            raise ConfigError(
                "replace_stride_with_dilation must have 3 entries (layer2, layer3, layer4)",
                field="replace_stride_with_dilation",
            )
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut must be 'A' or 'B', got {shortcut!r}", field="shortcut")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        self.norm_spec, self.act_spec = norm, act  # as given: the dual model's decoder follows them
        norm_layer, act_layer = make_norm_factory(norm, spatial_dims), make_act_factory(act)
        self.groups, self.base_width = groups, width_per_group
        self.shortcut, self.dilate_first_block = shortcut, dilate_first_block
        self.inplanes, self.dilation = base_channels, 1

        kernel = as_tuple(stem_kernel, spatial_dims, "stem_kernel")
        stride = as_tuple(stem_stride, spatial_dims, "stem_stride")
        # Children are registered in forward order: torchvision's IntermediateLayerGetter (used by
        # MONAI's BackboneWithFPN) runs them one after another.
        self.conv1 = conv_type(spatial_dims)(
            in_channels,
            base_channels,
            kernel_size=kernel,
            stride=stride,
            padding=tuple(k // 2 for k in kernel),
            bias=False,
            padding_mode=padding_mode,
        )
        self.bn1 = norm_layer(base_channels)
        self.act = act_layer()
        self.maxpool = (
            max_pool_type(spatial_dims)(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        )
        widths = [base_channels * 2**i for i in range(4)]
        layer = dict(norm_layer=norm_layer, act_layer=act_layer, padding_mode=padding_mode)
        self.layer1 = self._make_layer(block, widths[0], layers[0], **layer)
        dilate = replace_stride_with_dilation
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, dilate[0], **layer)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, dilate[1], **layer)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, dilate[2], **layer)
        self.avgpool = adaptive_avg_pool_type(spatial_dims)(1)
        self.num_features = widths[3] * block.expansion
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = self._feature_info(block, widths, stride, stem_pool, replace_stride_with_dilation)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts at zero, so every block starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
        *,
        norm_layer: Callable[[int], nn.Module],
        act_layer: Callable[[], nn.Module],
        padding_mode: str,
    ) -> nn.Sequential:
        block_kw = dict(spatial_dims=self.spatial_dims, norm_layer=norm_layer, act_layer=act_layer,
                        padding_mode=padding_mode)
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != out:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(out, stride)
            else:
                downsample = nn.Sequential(
                    conv_nd(self.spatial_dims, self.inplanes, out, 1, stride), norm_layer(out)
                )
        first = self.dilation if self.dilate_first_block else previous_dilation
        layers = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                self.groups,
                self.base_width,
                self.dilation,
                first_dilation=first,
                **block_kw,
            )
        ]
        self.inplanes = out
        layers += [
            block(
                out,
                planes,
                groups=self.groups,
                base_width=self.base_width,
                dilation=self.dilation,
                **block_kw,
            )
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def _feature_info(
        self,
        block: type,
        widths: list[int],
        stem_stride: tuple[int, ...],
        stem_pool: bool,
        dilated: Sequence[bool],
    ) -> list[dict[str, Any]]:
        red = list(stem_stride)
        info = [{"module": "act", "num_chs": widths[0], "reduction": red}]
        for i, w in enumerate(widths):
            step = 2 if (i == 0 and stem_pool) or (i > 0 and not dilated[i - 1]) else 1
            red = [r * step for r in red]
            info.append({"module": f"layer{i + 1}", "num_chs": w * block.expansion, "reduction": red})
        for d in info:  # an int where isotropic (timm's convention), one per spatial dim otherwise
            r = d["reduction"]
            d["reduction"] = r[0] if len(set(r)) == 1 else tuple(r)
        return info

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_stem(self, x: Tensor) -> Tensor:
        """[B, C_in, *S] -> [B, base_channels, *S/stem_stride] (before the max-pool)."""
        return maybe_checkpoint(self.grad_checkpointing, self._stem, x)

    def _stem(self, x: Tensor) -> Tensor:
        return self.act(self.bn1(self.conv1(x)))

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        """The stage itself (so forward hooks on ``layer1..4`` fire), or block by block with gradient
        checkpointing on (timm's ``checkpoint_seq`` granularity)."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return stage(x)
        for blk in stage:
            x = maybe_checkpoint(True, blk, x)
        return x

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The stem output and layer1..4 outputs, in the order of ``feature_info``."""
        x = self.forward_stem(x)
        feats = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)
            feats.append(x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, C_in, *S] -> layer4 maps [B, num_features, *S/32] (standard stem)."""
        x = self.maxpool(self.forward_stem(x))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """layer4 maps -> pooled features [B, num_features] (``pre_logits``) or logits [B, num_classes]."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# name -> (block, stage depths, builder defaults); the dual-head builders reuse this table.
ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], dict[str, Any]]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1], {}),
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], {"groups": 32, "width_per_group": 8}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], {"width_per_group": 128}),
}


def _resnet(arch: str, kwargs: dict[str, Any]) -> ResNet:
    block, layers, defaults = ARCHS[arch]
    return ResNet(block, layers, **{**defaults, **kwargs})


@register_model
def resnet10(**kwargs: Any) -> ResNet:
    """ResNet-10 (BasicBlock [1, 1, 1, 1]), MedicalNet's smallest 3D network."""
    return _resnet("resnet10", kwargs)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]); 11,689,512 parameters in 2D RGB with 1000 classes."""
    return _resnet("resnet18", kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (BasicBlock [3, 4, 6, 3])."""
    return _resnet("resnet34", kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5 (Bottleneck [3, 4, 6, 3])."""
    return _resnet("resnet50", kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (Bottleneck [3, 4, 23, 3])."""
    return _resnet("resnet101", kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (Bottleneck [3, 8, 36, 3])."""
    return _resnet("resnet152", kwargs)


@register_model
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (Bottleneck [3, 4, 6, 3], 32 groups of width 4)."""
    return _resnet("resnext50_32x4d", kwargs)


@register_model
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d (Bottleneck [3, 4, 23, 3], 32 groups of width 8)."""
    return _resnet("resnext101_32x8d", kwargs)


@register_model
def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (Bottleneck [3, 4, 6, 3], inner width doubled)."""
    return _resnet("wide_resnet50_2", kwargs)


@register_model
def wide_resnet101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 (Bottleneck [3, 4, 23, 3], inner width doubled)."""
    return _resnet("wide_resnet101_2", kwargs)
