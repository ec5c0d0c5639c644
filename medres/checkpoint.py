"""Checkpoints: atomic writes, plain types only, a fallback when the last file is damaged.

A checkpoint is a dict that ``torch.load(weights_only=True)`` accepts (docs/reference.md §4): tensors,
dicts, lists, tuples, numbers, strings. It holds ``model`` (state_dict), ``optimizer``, ``scheduler``,
``scaler``, ``rng`` (torch / numpy / python states converted to tensors and lists), ``epoch``,
``step``, ``batch_in_epoch`` (>0 for a mid-epoch checkpoint), ``best``, ``config`` (plain dict),
``model_spec`` ``{name, kwargs}``, ``medres_version``, and ``folds_sha256`` / ``config_sha256`` (what
it was trained with, checked on resume: :mod:`medres.training.run_guard`). Case ids from the manifest
may appear; no DICOM field ever does.

Writing: temporary file in the same folder, ``fsync``, then ``os.replace``; before replacing
``checkpoint_last.pt`` the previous good file is kept as ``checkpoint_prev.pt``, so a file truncated by
a crash (or a full disk) falls back to it with a warning. A write the disk refuses is a DataError
"disk full at FOLDER ...; the last good checkpoint is PATH", leaving no temporary file; temporaries a
killed process left are removed by :func:`clean_stale_temporaries` at the next start.

Reading: every check lives in :func:`load_checkpoint` (and :func:`load_weights` for the fit to a model);
a model is rebuilt only here: :func:`rebuild_model` (a checkpoint file or dict), :func:`fold_model` (a
run's fold, best else last) and :func:`exported_model` (a ``medres.export`` safetensors file), all through
:func:`build_checked_model`, which checks the spec against the stored weights on the ``meta`` device
before it allocates anything. No other medres module calls ``torch.load`` on a model's file.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medres.errors import ConfigError, DataError
from medres.files import atomic_write
from medres.runfolder import CHECKPOINT_BEST, CHECKPOINT_LAST, CHECKPOINT_PREV, RunFolder

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_model", "load_weights", "build_checked_model",
    "rebuild_model", "fold_model", "exported_model", "to_plain", "rng_state",
    "set_rng_state", "unwrap_model", "clean_stale_temporaries", "copy_checkpoint",
]

log = logging.getLogger("medres.training")

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
        if keep_previous and path.exists() and (_written_here(path) or _loads(path)):
            os.replace(path, _previous(path))

    try:
        written = atomic_write(path, lambda tmp: torch.save(plain, tmp), before_replace=keep_previous_file)
    except (OSError, RuntimeError) as exc:
        if _is_write_failure(exc):
            raise _write_error(exc, path) from None
        raise
    _WRITTEN[os.path.abspath(written)] = _identity(written)
    return written


# the files save_checkpoint wrote (and synced) in this process, by path: (inode, size, mtime) when written
_WRITTEN: dict[str, tuple[int, int, int]] = {}


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _written_here(path: Path) -> bool:
    """True when ``path`` is still the very file this process's :func:`save_checkpoint` wrote there (same
    inode, size and modification time): written whole and synced before its atomic rename, it needs no
    re-read to be kept as the previous one (a full ``torch.load`` each epoch). Any other file, e.g. one
    left by an earlier process or changed since, is loaded first."""
    try:
        return _WRITTEN.get(os.path.abspath(path)) == _identity(path)
    except OSError:
        return False


def _previous(path: Path) -> Path:
    return path.with_name(PREV if path.name == LAST else f"{path.stem}_prev.pt")


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError, or torch's RuntimeError from its zip writer (``inline_container.cc``: 'file write
    failed', 'enforce fail'), both of which mean the disk refused the bytes."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return "inline_container" in text or "file write failed" in text or "unexpected pos" in text


def _write_error(exc: BaseException, path: Path) -> DataError:
    """'disk full at PATH; the last good checkpoint is PATH' (or the disk problem that stopped it)."""
    code = getattr(exc, "errno", None)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = code in (errno.ENOSPC, errno.EDQUOT) or (not isinstance(exc, OSError) and free is not None
                                                    and free < 64 * 2**20)
    what = "disk full" if full else f"could not write ({os.strerror(code) if code else type(exc).__name__})"
    good = [p for p in (path, _previous(path)) if p.exists() and _loads(p)]
    last = f"the last good checkpoint is {good[0]}" if good else "no earlier checkpoint was written"
    return DataError(f"{what} at {path.parent} while writing {path.name}; {last}", path=path,
                     hint="free disk space (or choose another output.dir) and run again with --resume; "
                          "nothing else in the run folder was changed")


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary checkpoint files (``.checkpoint_*.pt.*.tmp*``) a killed write left in
    ``folder``; called when a fold starts."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.pt.*.tmp*"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            continue
    if removed:
        log.info("removed %d unfinished checkpoint file(s) left by an interrupted write in %s",
                 len(removed), folder)
    return removed


def _loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        return False


def _refusal(exc: Exception, path: Path) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in medres's words."""
    text = str(exc)
    if "Unsupported global" in text or "GLOBAL " in text or "Unsupported class" in text:
        return ("holds Python code or objects that medres never writes into a checkpoint (a medres "
                "checkpoint holds only tensors, numbers, strings, lists and dicts); it was refused "
                "without running any of it")
    if isinstance(exc, (pickle.UnpicklingError, EOFError, RuntimeError)) or "zip" in text.lower():
        return f"is damaged, truncated or not a checkpoint ({type(exc).__name__})"
    first = text.splitlines()[0][:160] if text else ""  # OSError and the like: no PyTorch advice in them
    return f"could not be read ({type(exc).__name__}: {first})"


