"""Loading the members of a fold ensemble: a run's fold checkpoints, or a ``medres.export`` folder.

A member is a model in eval mode, its fitted calibration map (a checkpoint's ``calibration`` entry,
see ``medres.training.calibrate``) and a name (``fold<k>``). All members share one Config: an ensemble
needs one preprocessing and one meaning per output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medres.checkpoint import exported_model, load_checkpoint, rebuild_model
from medres.errors import ConfigError, DataError
from medres.runfolder import FoldFolder, RunFolder, member_name

__all__ = ["EXPORT_FORMAT", "prediction_checkpoint", "load_members", "load_run_members", "run_folds",
           "load_export", "export_file", "sha256_file"]

#: The version of the ``export.json`` layout that ``load_export`` reads.
EXPORT_FORMAT = 1


def prediction_checkpoint(fold_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a fold predicts with: the best, else the last (``medres.runfolder``)."""
    return FoldFolder(Path(fold_dir)).predicting_checkpoint()


def load_members(paths: Sequence[str | os.PathLike[str]]
                 ) -> tuple[list[nn.Module], Any, list[dict | None], list[str]]:
    """Models (eval mode), the first one's Config, each one's ``calibration`` and member names.

    A checkpoint's ``task_scales`` (the regression targets' mean and sd, ``tasks:`` configurations) are
    copied into its calibration map, which then holds everything its outputs need.

    Raises ConfigError when the checkpoints disagree on the data pipeline or the class vocabulary
    (an ensemble needs one preprocessing and one meaning per output).
    """
    from medres.config import Config

    models, cals, names, config, first = [], [], [], None, None
    for path in paths:
        state = load_checkpoint(path)
        if "config" not in state:
            raise ConfigError("not a medres checkpoint (no 'config' entry)", path=path)
        cfg = Config.model_validate(state["config"])  # validated by load_checkpoint already
        data = cfg.data.model_dump(mode="json", include={"labels", "windows", "normalize", "orientation",
                                                         "spacing", "patch_size", "image_columns",
                                                         "spatial_dims", "modality", "mask_labels"})
        data["tasks"] = cfg.model_dump(mode="json", include={"tasks"}).get("tasks")  # one meaning per output
        if first is None:
            config, first = cfg, data
        elif data != first:
            raise ConfigError("the checkpoints of the ensemble differ in their data pipeline, labels or "
                              "tasks", path=path, hint="ensemble only the folds of one run")
        models.append(rebuild_model(state, path=path)[0])  # its spec checked against its weights first
        cal = state.get("calibration")
        cal = dict(cal) if cal else None
        if state.get("task_scales"):  # a tasks: model's target scales travel with its calibration map
            cal = {**(cal or {}), "task_scales": state["task_scales"]}
        cals.append(cal)
        fold = state.get("fold")
        names.append(member_name(fold) if isinstance(fold, int) else f"model{len(names)}")
    if not models:
        raise ConfigError("no checkpoints to ensemble")
    if len(set(names)) != len(names):
        names = [f"model{i}" for i in range(len(names))]
    return models, config, cals, names


def run_folds(run_dir: str | os.PathLike[str]) -> list[int]:
    """The fold numbers of a run folder that have a checkpoint, sorted."""
    return RunFolder(run_dir).trained_folds()


