"""Residual blocks shared by every ResNet variant: ``BasicBlock``, ``Bottleneck`` and the type-A shortcut.

Dimension-agnostic (``spatial_dims`` 2 or 3); norm and activation come in as factories so a choice made
on the network reaches every block. Attribute names follow torchvision (``conv1``, ``bn1``, ...,
``downsample``) so its state dicts load unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medres.errors import ConfigError
from medres.models._layers import ActFactory, NormFactory, conv_type

__all__ = ["BasicBlock", "Bottleneck", "ZeroPadShortcut", "conv_nd"]


def conv_nd(
    spatial_dims: int,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    padding_mode: str = "zeros",
) -> nn.Module:
    """A bias-free ``kernel``^d convolution padded to keep the size ('same' at stride 1)."""
    return conv_type(spatial_dims)(
        cin,
        cout,
        kernel_size=kernel,
        stride=stride,
        padding=dilation * (kernel // 2),
        groups=groups,
        dilation=dilation,
        bias=False,
        padding_mode=padding_mode,
    )


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut ("type A", MedicalNet's ResNet-18/34): subsample, then zero-pad channels."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[(slice(None), slice(None), *(slice(None, None, self.stride),) * (x.ndim - 2))]
        return F.pad(x, [0, 0] * (x.ndim - 2) + [0, self.out_channels - x.shape[1]])


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (ResNet-10/18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        *,
        spatial_dims: int = 2,
        norm_layer: NormFactory,
        act_layer: ActFactory,
        padding_mode: str = "zeros",
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError(
                "BasicBlock supports only groups=1 and width_per_group=64",
                hint="use a Bottleneck model (resnet50, resnext50_32x4d, ...) for grouped/wide blocks",
            )
        d0 = dilation if first_dilation is None else first_dilation
        self.conv1 = conv_nd(
            spatial_dims, inplanes, planes, 3, stride, dilation=d0, padding_mode=padding_mode
        )
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = conv_nd(spatial_dims, planes, planes, 3, dilation=dilation, padding_mode=padding_mode)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.downsample = downsample

    def zero_init_last(self) -> None:
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped, carrying the stride: "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        *,
        spatial_dims: int = 2,
        norm_layer: NormFactory,
        act_layer: ActFactory,
        padding_mode: str = "zeros",
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ConfigError(
                f"block width {width} is too small (planes={planes}, groups={groups}, "
                f"width_per_group={base_width})",
                hint="raise base_channels",
            )
        d = dilation if first_dilation is None else first_dilation
        self.conv1 = conv_nd(spatial_dims, inplanes, width, 1)
        self.bn1 = norm_layer(width)
        self.act1 = act_layer()
        self.conv2 = conv_nd(spatial_dims, width, width, 3, stride, groups, d, padding_mode)
        self.bn2 = norm_layer(width)
        self.act2 = act_layer()
        self.conv3 = conv_nd(spatial_dims, width, planes * self.expansion, 1)
        self.bn3 = norm_layer(planes * self.expansion)
        self.act3 = act_layer()
        self.downsample = downsample

    def zero_init_last(self) -> None:
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + shortcut)
