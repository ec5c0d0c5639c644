"""Series of an indexed export: grouping instances, describing each series, choosing by the rules.

Instances are grouped by (pseudonymised) SeriesInstanceUID, never by folder; a UID whose instances have
several geometries (orientation or image size) is split into parts. Every series or part is described
(orientation from ImageOrientationPatient, slice gaps on the slice normal with the tolerances the
series reader applies, so a series called regular here loads) and gets a verdict with its reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.uid import UID

from medres.data.readers.dicom_geometry import GAP_ATOL_MM, POSITION_ATOL_MM, SPACING_RTOL
from medres.data.readers.radiograph import is_radiograph_class

__all__ = ["Instance", "Series", "group_series", "describe", "select_series", "orientation_of"]

_NON_IMAGE = ("1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.88.",
              "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.104.")
_IMAGE_EXCEPTIONS = ("1.2.840.10008.5.1.4.1.1.481.1",)  # RT Image


def _projection(fields: dict[str, Any]) -> bool:
    """A projection radiograph, by the reader's own rule: one image per instance, no slice geometry."""
    return is_radiograph_class(str(fields.get("sop_class", "") or ""), str(fields.get("modality", "") or ""))


@dataclass
class Instance:
    """One file of the index: its position in ``private/files.csv``, hashed ids and header fields."""

    position: int
    path: str  # relative to the export root; never written outside private/
    fields: dict[str, Any]
    keys: dict[str, str]  # pseudonymised ids: patient, accession, study, series, sop, for
    stamp: str = ""  # "size:mtime_ns": what the header cache keys on


@dataclass
class Series:
    """A series (or one geometry part of a series) with its description and verdict."""

    case_id: str
    instances: list[Instance]
    part: str = ""  # "2/3" for the second of three geometry parts (or radiographs of one series)
    split: str = "geometry"  # what the parts are: "geometry" parts, or the "image"s of radiographs
    info: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    reason: str = ""
    row: int = 0  # its row in index.csv
    label: dict[str, str] = field(default_factory=dict)
    mask: str = ""
    annotation_rows: list[int] = field(default_factory=list)

    @property
    def keys(self) -> dict[str, str]:
        return self.instances[0].keys


def _normal(iop: list[float]) -> tuple[float, float, float]:
    """The slice normal (row x column direction cosines); plain floats, ~50x quicker than np.cross here."""
    a, b = iop[:3], iop[3:]
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def orientation_of(iop: list[float] | None, oblique_deg: float = 10.0) -> str:
    """axial / coronal / sagittal from the slice normal, oblique beyond ``oblique_deg`` from an axis."""
    if not iop:
        return "unknown"
    normal = _normal(iop)
    norm = sum(v * v for v in normal) ** 0.5
    if norm < 1e-6:
        return "unknown"
    normal = [abs(v) / norm for v in normal]
    axis = max(range(3), key=normal.__getitem__)
    if normal[axis] < np.cos(np.deg2rad(oblique_deg)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]  # LPS: x normal = sagittal, y = coronal, z = axial


def _geometry_key(inst: Instance) -> tuple:
    f = inst.fields
    iop = tuple(round(v, 3) for v in f["iop"]) if f.get("iop") else None
    return iop, f.get("rows"), f.get("cols")


def group_series(instances: list[Instance], case_of: Any) -> list[Series]:
    """Group by SeriesInstanceUID; split a UID with several geometries into parts ``k/n``."""
    by_uid: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        by_uid[inst.keys["series"]].append(inst)
    out = []
    for uid_key, items in by_uid.items():
        if all(_projection(i.fields) for i in items):  # radiographs: each image is a case of its own
            items = sorted(items, key=lambda i: i.position)
            base = case_of(uid_key)
            if len(items) == 1:
                out.append(Series(base, items))
            else:
                out.extend(Series(f"{base}-i{k + 1}", [inst], part=f"{k + 1}/{len(items)}", split="image")
                           for k, inst in enumerate(items))
            continue
        geos: dict[tuple, list[Instance]] = defaultdict(list)
        for inst in items:
            geos[_geometry_key(inst)].append(inst)
        parts = sorted(geos.values(), key=lambda g: (-len(g), min(i.position for i in g)))
        base = case_of(uid_key)
        if len(parts) == 1:
            out.append(Series(base, parts[0]))
        else:
            out.extend(Series(f"{base}-p{k + 1}", g, part=f"{k + 1}/{len(parts)}")
                       for k, g in enumerate(parts))
    return out


def _slice_geometry(s: Series) -> tuple[str, float | None, list[Instance]]:
    """(problem or "", median gap, instances in slice order) from positions on the slice normal."""
    f0 = s.instances[0].fields
    if len(s.instances) == 1 and int(f0.get("frames") or 1) == 1:
        return "", None, s.instances  # one 2D image (e.g. a radiograph): no slice geometry to check
    if any(not i.fields.get("iop") or not i.fields.get("ipp") for i in s.instances):
        return "slices lack ImagePositionPatient/ImageOrientationPatient", None, s.instances
    nx, ny, nz = _normal(f0["iop"])
    entries = [(p[0] * nx + p[1] * ny + p[2] * nz, k, inst) for k, inst in enumerate(s.instances)
               for p in inst.fields["ipp"]]
    entries.sort(key=lambda e: (e[0], e[1]))
    ordered = list(dict.fromkeys(e[2].position for e in entries))
    by_pos = {i.position: i for i in s.instances}
    inst_order = [by_pos[p] for p in ordered]
    depth = np.asarray([e[0] for e in entries])
    if depth.size < 2:
        return "", None, inst_order
    gaps = np.diff(depth)
    if np.any(gaps < POSITION_ATOL_MM):
        return f"{int(np.sum(gaps < POSITION_ATOL_MM))} duplicate slice position(s)", None, inst_order
    tol = max(SPACING_RTOL * float(gaps.min()), GAP_ATOL_MM)
    common_min = 2 * np.sum(gaps - gaps.min() <= tol) >= len(gaps)
    step = float(gaps.min()) if common_min else float(np.median(gaps))
    off = np.abs(gaps - step) > tol
    if np.any(off):
        ratios = gaps / step
        whole = np.round(ratios)
        missing = off & (ratios > 1.5) & (np.abs(gaps - whole * step) <= tol * whole)
        if np.all(missing == off):
            return f"{int(np.sum(whole[missing] - 1))} slice(s) missing (gaps of {step:.2f} mm up to " \
                   f"{gaps.max():.2f} mm)", step, inst_order
        return f"uneven slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm)", step, inst_order
    return "", step, inst_order


