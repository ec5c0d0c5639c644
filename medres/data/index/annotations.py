"""Linking SEG/RTSTRUCT objects of an export to their source series and converting them to masks.

An annotation object names its source series (ReferencedSeriesSequence / the RT referenced series) and
instances; the index links it by the pseudonymised SeriesInstanceUID, else by its referenced instances.
Each object is a row of index.csv with its verdict. A kept series annotated by exactly one object gets
``masks/<case_id>.nii.gz`` on its own grid (``medres.data.dicom_objects.annotations.annotation_to_mask``);
two objects
for one series, absent source instances or a failed conversion skip the series with the reason, never
silently. A series with no annotation object keeps an empty ``mask`` cell (not annotated).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from medres.data.index.series import Instance, Series
from medres.errors import DataError

__all__ = ["attach_annotations"]

_UID_LIKE = re.compile(r"\b\d+(?:\.\d+){4,}\b")


def _scrub(text: str, paths: list[str]) -> str:
    """A converter's message without UIDs or file paths (they may name a patient)."""
    for p in sorted(paths, key=len, reverse=True):
        text = text.replace(p, "<file>")
    return _UID_LIKE.sub("<uid>", text)


def attach_annotations(series: list[Series], annotations: list[tuple[Instance, dict[str, Any]]],
                       first_row: int, root: Path, out: Path, rules: Any,
                       mask_labels: dict[int, str] | None, previous: dict[str, Any] | None = None
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Link, check and convert; returns the annotation rows of index.csv (rows from ``first_row``) and
    the conversions done (case -> signature and outcome), so an unchanged annotation is not converted
    again on the next run (``previous``)."""
    previous = previous or {}
    done: dict[str, Any] = {}
    by_series: dict[str, list[Series]] = {}
    by_sop: dict[str, Series] = {}
    for s in series:
        by_series.setdefault(s.keys["series"], []).append(s)
        for inst in s.instances:
            by_sop[inst.keys["sop"]] = s
    rows: list[dict[str, Any]] = []
    targets: dict[str, list[tuple[dict[str, Any], Instance]]] = {}
    for k, (inst, ref) in enumerate(sorted(annotations, key=lambda a: a[0].position)):
        row = {"row": first_row + k, "kind": ref["kind"], "file": inst.position,
               "patient_id": f"p{inst.keys['patient'][:12]}" if inst.keys["patient"] else "",
               "study_id": f"s{inst.keys['study'][:12]}"}
        rows.append(row)
        candidates = by_series.get(ref["series"], [])
        if not candidates and ref["sops"]:
            found = {id(by_sop[u]): by_sop[u] for u in ref["sops"] if u in by_sop}
            candidates = list(found.values())
        if not candidates:
            row.update(verdict="skipped", reason="its source series is not in the export")
            continue
        if len(candidates) > 1:
            row.update(verdict="skipped", reason="its source series has several geometry parts (index rows "
                                                 f"{[c.row for c in candidates]})")
            continue
        target = candidates[0]
        row["source_row"], row["case_id"] = target.row, target.case_id
        target.annotation_rows.append(row["row"])
        sops = {i.keys["sop"] for i in target.instances}
        absent = [u for u in ref["sops"] if u not in sops]
        if absent:
            row.update(verdict="skipped", reason=f"{len(absent)} of its {len(ref['sops'])} referenced source "
                                                 f"instances are absent from index row {target.row}")
            continue
        source_for = target.instances[0].keys.get("for")
        if ref["for"] and source_for and ref["for"] != source_for:
            row.update(verdict="skipped",
                       reason=f"its FrameOfReferenceUID differs from index row {target.row}'s")
            continue
        targets.setdefault(target.case_id, []).append((row, inst))
    by_case = {s.case_id: s for s in series}
    for case, items in targets.items():
        s = by_case[case]
        rows_here = [r["row"] for r, _ in items]
        if len(items) > 1:
            for r, _ in items:
                r.update(verdict="skipped",
                         reason=f"annotation rows {rows_here} all annotate index row {s.row}")
            if s.verdict == "kept":
                s.verdict, s.reason = "skipped", f"annotated by several objects (index rows {rows_here}): " \
                                                 "keep one"
            continue
        row, inst = items[0]
        if s.verdict != "kept":
            row.update(verdict="unused", reason=f"its source series (index row {s.row}) was not chosen")
            continue
        signature = json.dumps([inst.stamp, inst.path, [(i.path, i.stamp) for i in s.instances],
                                sorted((mask_labels or {}).items()), sorted(rules.annotation_names.items()),
                                rules.empty_annotations])
        signature = hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()
        old = previous.get(s.case_id)
        if old and old["signature"] == signature and (not old["mask"] or (out / old["mask"]).exists()):
            row.update(verdict=old["verdict"], reason=old["reason"])
            s.mask = old["mask"]
            if old["series_reason"]:
                s.verdict, s.reason = "skipped", old["series_reason"]
        else:
            _convert(s, row, inst, root, out, rules, mask_labels)
        done[s.case_id] = {"signature": signature, "verdict": row["verdict"], "reason": row["reason"],
                           "mask": s.mask, "series_reason": s.reason if s.verdict == "skipped" else ""}
    return rows, done


def _convert(s: Series, row: dict[str, Any], inst: Instance, root: Path, out: Path, rules: Any,
             mask_labels: dict[int, str] | None) -> None:
    try:
        from medres.data.dicom_objects.annotations import annotation_to_mask
    except ImportError:
        row.update(verdict="skipped", reason="SEG/RTSTRUCT conversion is not available in this installation")
        s.verdict, s.reason = "skipped", f"its annotation (index row {row['row']}) could not be converted"
        return
    labels = [name for _, name in sorted((mask_labels or {0: "background", 1: "nodule"}).items())]
    target = out / "masks" / f"{s.case_id}.nii.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = [root / i.path for i in s.instances]
    try:
        result = annotation_to_mask(root / inst.path, sources, labels, dict(rules.annotation_names) or None,
                                    target, allow_empty=rules.empty_annotations == "negative")
    except DataError as err:
        paths = [str(p) for p in [root / inst.path, *sources, root]]
        reason = _scrub(err.reason + (f" ({err.hint})" if err.hint else ""), paths)
        row.update(verdict="skipped", reason=reason)
        s.verdict, s.reason = "skipped", f"its annotation (index row {row['row']}) could not be converted: " \
                                         f"{reason}"
        return
    s.mask = f"masks/{s.case_id}.nii.gz"
    found = ", ".join(getattr(result, "labels_found", []) or [])
    found = found or "none: an annotated negative, all-zero mask"
    warn = "; ".join(_scrub(str(w), [str(root)]) for w in getattr(result, "warnings", []) or [])
    row.update(verdict="used", reason=f"mask for index row {s.row}" + (f" (labels: {found})" if found else "")
               + (f"; {warn}" if warn else ""))
