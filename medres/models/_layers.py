"""Dimension-agnostic layer factories shared by the backbone and the heads.

Convolutions, pools and norms come from MONAI's factories (``Conv[Conv.CONV, spatial_dims]``), so one
class serves 2D and 3D. This module only turns medres's ``norm`` / ``act`` settings (a name, a
``(name, kwargs)`` pair, or a callable) into layer constructors and gives a clear ``ConfigError`` for a
bad name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medres.errors import ConfigError, did_you_mean

NormSpec = str | tuple | Callable[[int], nn.Module]
ActSpec = str | tuple | Callable[[], nn.Module]
NormFactory = Callable[[int], nn.Module]
ActFactory = Callable[[], nn.Module]

_NORMS = ("batch", "instance", "group", "layer", "none")


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` / ``nn.Conv3d`` (MONAI's factory)."""
    _check_dims(spatial_dims)
    return Conv[Conv.CONV, spatial_dims]


def conv_transpose_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` / ``nn.ConvTranspose3d``."""
    _check_dims(spatial_dims)
    return Conv[Conv.CONVTRANS, spatial_dims]


def max_pool_type(spatial_dims: int) -> type[nn.Module]:
    return Pool[Pool.MAX, spatial_dims]


def adaptive_avg_pool_type(spatial_dims: int) -> type[nn.Module]:
    return Pool[Pool.ADAPTIVEAVG, spatial_dims]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}", field="spatial_dims")


def _split(spec: str | tuple) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise ConfigError(f"expected a name or a (name, kwargs) pair, got {spec!r}")
        return spec[0].lower(), dict(spec[1])
    return spec.lower(), {}


def _unknown(kind: str, name: str, valid: Sequence[str]) -> ConfigError:
    close = did_you_mean(name, valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(
        f"unknown {kind} {name!r}", field=kind, hint=f"{hint}valid: {', '.join(valid)}, or pass a callable"
    )


def make_norm_factory(norm: NormSpec, spatial_dims: int) -> NormFactory:
    """A function ``channels -> norm layer`` from a name, ``(name, kwargs)`` or a callable.

    ``"batch"``: BatchNorm; ``"instance"``: InstanceNorm with learnable affine (so zero-init of the last
    norm of a block works); ``"group"``: GroupNorm with ``gcd(32, channels)`` groups unless
    ``num_groups`` is given; ``"none"``: identity. A callable is called with the channel count
    (``nn.BatchNorm2d`` itself qualifies, as in torchvision's ``norm_layer``).
    """
    _check_dims(spatial_dims)
    if callable(norm) and not isinstance(norm, (str, tuple)):
        return norm
    name, kwargs = _split(norm)
    if name == "batch":
        cls = Norm[Norm.BATCH, spatial_dims]
        return lambda c: cls(c, **kwargs)
    if name == "instance":
        cls = Norm[Norm.INSTANCE, spatial_dims]
        kw = {"affine": True, **kwargs}
        return lambda c: cls(c, **kw)
    if name == "group":
        groups = kwargs.pop("num_groups", None)
        return lambda c: nn.GroupNorm(groups or math.gcd(32, c), c, **kwargs)
    if name == "layer":  # GroupNorm with one group normalizes over channels and space
        return lambda c: nn.GroupNorm(1, c, **kwargs)
    if name == "none":
        return lambda c: nn.Identity()
    raise _unknown("norm", name, _NORMS)


def make_act_factory(act: ActSpec) -> ActFactory:
    """A zero-argument function returning a fresh activation module.

    Names are MONAI's activation factory names (``relu``, ``leakyrelu``, ``prelu``, ``gelu``, ``elu``,
    ``swish``, ``mish``, ...); ``"relu"`` is in-place as in torchvision.
    """
    if callable(act) and not isinstance(act, (str, tuple)):
        return act
    name, kwargs = _split(act)
    if name == "relu":
        kwargs = {"inplace": True, **kwargs}
    try:
        cls = Act[name]
    except Exception:  # MONAI's factory raises a bare LookupError/KeyError for unknown names
        raise _unknown("act", name, sorted(n.lower() for n in Act.names)) from None
    return lambda: cls(**kwargs)


def as_tuple(value: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    """``3 -> (3, 3, 3)``; a sequence must have one entry per spatial dimension."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    out = tuple(int(v) for v in value)
    if len(out) != spatial_dims:
        raise ConfigError(
            f"{what} needs {spatial_dims} entries for spatial_dims={spatial_dims}, got {value!r}", field=what
        )
    return out


def match_size(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop (at the far end) or replicate-pad the spatial dims of ``x`` [B, C, *S] to ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    x = x[(slice(None), slice(None), *(slice(0, s) for s in size))]
    pad = []
    for have, want in zip(reversed(x.shape[2:]), reversed(tuple(size))):
        pad += [0, want - have]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x


def maybe_checkpoint(enabled: bool, fn: Callable[..., Tensor], *args: Any) -> Tensor:
    """``fn(*args)``, recomputed in the backward pass instead of kept when ``enabled`` and grad is on.

    Non-reentrant checkpointing: gradients equal those without it. Batch-norm running statistics are
    updated again during the recomputation (as in timm and torchvision).
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
