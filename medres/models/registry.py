"""Model registry: ``register_model``, ``create_model``, ``list_models`` (timm's shape).

Builders register under their function name; the built-in ones (``medres.models.resnet``,
``medres.models.dual``) register when ``medres.models`` is imported, which any import of this module
does first. ``create_model`` drops keyword arguments that are
``None``, so a config that leaves a setting empty keeps the model's own default.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from medres.errors import ConfigError, did_you_mean

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model builder under ``name`` (default: the function's name).

    Usable as ``@register_model`` or ``@register_model(name="my_net")``. Registering a name twice
    raises ``ConfigError`` (a silent override would make ``create_model`` ambiguous).
    """

    def add(f: F) -> F:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ConfigError(
                f"model name {key!r} is already registered", field="model.name", hint="pick another name"
            )
        _REGISTRY[key] = f
        return f

    return add if fn is None else add(fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"dual_*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", spatial_dims=3, in_channels=1, num_classes=2)``.

    Keyword arguments whose value is ``None`` are dropped. An unknown name or keyword raises
    ``ConfigError`` naming the closest valid choices.
    """
    if name not in _REGISTRY:
        close = did_you_mean(name, _REGISTRY, n=5)
        hint = f"closest: {', '.join(close)}" if close else "see medres.list_models()"
        raise ConfigError(f"unknown model {name!r}", field="model.name", hint=hint)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(
            f"model {name!r} does not accept this option: {e}",
            field="model",
            hint="check the option's spelling against the model's docstring",
        ) from None