def load_run_members(run_dir: str | os.PathLike[str], folds: Sequence[int] | None = None
                     ) -> tuple[list[nn.Module], Any, list[dict | None], list[str]]:
    """:func:`load_members` for the folds of a run folder (default: every fold with a checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("run folder not found", path=run_dir, hint="pass runs/NAME as written by training")
    have = run_folds(run_dir)
    wanted = have if folds is None else [int(k) for k in folds]
    missing = [k for k in wanted if k not in have]
    if missing or not wanted:
        raise DataError(f"no checkpoint for fold(s) {missing or 'any'}", path=run_dir,
                        hint=f"folds with a checkpoint: {have or 'none'}; train them first "
                             "(python -m medres.train --fold k)")
    run = RunFolder(run_dir)
    models, config, cals, _ = load_members([run.predicting_checkpoint(k) for k in wanted])
    return models, config, cals, [member_name(k) for k in wanted]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: export.json is a few kilobytes; anything far larger is not one (and would be read whole)
MAX_EXPORT_JSON_BYTES = 16 * 2**20


def load_export(folder: str | Path) -> tuple[list[Any], Any, list[dict | None], list[str]]:
    """Models (PyTorch, from the safetensors weights), Config, calibration maps and member names of an
    export folder: everything ``Predictor`` needs, without the run folder.

    Nothing is built before it is checked: export.json must have the layout medres writes, every file it
    names must lie inside the folder (no absolute path, ``..`` or link out of it), each weights file's
    safetensors header must be consistent (the library checks offsets and sizes against the file) and its
    tensor names and shapes must be those of the member's ``model_spec``, compared on the ``meta`` device
    (:func:`medres.checkpoint.exported_model`). Raises ConfigError / DataError."""
    from medres.config import Config

    folder = Path(folder)
    meta_path = folder / "export.json"
    if not meta_path.is_file():
        raise DataError("not a medres export (no export.json)", path=folder,
                        hint="pass a folder written by python -m medres.export")
    meta = _read_export_json(meta_path)
    if meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"export format {str(meta.get('format'))[:40]!r} is not {EXPORT_FORMAT}",
                        path=meta_path)
    try:
        config = Config.model_validate(meta.get("config"))
    except Exception as exc:  # noqa: BLE001 - a pydantic error: the export was edited or is damaged
        raise DataError(f"the export's configuration is invalid: {str(exc).splitlines()[0]}",
                        path=meta_path) from None
    members = meta.get("members")
    if not isinstance(members, list) or not members or not all(_member_ok(m) for m in members):
        raise ConfigError("export.json has no valid 'members' list (each member: name, model_spec, files "
                          "with its safetensors file)", path=meta_path,
                          hint="pass a folder written by python -m medres.export, unedited")
    for mm in members:  # every file named, before any is read
        for name in mm["files"].values():
            export_file(folder, name)
    if meta.get("ensemble_onnx") is not None:
        export_file(folder, meta["ensemble_onnx"])
    digests = meta.get("sha256") if isinstance(meta.get("sha256"), dict) else {}
    models, cals, names = [], [], []
    for mm in members:
        path = export_file(folder, mm["files"]["safetensors"])
        if not path.is_file():
            raise DataError("weights file missing", path=path, hint="copy the whole export folder")
        digest = digests.get(path.name)
        if digest is not None and sha256_file(path) != digest:
            raise DataError("weights file does not match its SHA-256 in export.json", path=path)
        models.append(exported_model(path, mm["model_spec"]))
        cal = mm.get("calibration")
        cals.append(dict(cal) if isinstance(cal, dict) else None)
        names.append(mm["name"])
    return models, config, cals, names


def _read_export_json(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_EXPORT_JSON_BYTES:
        raise ConfigError(f"export.json is {size / 2**20:.0f} MiB; medres writes a few kilobytes", path=path,
                          hint="pass a folder written by python -m medres.export")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"export.json is not valid JSON ({type(exc).__name__})", path=path,
                          hint="pass a folder written by python -m medres.export, unedited") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"export.json holds a {type(meta).__name__}, not an object", path=path,
                          hint="pass a folder written by python -m medres.export, unedited")
    return meta


def _member_ok(mm: Any) -> bool:
    return (isinstance(mm, dict) and isinstance(mm.get("name"), str)
            and isinstance(mm.get("model_spec"), dict) and isinstance(mm.get("files"), dict)
            and isinstance(mm["files"].get("safetensors"), str)
            and all(isinstance(v, str) for v in mm["files"].values()))


def export_file(folder: str | os.PathLike[str], name: Any) -> Path:
    """The file ``name`` (as export.json gives it) inside the export ``folder``; ConfigError for a name
    that is not a plain relative path or that leads out of the folder (``..``, an absolute path, or a
    link to a file elsewhere)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute():
        raise ConfigError(f"export.json names a file that is not a relative path inside the export "
                          f"({str(name)[:80]!r})", path=folder / "export.json",
                          hint="pass a folder written by python -m medres.export, unedited")
    path = folder / name
    root = folder.resolve()
    try:
        inside = path.resolve().is_relative_to(root) and path.resolve() != root
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside or ".." in Path(name).parts:
        raise ConfigError(f"export.json names a file outside the export folder ({name[:80]!r})",
                          path=folder / "export.json",
                          hint="every file of an export lies in its folder: copy the whole folder, links "
                               "resolved (cp -rL)")
    return path
