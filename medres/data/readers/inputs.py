"""What a folder given to ``medres.predict --input`` holds: scan files and DICOM series sub-folders.

:func:`discover_inputs` lists the cases a folder holds and everything it passes over, with the reason,
so that no series is dropped without a word:

- a folder whose own files are DICOM (the 'DICM' marker at byte 128) and that holds no NIfTI/PNG/JPEG
  file is one series;
- otherwise each NIfTI/PNG/JPEG file is a case, and each sub-folder holding DICOM files is a case (a
  series); sub-folders without DICOM files, loose DICOM files beside other scans, and other files are
  skipped with their reason (logged as a warning). Names starting with '.' are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medres.errors import DataError

__all__ = ["discover_inputs", "FILE_SCANS"]

log = logging.getLogger(__name__)

#: Suffixes of files that are one case each.
FILE_SCANS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")
_DICOM_PEEK = 8  # files looked at to decide whether a folder holds DICOM


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _holds_dicom(folder: Path) -> bool:
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return False
    return any(_is_dicom(p) for p in files[:_DICOM_PEEK]) or any(
        p.suffix.lower() in (".dcm", ".dicom", ".ima") and _is_dicom(p) for p in files[_DICOM_PEEK:])


def discover_inputs(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(cases, skipped)``: the scan files and series folders in ``folder`` (sorted), and each entry
    passed over with why. Raises a DataError when there is no case at all."""
    folder = Path(folder)
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"could not be listed ({type(exc).__name__})", path=folder,
                        hint="check the folder's permissions") from None
    files = [p for p in entries if p.is_file()]
    scans = [p for p in files if p.name.lower().endswith(FILE_SCANS)]
    taken = set(scans)  # sets: membership per entry must not cost the folder's size
    loose_dicom = [p for p in files if p not in taken and _is_dicom(p)]
    taken.update(loose_dicom)
    if loose_dicom and not scans:
        others = [(p, "not a DICOM file of the series") for p in files if p not in taken]
        others += [(p, "a sub-folder of a series folder (not searched)") for p in entries if p.is_dir()]
        _log(folder, others)
        return [folder], others
    cases: list[Path] = list(scans)
    skipped: list[tuple[Path, str]] = []
    if loose_dicom:
        skipped.append((folder, f"{len(loose_dicom)} loose DICOM file(s) beside other scans; put each series "
                                "in its own sub-folder"))
    for p in files:
        if p not in taken:
            skipped.append((p, "not a scan (medres reads .nii/.nii.gz/.png/.jpg files and DICOM series "
                               "folders)"))
    for p in entries:
        if p.is_dir():
            if _holds_dicom(p):
                cases.append(p)
            else:
                skipped.append((p, "a sub-folder without DICOM files"))
    cases.sort()
    _log(folder, skipped)
    if not cases:
        raise DataError(f"holds no scans (NIfTI/PNG/JPEG files, DICOM files or series sub-folders); "
                        f"{len(skipped)} entr(y/ies) skipped", path=folder,
                        hint="point --input at a scan, a series folder, a folder of scans or a manifest CSV")
    return cases, skipped


def _log(folder: Path, skipped: list[tuple[Path, str]]) -> None:
    for path, why in skipped:
        log.warning("%s: skipping %s: %s", folder, path.name if path != folder else ".", why)