def _check_structure(state: Any, path: Path) -> None:
    """Refuse what is not a medres checkpoint: not a dict, no ``model`` state dict, an invalid config."""
    if not isinstance(state, dict):
        raise ConfigError(f"is not a medres checkpoint: it holds a {type(state).__name__}, not a dict",
                          path=path, hint="pass a fold's checkpoint_best.pt written by medres.train")
    model = state.get("model")
    if not isinstance(model, Mapping) or not model or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        what = "no 'model' entry" if model is None else "a 'model' entry that is not a state dict"
        raise ConfigError(f"is not a medres checkpoint: it has {what}", path=path,
                          hint="pass a fold's checkpoint_best.pt written by medres.train")
    if "config" in state:
        from pydantic import ValidationError

        from medres.config import Config

        try:
            Config.model_validate(state["config"])
        except (ValidationError, TypeError, ValueError) as exc:
            n = len(exc.errors()) if isinstance(exc, ValidationError) else 1
            raise ConfigError(f"holds a configuration that is not valid ({n} problem(s), e.g. "
                              f"{_first_problem(exc)})", path=path,
                              hint="the file was edited or written by an incompatible medres version: "
                                   "use another checkpoint or retrain") from None


def _first_problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', '')}"
    return type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    fallback: bool = True, expect_model: torch.nn.Module | None = None,
                    mmap: bool = False, warn: bool = True) -> dict[str, Any]:
    """Load and check a checkpoint; a damaged file falls back to its ``_prev`` copy.

    Every check of a checkpoint is here: loaded with ``weights_only=True`` (a file holding code or
    objects is refused, with no advice to load it otherwise); it must be a dict with a ``model`` state
    dict and, when it has one, a valid ``config``; with ``expect_model``, its weights must fit that
    model (same names and shapes). ``mmap=True`` maps the tensors instead of reading them (a look at the
    metadata costs no memory); ``warn=False`` leaves the fallback unlogged (a look before the real
    load). Raises ``ConfigError`` naming the file and what to do.
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
            state = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - truncated zip, refused pickle, ...
            reason = _refusal(e, p)
            if reason.startswith("holds Python code"):
                raise ConfigError(reason, path=p, hint="use a checkpoint written by medres.train; do not "
                                                       "load files of unknown origin") from None
            problems.append(f"{p}: {reason}")
            continue
        _check_structure(state, p)
        if i > 0 and warn:
            log.warning("%s is damaged or missing (%s); resuming from the previous good checkpoint %s",
                        path, problems[0], p)
        if expect_model is not None:
            load_weights(expect_model, state, path=p, strict_check_only=True)
        return state
    raise ConfigError("no usable checkpoint: " + "; ".join(problems), path=path,
                      hint="start without --resume, or point to another run folder")


def load_weights(model: torch.nn.Module, state: Mapping[str, Any], *,
                 path: str | os.PathLike[str] | None = None,
                 strict_check_only: bool = False) -> None:
    """Load ``state["model"]`` into ``model``; weights of another model or width are a ConfigError
    saying how many names and shapes differ (never PyTorch's hundred-line ``load_state_dict`` text)."""
    target = unwrap_model(model)
    weights = state["model"]
    own = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    spec = state.get("model_spec") if isinstance(state.get("model_spec"), Mapping) else {}
    _check_fit(own, {k: tuple(v.shape) for k, v in weights.items()}, spec, path)
    if not strict_check_only:
        target.load_state_dict(weights)


def _check_fit(own: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]], spec: Mapping,
               path: str | os.PathLike[str] | None, *, described: str = "") -> None:
    """ConfigError when the stored weights' names and shapes are not the model's."""
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    shapes = [(k, stored[k], want) for k, want in own.items() if k in stored and stored[k] != want]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) the model needs are absent (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weight(s) the model does not have (e.g. {unexpected[0]})")
    if shapes:
        k, have, want = shapes[0]
        parts.append(f"{len(shapes)} weight(s) differ in shape (e.g. {k}: {list(have)} in the file, "
                     f"{list(want)} in the model)")
    name = f" (the file's model is {str(spec.get('name'))[:60]!r})" if spec.get("name") else ""
    raise ConfigError(f"holds the weights of another model or width{name}{described}: " + "; ".join(parts),
                      path=path, hint="use the file written for this configuration (model.name, widths, "
                                      "channels and classes must match), or retrain")


#: model_spec keyword values a medres model takes: numbers, strings, booleans, None and lists of them
_SPEC_LEAF = (bool, int, float, str, type(None))


def build_checked_model(spec: Any, stored: Mapping[str, Sequence[int]], *,
                        path: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """The model a checkpoint's or an export's ``model_spec`` describes, built only once the spec has
    been checked against the stored weights' names and shapes (``stored``: name -> shape, read from the
    file's metadata): the architecture is first built on the ``meta`` device, which allocates nothing,
    so a small file asking for a huge network is refused before it costs memory. The one way medres
    rebuilds a model from a file (checkpoint, fold, export). Raises ConfigError naming ``path``."""
    from medres.models import create_model

    if not (isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("kwargs"), Mapping) and all(isinstance(k, str) for k in spec["kwargs"])
            and all(_plain_option(v) for v in spec["kwargs"].values())):
        raise ConfigError("its model_spec is not {name: text, kwargs: {option: value}}", path=path,
                          hint="use a file written by medres.train or medres.export")
    name, kwargs = spec["name"], dict(spec["kwargs"])
    try:
        with torch.device("meta"):
            skeleton = create_model(name, **kwargs)
        own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        size = sum(v.numel() * v.element_size() for v in skeleton.state_dict().values())
    except ConfigError as e:
        raise ConfigError(e.reason, field=e.field, hint=e.hint, path=path) from None
    except (TypeError, ValueError, RuntimeError, OverflowError, AttributeError, KeyError,
            RecursionError) as e:
        raise ConfigError(f"its model_spec cannot build a model ({type(e).__name__})", path=path,
                          hint="use a file written by medres.train or medres.export") from None
    stored = {str(k): tuple(int(x) for x in v) for k, v in stored.items()}
    held = sum(math.prod(v) for v in stored.values())
    _check_fit(own, stored, spec, path, described=(
        f"; its model_spec describes {sum(math.prod(v) for v in own.values()):,} values "
        f"({size / 2**30:.2f} GiB), the file holds {held:,}"))
    from medres.data.readers.limits import memory_allowance

    room, what = memory_allowance()
    if room is not None and size > room:
        raise ConfigError(f"its model needs {size / 2**30:.1f} GiB, more than the process may use "
                          f"({room / 2**30:.1f} GiB: {what})", path=path,
                          hint="load it on a machine with more memory")
    try:
        return create_model(name, **kwargs)
    except ConfigError as e:
        raise ConfigError(e.reason, field=e.field, hint=e.hint, path=path) from None


def _plain_option(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) <= 64 and all(_plain_option(x) for x in v)
    return isinstance(v, _SPEC_LEAF)


#: what a checkpoint may hold besides dicts, lists and tuples (what ``torch.load(weights_only=True)`` gives)
_PLAIN_LEAF = (torch.Tensor, bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _check_plain(state: Mapping[str, Any], path: str | os.PathLike[str] | None) -> None:
    """ConfigError unless a checkpoint dict given in memory holds only tensors and plain values (the check
    a file gets from ``weights_only`` loading); the error names the top-level entry, never a value."""
    def plain(obj: Any, depth: int) -> bool:
        if isinstance(obj, _PLAIN_LEAF):
            return True
        if depth > 64:
            return False
        if isinstance(obj, Mapping):
            return all(isinstance(k, (str, int)) and plain(v, depth + 1) for k, v in obj.items())
        return isinstance(obj, (list, tuple, set, frozenset)) and all(plain(v, depth + 1) for v in obj)

    for key, value in state.items():
        if not (isinstance(key, str) and plain(value, 0)):
            raise ConfigError(f"its {str(key)[:40]!r} entry holds something other than tensors and plain "
                              "values (numbers, strings, lists, dicts)", path=path,
                              hint="use a checkpoint written by medres.train")


def _filled(model: torch.nn.Module, spec: Any, weights: Mapping[str, torch.Tensor],
            path: str | os.PathLike[str] | None) -> torch.nn.Module:
    """``model`` (built by :func:`build_checked_model`) holding ``weights``, checked, in eval mode."""
    load_weights(model, {"model": weights, "model_spec": spec}, path=path)
    return model.eval()


def rebuild_model(source: str | os.PathLike[str] | Mapping[str, Any], *,
                  map_location: str | torch.device = "cpu", path: str | os.PathLike[str] | None = None
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) a checkpoint holds, and the checkpoint: the one way medres rebuilds a model.

    ``source`` is a checkpoint file (read by :func:`load_checkpoint`, with its checks and fallback) or a
    checkpoint dict (given the same checks: plain types only, a ``model`` state dict, a valid config;
    ``path`` names it in errors). Its ``model_spec`` is checked against its weights before anything is
    built. Raises ConfigError naming the file."""
    if isinstance(source, Mapping):
        state = dict(source)
        _check_plain(state, path)
        _check_structure(state, path)
    else:
        path = source if path is None else path
        state = load_checkpoint(source, map_location=map_location)
    if "model_spec" not in state:
        raise ConfigError("not a medres checkpoint (no 'model_spec' entry)", path=path,
                          hint="use a checkpoint written by medres.train")
    spec, weights = state["model_spec"], state["model"]
    model = build_checked_model(spec, {k: v.shape for k, v in weights.items()}, path=path)
    return _filled(model, spec, weights, path), state


def fold_model(run_dir: str | os.PathLike[str], fold: int, *, map_location: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`rebuild_model` of fold ``fold`` of a run folder: its best checkpoint, else its last."""
    return rebuild_model(RunFolder(run_dir).predicting_checkpoint(fold), map_location=map_location)


def exported_model(path: str | os.PathLike[str], spec: Any) -> torch.nn.Module:
    """The model (eval mode) of a ``medres.export`` weights file (safetensors) and its ``model_spec``.

    The safetensors header is read first (the library checks its offsets and sizes against the file)
    and the names and shapes it lists are checked against ``spec`` on the ``meta`` device before any
    tensor is read (:func:`build_checked_model`). Raises ConfigError naming ``path``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors' own error for a header that does not hold
        raise _not_safetensors(exc, path) from None
    model = build_checked_model(spec, shapes, path=path)  # refused here before a tensor is read
    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the same, met when the data is read
        raise _not_safetensors(exc, path) from None
    return _filled(model, spec, weights, path)


def _not_safetensors(exc: Exception, path: Path) -> ConfigError:
    return ConfigError(f"is not a valid safetensors file ({str(exc).splitlines()[0][:160]})",
                       path=path, hint="copy the whole export folder again, or export again")


def load_model(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, Any]:
    """Rebuild the model stored in a checkpoint: ``(model in eval mode, Config)``."""
    from medres.config import Config

    state = load_checkpoint(path, map_location=map_location)
    if "config" not in state:
        raise ConfigError("not a medres checkpoint (no 'config' entry)", path=path)
    config = Config.model_validate(state["config"])  # validated by load_checkpoint already
    return rebuild_model(state, path=path)[0], config


def copy_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Atomically copy a checkpoint file (used for ``checkpoint_best.pt``)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
