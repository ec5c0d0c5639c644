"""Pre-flight check of a whole cohort: ``python -m medres.data.check --manifest M [--config C] [--root R]
[--manifest-only]``.

Validates the manifest (every row), loads every row's image(s) and mask through the same reader
training uses, and checks each image/mask pair (shape, spacing, affine, mask labels). All problems are
printed as one table (row, case, path, reason, hint); the exit status is 1 when there is any, else 0
with a one-line summary. Modelled on nnU-Net's ``verify_dataset_integrity``: find every broken scan
before a training run spends hours and fails on the last one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medres.errors import ConfigError, DataError

__all__ = ["CheckResult", "check_cohort", "format_problems", "main"]


@dataclass
class CheckResult:
    """What :func:`check_cohort` found: every problem, and how much was checked."""

    problems: list[DataError] = field(default_factory=list)
    rows: int = 0
    images: int = 0
    masks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_cohort(manifest: str | Path, *, vocabulary: Sequence[str] | None = None,
                 root: str | Path | None = None, image_columns: Sequence[str] | None = None,
                 mask_column: str | None = "mask", mask_labels: Sequence[int] | None = None,
                 ndim: int | None = None, atol: float = 1e-3, manifest_only: bool = False) -> CheckResult:
    """Check every row, file and image/mask pair of a manifest; never stops at the first problem.

    ``manifest_only``: the manifest's columns, rows, labels and paths only, without reading a scan (and
    without importing torch or MONAI: seconds for a large cohort)."""
    from medres.data.manifest import validate_manifest  # pandas: imported here, so --help is instant

    result = CheckResult()
    try:
        df, errors = validate_manifest(manifest, vocabulary=vocabulary, root=root,
                                       image_columns=image_columns)
    except DataError as err:
        result.problems.append(err)
        return result
    result.problems.extend(errors)
    result.rows = len(df)
    images = df.attrs.get("image_columns")
    if images is None or manifest_only:  # column-level problems: the rows cannot be read
        result.problems.sort(key=lambda e: -1 if e.row is None else e.row)
        return result
    from medres.data.io import check_image_mask, load_image  # torch and MONAI: only to read scans

    bad_rows = {e.row for e in errors if e.row is not None}
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 1
        if row in bad_rows:
            continue
        case = rec.get("case_id") or None
        series_uid = rec.get("series_uid") or None
        try:
            paths = [rec[c] for c in images]
            image = load_image(paths[0] if len(paths) == 1 else paths, series_uid=series_uid, ndim=ndim)
            result.images += len(paths)
            mask_path = rec.get(mask_column) if mask_column else None
            if mask_path:
                mask = load_image(mask_path, ndim=ndim)
                result.masks += 1
                check_image_mask(image, mask, labels=mask_labels, atol=atol)
        except DataError as err:
            result.problems.append(err.located(row=row, case_id=case))
    result.problems.sort(key=lambda e: -1 if e.row is None else e.row)
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


def _from_config(path: str) -> dict:
    from medres.config import load_config

    cfg = load_config(path)
    data = cfg.data
    return {"vocabulary": list(data.labels), "mask_labels": sorted(int(k) for k in data.mask_labels),
            "image_columns": list(data.image_columns), "mask_column": data.mask_column,
            "ndim": int(data.spatial_dims), "root": data.root, "manifest": data.manifest}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.data.check", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help="the cohort CSV (default: the config's data.manifest)")
    parser.add_argument("--config", help="YAML config: label vocabulary, mask labels, image columns, dims")
    parser.add_argument("--root", help="the data root paths may not leave (default: config, else the "
                                       "manifest's folder)")
    parser.add_argument("--atol", type=float, default=1e-3, help="image/mask affine tolerance (mm)")
    parser.add_argument("--manifest-only", action="store_true",
                        help="check the manifest (columns, rows, labels, paths) without reading the scans")
    args = parser.parse_args(argv)
    settings: dict = {"vocabulary": None, "mask_labels": None, "image_columns": None, "mask_column": "mask",
                      "ndim": None, "root": None, "manifest": None}
    if args.config:
        try:
            settings.update(_from_config(args.config))
        except ConfigError as err:
            print(f"medres data check: {err}", file=sys.stderr)
            return 2
    manifest = args.manifest or settings.pop("manifest")
    settings.pop("manifest", None)
    if args.root:
        settings["root"] = args.root
    if not manifest:
        parser.error("--manifest is required (or a --config with data.manifest)")
    start = time.perf_counter()
    result = check_cohort(manifest, atol=args.atol, manifest_only=args.manifest_only, **settings)
    seconds = time.perf_counter() - start
    if result.problems:
        print(f"medres data check: {len(result.problems)} problem(s) in {manifest} "
              f"({result.rows} rows, {seconds:.1f} s)")
        print(format_problems(result.problems))
        return 1
    what = "manifest only" if args.manifest_only else f"{result.images} image(s), {result.masks} mask(s)"
    print(f"medres data check: OK: {result.rows} rows, {what} checked in {seconds:.1f} s ({manifest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
