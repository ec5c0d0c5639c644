"""The run's cohort as a manifest table: a CSV manifest, an ImageNet-style image folder, or the demo
cohort (generated on first use).

``load_cohort(cfg)`` returns the config with ``data.manifest`` / ``data.labels`` filled in and the
manifest as a DataFrame (every column text). Under torchrun, call it on rank 0 first (it may write the
demo cohort), then on the other ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medres.config import Config
from medres.data.manifest import read_manifest
from medres.errors import ConfigError, DataError

__all__ = ["load_cohort", "image_folder_manifest"]

log = logging.getLogger("medres.data")


def image_folder_manifest(folder: Path, link_roots: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """ImageNet-style ``folder/<class>/<image>`` (or ``folder/{train,val}/<class>/<image>``, val being the
    test split): a manifest, one row per image, and the sorted class names.

    As for a manifest's data root, an image reached through a symbolic link (a file or a class folder)
    must still lie inside ``folder`` or inside one of ``link_roots`` (``data.link_roots``)."""
    if not folder.is_dir():
        raise DataError("image folder not found", path=folder, hint="check data.image_folder")
    parts = {"train": folder / "train", "test": folder / "val"}
    if not all(p.is_dir() for p in parts.values()):
        parts = {"train": folder}
    classes = sorted(p.name for p in parts["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class subfolders found", path=folder,
                        hint="put the images of each class in a subfolder named after it")
    rows = []
    for split, root in parts.items():
        for c in classes:
            for f in sorted((root / c).iterdir()) if (root / c).is_dir() else []:
                if f.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    case = f"{split}/{c}/{f.stem}" if len(parts) > 1 else f"{c}/{f.stem}"
                    rows.append({"case_id": case, "patient_id": case, "image": str(f), "mask": "", "label": c,
                                 "split": split})
    if not rows:
        raise DataError("no PNG/JPEG images in the class subfolders", path=folder)
    trusted = [os.path.realpath(folder)] + [os.path.realpath(r) for r in link_roots]
    outside = [r["image"] for r in rows
               if not any(os.path.commonpath([os.path.realpath(r["image"]), t]) == t for t in trusted)]
    if outside:
        raise DataError(f"{len(outside)} image(s) lead out of the image folder through a symbolic link (the "
                        f"first: {os.path.relpath(outside[0], folder)}); medres does not follow links out of "
                        "it", path=folder, hint="copy the images into the folder, or name the folder the "
                                                "links lead into in data.link_roots")
    return pd.DataFrame(rows, dtype=str), classes


def load_cohort(cfg: Config) -> tuple[Config, pd.DataFrame]:
    """The manifest as a DataFrame (the demo cohort generated first when configured) and the config with
    ``data.manifest`` / ``data.labels`` filled in for the run."""
    d = cfg.data
    if d.image_folder is not None:
        df, classes = image_folder_manifest(Path(d.image_folder), d.link_roots)
        if cfg.model.num_classes != len(classes) and d.labels != classes:
            raise ConfigError(f"{len(classes)} class folders but model.num_classes={cfg.model.num_classes}",
                              field="model.num_classes", hint=f"set model.num_classes={len(classes)}")
        data = d.model_copy(update={"labels": classes, "mask_column": None, "positive_label": None})
        return cfg.model_copy(update={"data": data}), df
    if d.manifest is None:
        if d.demo is None:
            raise ConfigError("no data: set data.manifest (a CSV), data.image_folder or data.demo",
                              field="data.manifest")
        log.info("demo cohort: %s (generated on first use, %d patients)", Path(d.demo.out).resolve(),
                 d.demo.n_patients)
        from medres.progress import progress_wanted

        if d.demo.kind in ("cxr", "cxr_findings"):  # the chest X-ray demo (medres.data.demo.cxr)
            from medres.data.demo.cxr import generate_cxr_demo

            manifest = generate_cxr_demo(d.demo.out, n_patients=d.demo.n_patients, seed=d.demo.seed,
                                         findings=d.demo.kind == "cxr_findings", progress=progress_wanted())
        else:
            from medres.data.demo import generate_demo

            manifest = generate_demo(d.demo.out, n_patients=d.demo.n_patients, seed=d.demo.seed,
                                     grid=d.demo.grid, grid_scale=d.demo.grid_scale,
                                     workers=d.demo.workers or min(os.cpu_count() or 1, 16),
                                     progress=progress_wanted())
        cfg = cfg.model_copy(update={"data": d.model_copy(update={"manifest": str(manifest)})})
    # with tasks: the tasks' columns are the targets (their cells checked here, before any training)
    df = read_manifest(cfg.data.manifest, vocabulary=cfg.data.labels if cfg.tasks is None else None,
                       root=cfg.data.root, link_roots=cfg.data.link_roots, key_file=cfg.data.index.key_file)
    if cfg.tasks is not None:
        from medres.data.tasks import parse_task_targets

        parse_task_targets(df, cfg.tasks)
        if "label" in df.columns and not any("label" in t.target_columns() for t in cfg.tasks):
            df = df.drop(columns="label")  # no task reads it, so data.labels need not name its values
    return cfg, df
