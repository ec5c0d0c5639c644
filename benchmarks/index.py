"""Files per second discovering the series of a DICOM tree: medres.data.index vs a naive pydicom walk vs
SimpleITK/GDCM, in one run on one synthetic tree.

The tree: ``--files`` DICOM files (default 20,000) as ``patient/study/series/<SOP UID>`` (no
extension), 25 slices per series, 4 series per study (thin and thick axial, a coronal reformat, a
localizer), realistic CT headers (pydicom's ``CT_small.dcm``: 258 elements with private tags) and
16x16 pixel data, written by patching a per-series template so generation takes seconds.

- ``naive``: ``os.walk`` + ``pydicom.dcmread`` of every whole file, grouped by SeriesInstanceUID.
- ``gdcm``: per folder, ``sitk.ImageSeriesReader.GetGDCMSeriesIDs`` then ``GetGDCMSeriesFileNames`` for
  each series found (SimpleITK's series discovery; it sorts the files of each series too).
- ``medres``: ``index_dicom`` (headers in worker processes, series described and chosen, manifest,
  index and link folders written), a fresh output folder; then ``medres re-index``: the same call on the
  unchanged tree (a digest of every file's path, size and mtime, the rules and the labels matches the
  last run's: the outputs stand), and the same tree with changed rules (headers from the cache, series
  grouped, described, chosen and written again).

    python benchmarks/index.py [--files 20000] [--workers 0]   (needs SimpleITK: benchmarks/requirements.txt)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medres.config import IndexConfig
from medres.data.index import index_dicom

SLICES = 25
KINDS = (("AXIAL THIN", "ORIGINAL\\PRIMARY\\AXIAL", 1.25, (1, 0, 0, 0, 1, 0)),
         ("AXIAL THICK", "ORIGINAL\\PRIMARY\\AXIAL", 5.0, (1, 0, 0, 0, 1, 0)),
         ("CORONAL MPR", "DERIVED\\SECONDARY\\REFORMATTED", 2.0, (1, 0, 0, 0, 0, -1)),
         ("SCOUT", "ORIGINAL\\PRIMARY\\LOCALIZER", 1.0, (0, 1, 0, 0, 0, -1)))
_UID_LEN = 60


def _uid() -> str:
    return generate_uid()[:_UID_LEN].ljust(_UID_LEN, "1")


def make_tree(root: Path, n_files: int) -> int:
    """Write ``n_files`` files (rounded down to whole series); returns how many were written."""
    base = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    base.Rows = base.Columns = 16
    base.PixelData = np.zeros((16, 16), np.int16).tobytes()
    n_series = max(1, n_files // SLICES)
    written = 0
    for s in range(n_series):
        patient, study, kind = s // 8, (s // 4) % 2, KINDS[s % 4]
        if s % 4 == 0:
            study_uid, accession = _uid(), f"ACC{s // 4:07d}"
        ds = base.copy()
        ds.PatientID, ds.PatientName = f"P{patient:06d}", f"PATIENT^{patient:06d}"
        ds.AccessionNumber = accession
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, _uid()
        ds.FrameOfReferenceUID = study_uid
        ds.SeriesDescription, ds.ImageType, ds.SliceThickness = kind[0], kind[1].split("\\"), kind[2]
        ds.ImageOrientationPatient = list(kind[3])
        ds.SeriesNumber = s % 4 + 1
        placeholder_uid = "9" * _UID_LEN
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = placeholder_uid
        ds.ImagePositionPatient = ["+0000.000", "+0000.000", "+0000.000"]
        folder = root / f"P{patient:06d}" / f"study{study}" / f"series{s % 4 + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "template"
        ds.save_as(tmp, enforce_file_format=True)
        template = tmp.read_bytes()
        tmp.unlink()
        normal = np.cross(np.asarray(kind[3][:3], float), np.asarray(kind[3][3:], float))
        for k in range(SLICES):
            sop = _uid()
            pos = -100.0 * normal + k * kind[2] * normal
            ipp = "\\".join(f"{v:+09.3f}" for v in pos).encode()
            data = template.replace(placeholder_uid.encode(), sop.encode())
            data = data.replace(b"+0000.000\\+0000.000\\+0000.000", ipp)
            (folder / sop).write_bytes(data)
            written += 1
    return written


def naive(root: Path) -> dict[str, list[str]]:
    series: dict[str, list[str]] = defaultdict(list)
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            series[str(ds.SeriesInstanceUID)].append(path)
    return series


def gdcm(root: Path) -> dict[str, list[str]]:
    import SimpleITK as sitk

    series: dict[str, list[str]] = {}
    reader = sitk.ImageSeriesReader
    for folder, _, names in os.walk(root):
        if not names:
            continue
        for uid in reader.GetGDCMSeriesIDs(folder):
            series[uid] = list(reader.GetGDCMSeriesFileNames(folder, uid))
    return series


def _cpu() -> float:
    """CPU seconds of this process and its finished children (medres's header workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
    wall, cpu = time.perf_counter(), _cpu()
    out = fn(*args, **kw)
    return out, time.perf_counter() - wall, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=0, help="medres header processes (0: one per CPU)")
    parser.add_argument("--keep", help="write the tree here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    os.environ.setdefault("MEDRES_PROJECT_KEY", "benchmark-key-0123456789abcdef")
    work = Path(args.keep or tempfile.mkdtemp(prefix="medres-index-bench-"))
    root = work / "tree"
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    n = make_tree(root, args.files)
    print(f"tree: {n} files, {n // SLICES} series, written in {time.perf_counter() - start:.1f} s "
          f"(CPUs: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    results = {}
    for name, fn in (("naive pydicom walk", naive), ("SimpleITK/GDCM per folder", gdcm)):
        found, wall, cpu = _timed(fn, root)
        assert len(found) == n // SLICES, (name, len(found))
        results[name] = (wall, cpu)
    rules = IndexConfig(min_slices=10, workers=args.workers)
    out = work / "out"
    first, *results["medres index (first pass)"] = _timed(index_dicom, root, out, rules=rules)
    assert first.series == n // SLICES and first.read == n, first
    again, *results["medres re-index (unchanged tree)"] = _timed(index_dicom, root, out, rules=rules)
    assert again.read == 0
    regroup, *results["medres re-index, rules changed"] = _timed(
        index_dicom, root, out, rules=IndexConfig(min_slices=11, workers=args.workers))
    assert regroup.read == 0 and regroup.kept == first.kept
    print(f"{'method':36s} {'wall s':>8s} {'CPU s':>8s} {'files/s wall':>13s} {'files/s CPU':>12s}")
    for name, (wall, cpu) in results.items():
        print(f"{name:36s} {wall:8.2f} {cpu:8.2f} {n / wall:13.0f} {n / max(cpu, 1e-9):12.0f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for k, label in ((0, "wall"), (1, "CPU")):
        first_s = results["medres index (first pass)"][k]
        naive_s = results["naive pydicom walk"][k]
        print(f"{label}: medres first pass vs naive {naive_s / first_s:.1f}x, vs GDCM "
              f"{results['SimpleITK/GDCM per folder'][k] / first_s:.1f}x; re-index of the unchanged tree "
              f"{first_s / results['medres re-index (unchanged tree)'][k]:.0f}x faster than the first pass, "
              f"with changed rules {first_s / results['medres re-index, rules changed'][k]:.0f}x")
    print(f"kept {first.kept} of {first.series} series")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
