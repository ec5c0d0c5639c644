"""Pre-flight check of a whole cohort: ``python -m medres.data.check --manifest M [--config C] [--root R]
[--manifest-only]``.

Validates the manifest (every row), loads every row's image(s) and mask through the same reader
training uses (in parallel worker processes), and checks each image/mask pair (shape, spacing, affine,
mask labels). Progress and each problem or warning go to stderr as they are found; all problems are
then printed as one table (row, case, path, reason, hint); the exit status is 1 when there is any,
else 0 with a one-line summary. Warnings (patient ids equal but for zeros/case/spaces, all-zero
images, one-slice volumes, a patch larger than every image) do not fail the check.
Modelled on nnU-Net's ``verify_dataset_integrity``: find every broken scan
before a training run spends hours and fails on the last one.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medres.data.readers.limits import patch_fits_none, patch_misfit, resampled_shape
from medres.errors import ConfigError, DataError, DataErrors

__all__ = ["CheckResult", "CheckSettings", "check_cohort", "format_problems"]


@dataclass(frozen=True)
class CheckSettings:
    """What :func:`check_cohort` checks a manifest against (the ``data`` section's settings).

    Attributes:
        vocabulary: the class names labels must be one of (None: any).
        root: the data root paths may not leave (default: the manifest's folder).
        image_columns, mask_column: the manifest's image column(s) and mask column.
        mask_labels: the label values a mask may hold (None: any).
        ndim: 2 or 3 spatial dimensions (None: as read).
        atol: image/mask affine tolerance (mm).
        max_voxels, max_files_per_series: the reader's limits.
        patch_size, spacing: warn when the patch is larger than every (resampled) image.
        workers: reading processes (default: the CPUs, at most 8; 1 reads in this process).
        manifest_only: the manifest's columns, rows, labels and paths only, without reading a scan (and
            without importing torch or MONAI: seconds for a large cohort).
        radiograph: ``{"require_spacing": bool, "views": [...] | None}`` for ``data.modality: XR``: the
            checks of ``medres.data.readers.radiograph.RadiographGeometryd`` (spacing, view, mask size).
        link_roots, key_file: the folders symbolic links may lead into (:func:`read_manifest`).
        tasks: the configuration's tasks (``cfg.tasks``): their cells are checked too
            (``medres.data.tasks``); None: none.
    """

    vocabulary: Sequence[str] | None = None
    root: str | Path | None = None
    image_columns: Sequence[str] | None = None
    mask_column: str | None = "mask"
    mask_labels: Sequence[int] | None = None
    ndim: int | None = None
    atol: float = 1e-3
    max_voxels: int | None = None
    max_files_per_series: int | None = None
    patch_size: Sequence[int] | None = None
    spacing: Sequence[float] | None = None
    workers: int | None = None
    manifest_only: bool = False
    radiograph: dict | None = None
    link_roots: Sequence[str] = ()
    key_file: str | None = None
    tasks: Sequence[Any] | None = None

    def updated(self, **changes: Any) -> CheckSettings:
        """A copy with ``changes`` (field names; an unknown name is a TypeError naming the fields)."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"unknown check setting(s) {unknown}; CheckSettings has {names}")
        return replace(self, **changes) if changes else self


@dataclass
class CheckResult:
    """What :func:`check_cohort` found: every problem and warning, and how much was checked."""

    problems: list[DataError] = field(default_factory=list)
    rows: int = 0
    images: int = 0
    masks: int = 0
    warnings: list[DataError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _normalised_id(pid: str) -> str:
    """A patient id with case, spaces, the leading zeros of each number and its Unicode form removed:
    NFKC (full-width ``００７`` is ``007``), format characters dropped (zero-width space, BOM, ...), every
    decimal digit as ASCII. ``' 007 '`` and ``7`` agree, as do ``P009``, ``p9`` and ``P\u200b9``."""
    if pid.isascii():  # NFKC leaves ASCII as it is, and ASCII holds no format characters
        text = "".join(pid.split()).casefold()
    else:
        text = unicodedata.normalize("NFKC", pid)
        text = "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text
                       if unicodedata.category(ch) != "Cf")
        text = unicodedata.normalize("NFKC", "".join(text.split()).casefold())
    return re.sub(r"(?<!\d)0+(?=\d)", "", text)


def similar_patient_ids(df: Any) -> list[DataError]:
    """Warnings for patient ids that are different text but equal after stripping leading zeros, case,
    spaces and Unicode form (:func:`_normalised_id`): ids are text by design (``007`` and ``7`` are two
    patients), but this is the most common way one patient ends up in two folds."""
    groups: dict[str, dict[str, int]] = {}
    for i, pid in enumerate(df["patient_id"].astype(str), start=1):
        groups.setdefault(_normalised_id(pid), {}).setdefault(pid, i)
    out = []
    for ids in groups.values():
        if len(ids) > 1:
            listed = ", ".join(f"{pid!r} (row {row})" for pid, row in ids.items())
            rows = sorted(ids.values())
            out.append(DataError(f"patient ids {listed} differ only in leading zeros, case, spaces or "
                                 "Unicode form (invisible characters, full-width digits); they are treated "
                                 "as different patients", row=rows[1],
                                 hint="if they are one patient, write the id the same way in every row, "
                                      "or the patient can land in two folds"))
    return out


def _check_row(task: tuple) -> tuple[int, list[DataError], list[DataError], tuple[int, ...] | None, int, int]:
    """One manifest row (run in a worker process): problems, warnings, resampled shape, counts."""
    row, case, paths, series_uid, mask_path, pixel_spacing, view, settings = task
    ndim, atol, radiograph = settings.ndim, settings.atol, settings.radiograph
    max_voxels, max_files = settings.max_voxels, settings.max_files_per_series
    mask_labels = list(settings.mask_labels) if settings.mask_labels is not None else None
    spacing = list(settings.spacing) if settings.spacing else None
    problems: list[DataError] = []
    warnings: list[DataError] = []
    shape = None
    n_images = n_masks = 0
    from medres.data.readers.io import check_image_mask, load_image  # torch and MONAI: only to read scans

    try:
        image = load_image(paths[0] if len(paths) == 1 else paths, series_uid=series_uid, ndim=ndim,
                           max_voxels=max_voxels, max_files=max_files)
        n_images = len(paths)
        spatial = [int(v) for v in image.meta["spatial_shape"]]
        if not bool(image.any()):
            warnings.append(DataError("every voxel of the image is 0 (an empty export?)", path=paths[0],
                                      row=row, case_id=case, hint="re-export the scan"))
        if ndim == 3 and len(spatial) == 3 and 1 in spatial:
            warnings.append(DataError(f"is a one-slice volume {tuple(spatial)} in a 3D cohort", path=paths[0],
                                      row=row, case_id=case, hint="list the whole series, or drop the row"))
        mask = load_image(mask_path, ndim=ndim, dtype=None, max_voxels=max_voxels,
                          max_files=max_files) if mask_path else None
        if radiograph is not None:  # radiographs: manifest spacing/view, mask on the image's pixels
            from medres.data.readers.radiograph import RadiographGeometryd

            views = radiograph.get("views")
            d = RadiographGeometryd(require_spacing=bool(radiograph.get("require_spacing")),
                                    views=tuple(views) if views is not None else None)(
                {"image": image, "mask": mask, "pixel_spacing": pixel_spacing, "view": view})
            image, mask = d["image"], d["mask"]  # a PNG's spacing comes from the manifest only here
        shape = tuple(spatial)
        source = [float(v) for v in image.meta["spacing"]][: len(spatial)]
        if spacing and len(spacing) == len(spatial):
            shape = resampled_shape(spatial, source, spacing)
        if mask is not None:
            n_masks = 1
            check_image_mask(image, mask, labels=mask_labels, atol=atol)
    except DataError as err:
        problems.append(err.located(row=row, case_id=case))
    return row, problems, warnings, shape, n_images, n_masks


def _pool(workers: int):  # noqa: ANN202
    """Worker processes; forked on Linux so each starts with medres, torch and MONAI already imported."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    methods = mp.get_all_start_methods()
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork" if "fork" in methods else None))


def check_cohort(manifest: str | Path, settings: CheckSettings | None = None, *,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_problem: Callable[[DataError, bool], None] | None = None,
                 **changes: Any) -> CheckResult:
    """Check every row, file and image/mask pair of a manifest; never stops at the first problem.

    ``settings``: what to check against (:class:`CheckSettings`); ``changes``: fields of it to change, as
    keywords (``check_cohort(m, vocabulary=[...], ndim=3)``). ``on_problem(error, is_warning)`` is called
    as each is found, ``on_progress(done, total, problems)`` now and then. Warnings (not failures):
    patient ids equal after stripping zeros/case/spaces, all-zero images, one-slice volumes in a 3D
    cohort, a ``patch_size`` larger than every (resampled) image."""
    from medres.data.manifest import validate_manifest  # pandas: imported here, so --help is instant

    s = (settings or CheckSettings()).updated(**changes)
    result = CheckResult()
    report = on_problem or (lambda err, warning: None)
    try:
        df, errors = validate_manifest(manifest, vocabulary=s.vocabulary, root=s.root,
                                       image_columns=s.image_columns, link_roots=s.link_roots,
                                       key_file=s.key_file)
    except DataError as err:
        result.problems.append(err)
        return result
    for err in errors:
        report(err, False)
    result.problems.extend(errors)
    result.rows = len(df)
    if s.tasks is not None and len(df):
        for err in _task_problems(df, s.tasks, manifest):
            report(err, False)
            result.problems.append(err)
    images = df.attrs.get("image_columns")
    if images is None or s.manifest_only:  # column-level problems: the rows cannot be read
        result.problems.sort(key=lambda e: -1 if e.row is None else e.row)
        return result
    for warning in similar_patient_ids(df):
        report(warning, True)
        result.warnings.append(warning)
    bad_rows = {e.row for e in errors if e.row is not None}
    tasks = []
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 1
        if row in bad_rows:
            continue
        mask_path = rec.get(s.mask_column) if s.mask_column else None
        tasks.append((row, rec.get("case_id") or None, [rec[c] for c in images],
                      rec.get("series_uid") or None, mask_path or None, rec.get("pixel_spacing"),
                      rec.get("view"), s))
    n_workers = s.workers if s.workers is not None else min(8, os.cpu_count() or 1)
    shapes = []

    def take(out: tuple) -> None:
        _, problems, warnings, shape, n_images, n_masks = out
        for err in problems:
            report(err, False)
        for warning in warnings:
            report(warning, True)
        result.problems.extend(problems)
        result.warnings.extend(warnings)
        result.images += n_images
        result.masks += n_masks
        if shape is not None:
            shapes.append(shape)

    total = len(tasks)
    if n_workers <= 1 or total < 64:
        for done, task in enumerate(tasks, start=1):
            take(_check_row(task))
            if on_progress is not None and (done % 100 == 0 or done == total):
                on_progress(done, total, len(result.problems))
    else:
        with _pool(n_workers) as pool:
            for done, out in enumerate(pool.map(_check_row, tasks, chunksize=16), start=1):
                take(out)
                if on_progress is not None and (done % 200 == 0 or done == total):
                    on_progress(done, total, len(result.problems))
    largest = patch_fits_none(shapes, s.patch_size) if s.patch_size else None
    if largest is not None:
        reason, hint = patch_misfit(s.patch_size, largest, "every image")
        warning = DataError(reason, path=manifest, hint=hint)
        report(warning, True)
        result.warnings.append(warning)
    result.problems.sort(key=lambda e: -1 if e.row is None else e.row)
    result.warnings.sort(key=lambda e: -1 if e.row is None else e.row)
    return result


def _cell(text: object, width: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_problems(problems: Sequence[DataError]) -> str:
    """One plain-text table: row, case, path, reason, hint."""
    header = ("row", "case", "path", "reason", "hint")
    rows = [(str(e.row) if e.row is not None else "-", e.case_id or "-", e.path or "-", e.reason,
             e.hint or "") for e in problems]
    limits = (6, 16, 60, 110, 90)
    widths = [min(limit, max([len(h)] + [len(r[i]) for r in rows])) for i, (h, limit) in
              enumerate(zip(header, limits))]
    lines = ["  ".join(_cell(h, w).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(_cell(v, w).ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _task_problems(df: Any, tasks: Sequence[Any], manifest: str | Path) -> list[DataError]:
    """Every bad cell of the tasks' columns (``medres.data.tasks.parse_task_targets``)."""
    from medres.data.tasks import parse_task_targets

    try:
        parse_task_targets(df, tasks, path=str(manifest))
    except DataErrors as err:
        return list(err.errors)
    except DataError as err:
        return [err]
    except ConfigError as err:  # an uncertain policy with no -1 cell to map
        return [DataError(f"{err.field}: {err.reason}", path=manifest, hint=err.hint)]
    return []


def _from_config(path: str) -> dict:
    from medres.config import load_config

    cfg = load_config(path)
    data = cfg.data
    return {"vocabulary": list(data.labels) if cfg.tasks is None else None, "tasks": cfg.tasks,
            "mask_labels": sorted(int(k) for k in data.mask_labels),
            "image_columns": list(data.image_columns), "mask_column": data.mask_column,
            "ndim": int(data.spatial_dims), "root": data.root, "manifest": data.manifest,
            "max_voxels": data.max_voxels, "max_files_per_series": data.max_files_per_series,
            "patch_size": list(data.patch_size), "spacing": data.spacing,
            "link_roots": list(data.link_roots), "key_file": data.index.key_file,
            "radiograph": {"require_spacing": bool(data.spacing), "views": data.radiograph.views}
            if data.modality == "XR" else None}
