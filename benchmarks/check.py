"""How long ``medres.data.check`` takes on a large cohort: N small NIfTI rows (default 20,000).

Goal (issue 8 item 10): 20,000 NIfTI rows checked in under 2 minutes on 2 cores. Writes the cohort
into a temporary folder (16 x 16 x 8 int16 volumes, half with a mask), then times ``check_cohort``
with 1 worker and with ``--workers`` workers, and prints rows/s. The figures go into BENCHMARKS.md.

    PYTHONPATH=. python benchmarks/check.py --rows 20000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_cohort(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    lines = ["case_id,patient_id,image,mask,label"]
    for i in range(rows):
        img = rng.integers(-1000, 1000, size=(16, 16, 8), dtype=np.int16)
        nib.save(nib.Nifti1Image(img, affine), folder / f"c{i}.nii.gz")
        mask = ""
        if i % 2 == 0:
            m = np.zeros((16, 16, 8), np.uint8)
            m[4:8, 4:8, 2:4] = 1
            nib.save(nib.Nifti1Image(m, affine), folder / f"c{i}_mask.nii.gz")
            mask = f"c{i}_mask.nii.gz"
        lines.append(f"C{i},P{i},c{i}.nii.gz,{mask},{'nodule' if i % 3 == 0 else 'normal'}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial-rows", type=int, default=2000, help="rows timed with 1 worker")
    args = parser.parse_args()
    from medres.data.check import check_cohort

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = write_cohort(Path(tmp), args.rows)
        print(f"wrote {args.rows} rows in {time.perf_counter() - t0:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f}")
        settings = dict(vocabulary=["normal", "nodule"], mask_labels=[0, 1], ndim=3)
        serial = Path(tmp) / "serial.csv"
        serial.write_text("".join(manifest.read_text().splitlines(keepends=True)[: args.serial_rows + 1]))
        t0 = time.perf_counter()
        one = check_cohort(serial, workers=1, **settings)
        t_one = time.perf_counter() - t0
        print(f"1 worker: {one.rows} rows in {t_one:.1f} s ({one.rows / t_one:.0f} rows/s), "
              f"{len(one.problems)} problems")
        t0 = time.perf_counter()
        many = check_cohort(manifest, workers=args.workers, **settings)
        t_many = time.perf_counter() - t0
        print(f"{args.workers} workers: {many.rows} rows in {t_many:.1f} s "
              f"({many.rows / t_many:.0f} rows/s), "
              f"{len(many.problems)} problems; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
