"""Loading the members of a fold ensemble: a run's fold checkpoints, or a ``medres.export`` folder.

A member is a model in eval mode, its fitted calibration map (a checkpoint's ``calibration`` entry,
see ``medres.engine.calibrate``) and a name (``fold<k>``). All members share one Config: an ensemble
needs one preprocessing and one meaning per output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medres.engine.checkpoint import load_checkpoint
from medres.errors import ConfigError, DataError
from medres.layout import CHECKPOINTS_BEST_FIRST

__all__ = ["EXPORT_FORMAT", "prediction_checkpoint", "load_members", "load_run_members", "run_folds",
           "load_export", "sha256_file"]

#: The version of the ``export.json`` layout that ``load_export`` reads.
EXPORT_FORMAT = 1


def prediction_checkpoint(fold_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a fold predicts with: ``checkpoint_best.pt``, else ``checkpoint_last.pt``."""
    fold_dir = Path(fold_dir)
    for name in CHECKPOINTS_BEST_FIRST:
        if (fold_dir / name).exists():
            return fold_dir / name
    return fold_dir / CHECKPOINTS_BEST_FIRST[-1]


def load_members(paths: Sequence[str | os.PathLike[str]]
                 ) -> tuple[list[nn.Module], Any, list[dict | None], list[str]]:
    """Models (eval mode), the first one's Config, each one's ``calibration`` and member names.

    Raises ConfigError when the checkpoints disagree on the data pipeline or the class vocabulary
    (an ensemble needs one preprocessing and one meaning per output).
    """
    from medres.config import Config
    from medres.models import create_model

    models, cals, names, config, first = [], [], [], None, None
    for path in paths:
        state = load_checkpoint(path)
        try:
            spec, cfg = state["model_spec"], Config.model_validate(state["config"])
        except KeyError as e:
            raise ConfigError(f"not a medres checkpoint (no {e.args[0]!r} entry)", path=path) from None
        data = cfg.data.model_dump(mode="json", include={"labels", "windows", "normalize", "orientation",
                                                         "spacing", "patch_size", "image_columns",
                                                         "spatial_dims", "modality", "mask_labels"})
        if first is None:
            config, first = cfg, data
        elif data != first:
            raise ConfigError("the checkpoints of the ensemble differ in their data pipeline or labels",
                              path=path, hint="ensemble only the folds of one run")
        model = create_model(spec["name"], **spec["kwargs"])
        model.load_state_dict(state["model"])
        models.append(model.eval())
        cal = state.get("calibration")
        cals.append(dict(cal) if cal else None)
        fold = state.get("fold")
        names.append(f"fold{fold}" if isinstance(fold, int) else f"model{len(names)}")
    if not models:
        raise ConfigError("no checkpoints to ensemble")
    if len(set(names)) != len(names):
        names = [f"model{i}" for i in range(len(names))]
    return models, config, cals, names


def run_folds(run_dir: str | os.PathLike[str]) -> list[int]:
    """The fold numbers of a run folder that have a checkpoint, sorted."""
    run_dir = Path(run_dir)
    out = []
    for p in run_dir.glob("fold_*"):
        if re.fullmatch(r"fold_\d+", p.name) and prediction_checkpoint(p).exists():
            out.append(int(p.name.split("_")[1]))
    return sorted(out)


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
    models, config, cals, _ = load_members([prediction_checkpoint(run_dir / f"fold_{k}") for k in wanted])
    return models, config, cals, [f"fold{k}" for k in wanted]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_export(folder: str | Path) -> tuple[list[Any], Any, list[dict | None], list[str]]:
    """Models (PyTorch, from the safetensors weights), Config, calibration maps and member names of an
    export folder: everything ``Predictor`` needs, without the run folder."""
    from safetensors.torch import load_file

    from medres.config import Config
    from medres.models import create_model

    folder = Path(folder)
    meta_path = folder / "export.json"
    if not meta_path.is_file():
        raise DataError("not a medres export (no export.json)", path=folder,
                        hint="pass a folder written by python -m medres.export")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"export format {meta.get('format')!r} is not {EXPORT_FORMAT}", path=meta_path)
    try:
        config = Config.model_validate(meta["config"])
    except Exception as exc:  # noqa: BLE001 - a pydantic error: the export was edited or is damaged
        raise DataError(f"the export's configuration is invalid: {str(exc).splitlines()[0]}",
                        path=meta_path) from None
    models, cals, names = [], [], []
    for mm in meta["members"]:
        path = folder / mm["files"]["safetensors"]
        if not path.is_file():
            raise DataError("weights file missing", path=path, hint="copy the whole export folder")
        digest = meta.get("sha256", {}).get(path.name)
        if digest is not None and sha256_file(path) != digest:
            raise DataError("weights file does not match its SHA-256 in export.json", path=path)
        model = create_model(mm["model_spec"]["name"], **mm["model_spec"]["kwargs"])
        model.load_state_dict(load_file(str(path)))
        models.append(model.eval())
        cals.append(mm.get("calibration"))
        names.append(mm["name"])
    return models, config, cals, names