def describe(s: Series, oblique_deg: float = 10.0) -> None:
    """Fill ``s.info`` (what index.csv shows) and order ``s.instances`` by slice position."""
    f0 = s.instances[0].fields
    image_type = f0.get("image_type", "")
    parts = image_type.upper().split("\\")
    problem, gap, ordered = _slice_geometry(s)
    s.instances = ordered
    thick = [i.fields["thickness"] for i in s.instances if i.fields.get("thickness")]
    sop = f0.get("sop_class", "")
    try:
        sop_name = UID(sop).name
    except Exception:
        sop_name = sop
    projection = _projection(f0)
    spacing = f0.get("spacing") or (f0.get("imager_spacing") if projection else None)
    s.info = {
        "modality": f0.get("modality", ""), "sop_class": sop_name, "image_type": image_type,
        "original": bool(parts) and parts[0] == "ORIGINAL", "localizer": "LOCALIZER" in parts,
        "orientation": "projection" if projection else orientation_of(f0.get("iop"), oblique_deg),
        "view": str(f0.get("view", "") or "") if projection else "",
        "slices": sum(int(i.fields.get("frames") or 1) for i in s.instances),
        "rows": f0.get("rows") or "", "cols": f0.get("cols") or "",
        "pixel_spacing": "x".join(f"{v:.4g}" for v in spacing) if spacing else "",
        "thickness": float(np.median(thick)) if thick else None, "gap": gap,
        "regular": "no" if problem else "yes", "geometry_problem": problem,
        "contrast": "yes" if any(i.fields.get("contrast") == "yes" for i in s.instances) else "no",
        "kernel": f0.get("kernel", ""), "series_number": f0.get("series_number", ""),
        "files": len(s.instances), "folders": len({i.path.rsplit("/", 1)[0] if "/" in i.path else ""
                                                  for i in s.instances}),
        "image": bool(sop) and (sop in _IMAGE_EXCEPTIONS or not sop.startswith(_NON_IMAGE)),
        "pixels": all(i.fields.get("pixels", True) for i in s.instances),
    }


def _rule_reason(s: Series, rules: Any) -> str:
    """Why ``s`` is not a candidate under ``rules`` (a ``data.index`` config), or ""."""
    i = s.info
    if not i["image"]:
        return f"not an image ({i['sop_class'] or 'unknown SOP class'})"
    if not i["pixels"]:
        if i["rows"] and i["cols"]:
            return f"without pixel data ({i['sop_class']} with Rows/Columns, no PixelData): nothing to load"
        return f"no pixel data ({i['sop_class']} without Rows/Columns): nothing to load"
    if not s.keys.get("patient"):
        return "no PatientID: cannot be grouped by patient"
    if rules.modalities and i["modality"] not in rules.modalities:
        return f"modality {i['modality'] or '(none)'} is not one of {list(rules.modalities)}"
    if rules.exclude_localizers and i["localizer"]:
        return "a localizer (ImageType LOCALIZER)"
    if rules.original_only and not i["original"]:
        return f"not ORIGINAL (ImageType {i['image_type'] or '(none)'})"
    if rules.orientations and i["orientation"] not in rules.orientations:
        return f"{i['orientation']} orientation, not {'/'.join(rules.orientations)}"
    if rules.require_regular and i["geometry_problem"]:
        return f"irregular geometry: {i['geometry_problem']}"
    if i["slices"] < rules.min_slices:
        return f"{i['slices']} slice(s), fewer than the {rules.min_slices} required"
    if rules.views is not None and i["orientation"] == "projection" and i["view"] \
            and i["view"] not in {v.upper() for v in rules.views}:
        return f"a {i['view']} view, not one of {list(rules.views)} (data.index.views)"
    return ""


def _preference(s: Series) -> tuple:
    thickness = s.info["thickness"] or s.info["gap"] or float("inf")
    return thickness, -s.info["slices"], str(s.info["series_number"]), s.case_id


def _part_text(s: Series, sep: str = "") -> str:
    if not s.part:
        return ""
    noun, what = ("image", "radiographs") if s.split == "image" else ("part", "several geometries")
    return f"{noun} {s.part} of a series with {what}{sep}"


def select_series(series: list[Series], rules: Any) -> None:
    """Set every series' verdict ("kept" / "skipped") and reason; one per study or all that match."""
    candidates: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        reason = _rule_reason(s, rules)
        if reason:
            s.verdict = "skipped"
            s.reason = _part_text(s, "; ") + reason
        else:
            candidates[s.keys["study"]].append(s)
    for group in candidates.values():
        group.sort(key=_preference)
        for k, s in enumerate(group):
            if k == 0 or rules.per_study == "all":
                s.verdict, s.reason = "kept", _part_text(s)
            else:
                best = group[0]
                s.verdict = "skipped"
                s.reason = (f"another series of the study was preferred: index row {best.row} "
                            "(thinner slices or more of them)")
