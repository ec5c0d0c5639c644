"""Checkpoints: atomic writes, plain types only, a fallback when the last file is damaged.

A checkpoint is a dict that ``torch.load(weights_only=True)`` accepts (docs/reference.md §4): tensors,
dicts, lists, tuples, numbers, strings. It holds ``model`` (state_dict), ``optimizer``, ``scheduler``,
``scaler``, ``rng`` (torch / numpy / python states converted to tensors and lists), ``epoch``,
``step``, ``batch_in_epoch`` (>0 for a mid-epoch checkpoint), ``best``, ``config`` (plain dict),
``model_spec`` ``{name, kwargs}`` and ``medres_version``. Case ids from the manifest may appear; no
DICOM field ever does.

Writing: temporary file in the same folder, ``fsync``, then ``os.replace``; before replacing
``checkpoint_last.pt`` the previous good file is kept as ``checkpoint_prev.pt``, so a file truncated by
a crash (or a full disk) falls back to it with a warning.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medres.errors import ConfigError
from medres.layout import CHECKPOINT_BEST, CHECKPOINT_LAST, CHECKPOINT_PREV
from medres.utils import atomic_write

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_model", "to_plain", "rng_state", "set_rng_state",
    "unwrap_model",
]

log = logging.getLogger("medres.engine")

LAST, PREV, BEST = CHECKPOINT_LAST, CHECKPOINT_PREV, CHECKPOINT_BEST


def to_plain(obj: Any) -> Any:
    """Convert numpy values, paths and other non-plain leaves so ``weights_only`` loading accepts them."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {to_plain(k) if not isinstance(k, (str, int)) else k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint value of type {type(obj).__name__} is not a plain type")


def rng_state() -> dict[str, Any]:
    """The torch, numpy (legacy global) and python RNG states as plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DistributedDataParallel and ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str], *,
                    keep_previous: bool = True) -> Path:
    """Write ``state`` atomically to ``path``; the file it replaces becomes ``checkpoint_prev.pt``.

    The previous file is only kept when it loads (a damaged file never replaces a good fallback).
    """
    path = Path(path)
    plain = to_plain(dict(state))

    def keep_previous_file() -> None:
        if keep_previous and path.exists() and _loads(path):
            os.replace(path, _previous(path))

    return atomic_write(path, lambda tmp: torch.save(plain, tmp), before_replace=keep_previous_file)


def _previous(path: Path) -> Path:
    return path.with_name(PREV if path.name == LAST else f"{path.stem}_prev.pt")


def _loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        return False


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    fallback: bool = True) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged file falls back to its ``_prev`` copy.

    Raises ``ConfigError`` (naming the file and what to do) when no usable checkpoint is found.
    """
    path = Path(path)
    candidates = [path]
    if fallback:
        candidates.append(_previous(path))
    problems = []
    for i, p in enumerate(candidates):
        if not p.exists():
            problems.append(f"{p}: missing")
            continue
        try:
            state = torch.load(p, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, ...
            problems.append(f"{p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if i > 0:
            log.warning("%s is damaged or missing (%s); resuming from the previous good checkpoint %s",
                        path, problems[0], p)
        return state
    raise ConfigError("no usable checkpoint: " + "; ".join(problems), path=path,
                      hint="start without --resume, or point to another run folder")


def load_model(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint: ``(model in eval mode, Config)``."""
    from medres.config import Config
    from medres.models import create_model

    state = load_checkpoint(path, map_location=map_location)
    try:
        spec = state["model_spec"]
        config = Config.model_validate(state["config"])
    except KeyError as e:
        raise ConfigError(f"not a medres checkpoint (no {e.args[0]!r} entry)", path=path) from None
    model = create_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(state["model"])
    return model.eval(), config


def copy_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Atomically copy a checkpoint file (used for ``checkpoint_best.pt``)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
