"""Scans per second through the training pipeline: medres vs plain MONAI vs MONAI CacheDataset.

One run, the same transforms for all three (orientation, resampling, foreground-aware patch crop, CT
windows on the patch, flips, small affine, intensity jitter); only loading and caching differ:

- ``monai``: ``LoadImaged`` with MONAI's default readers, no cache (every epoch loads every scan).
- ``monai_cache``: MONAI ``CacheDataset`` over the same transforms (caches up to the first random one:
  load, orient, resample, pad; float32 HU, filled at construction).
- ``medres``: ``medres.data.datasets.build_dataset`` (``MedresReader`` with its geometry and image/mask
  checks, memory cache keyed by file state re-checked on every access, CT cached as float16 HU, windows
  after the cache).

Cohorts: the demo cohort (DICOM + NIfTI) and synthetic CT-sized volumes (512x512x200 int16 ``.nii.gz``,
0.7x0.7x1.5 mm; ``--quick``: 256x256x100). Reports epoch 1 (cache construction included) and the mean
of later epochs in scans/s, the ratios to ``monai``, and cached bytes per volume.

    python benchmarks/data.py [--quick] [--epochs 3] [--n-demo 120] [--n-large 4]

(after ``pip install -e .``; or with ``PYTHONPATH=.`` from the repository root)
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from medres.config import DataConfig
from medres.data import read_manifest
from medres.data.datasets import build_dataset, manifest_to_records
from medres.data.demo import generate_demo
from medres.data.transforms import sample_transforms

WINDOWS = [{"name": "lung", "center": -600, "width": 1500},
           {"name": "mediastinum", "center": 40, "width": 400}]


def monai_transforms(cfg: DataConfig) -> list:
    """The same pipeline as medres's, loaded by MONAI's default readers (no medres checks)."""
    keys = ["image", "mask"]
    return [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=cfg.spacing, mode=("bilinear", "nearest"), dtype=np.float32),
            *sample_transforms(cfg, train=True)]


def _epoch(ds, order: np.ndarray, epoch: int) -> float:
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    start = time.perf_counter()
    for i in order:
        sample = ds[int(i)]
        assert sample["image"].ndim == 4
    return time.perf_counter() - start


def _cached_bytes(ds) -> int:
    if isinstance(ds, CacheDataset):
        items = ds._cache
        return sum(v.element_size() * v.nelement() for it in items for v in it.values()
                   if isinstance(v, torch.Tensor))
    if hasattr(ds, "_memory"):
        return sum(v.element_size() * v.nelement() for _, e in ds._memory.values() for v in e.values()
                   if isinstance(v, torch.Tensor))
    return 0


def bench(name: str, records: list[dict], cfg: DataConfig, epochs: int) -> None:
    n = len(records)
    rng = np.random.default_rng(0)
    plain = [{"image": r["image"], "mask": r["mask"]} for r in records]
    rows = []
    Compose(monai_transforms(cfg))(dict(plain[0]))  # warm-up (imports, reader set-up): not timed
    build_dataset(records[:1], cfg, train=True, seed=0)[0]
    for kind in ("monai", "monai_cache", "medres"):
        start = time.perf_counter()
        if kind == "monai":
            ds = Dataset(plain, Compose(monai_transforms(cfg)))
        elif kind == "monai_cache":
            ds = CacheDataset(plain, Compose(monai_transforms(cfg)), cache_rate=1.0, num_workers=0,
                              progress=False)
        else:
            ds = build_dataset(records, cfg, train=True, seed=0)
        build = time.perf_counter() - start
        times = [build + _epoch(ds, rng.permutation(n), 0)]
        times += [_epoch(ds, rng.permutation(n), e) for e in range(1, epochs)]
        later = float(np.mean(times[1:]))
        rows.append((kind, n / times[0], n / later, _cached_bytes(ds) / n))
    base_first, base_later = rows[0][1], rows[0][2]
    cache_later = rows[1][2]
    print(f"\n## {name}: {n} scans, spacing {cfg.spacing} mm, patch {cfg.patch_size}, {epochs} epochs")
    print(f"{'pipeline':<12} {'epoch 1 scans/s':>16} {'later scans/s':>14} {'x monai (1st)':>14} "
          f"{'x monai (later)':>16} {'cache MB/vol':>13}")
    for kind, first, later, mem in rows:
        print(f"{kind:<12} {first:>16.2f} {later:>14.2f} {first / base_first:>14.2f} "
              f"{later / base_later:>16.2f} {mem / 2**20:>13.2f}")
    med = rows[2]
    print(f"medres later / CacheDataset later = {med[2] / cache_later:.2f}; "
          f"medres cache bytes / CacheDataset = {med[3] / max(rows[1][3], 1):.2f}; "
          f"medres epoch 1 / uncached MONAI epoch 1 = {med[1] / base_first:.2f}")


def large_cohort(folder: Path, n: int, shape: tuple[int, int, int]) -> list[dict]:
    """``n`` CT-sized int16 NIfTI volumes (body ellipse, lungs, noise) with a spherical-nodule mask."""
    folder.mkdir(parents=True, exist_ok=True)
    spacing = (0.7 * 512 / shape[0], 0.7 * 512 / shape[1], 1.5 * 200 / shape[2])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1
    lungs = ((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 <= 1
    records = []
    for i in range(n):
        rng = np.random.default_rng(i)
        hu = np.where(lungs, -850, np.where(body, 40, -1000)).astype(np.int16)
        vol = np.repeat(hu[:, :, None], shape[2], axis=2)
        vol += rng.normal(0, 20, vol.shape).astype(np.int16)
        mask = np.zeros(shape, np.uint8)
        c = np.array(shape) // 2 + np.array([shape[0] // 5, 0, 0])
        r = shape[0] // 25
        g = np.ogrid[tuple(slice(ci - r, ci + r) for ci in c)]
        ball = sum((gi - ci) ** 2 for gi, ci in zip(g, c)) <= r * r
        mask[tuple(slice(ci - r, ci + r) for ci in c)] = ball
        vol[mask > 0] = 30
        paths = []
        for name, data in (("image", vol), ("mask", mask)):
            img = nib.Nifti1Image(data, affine)
            img.set_sform(affine, code=1)
            img.set_qform(affine, code=1)
            p = folder / f"{name}_{i}.nii.gz"
            p.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1))
            paths.append(str(p))
        records.append({"case_id": f"L{i}", "patient_id": f"L{i}", "image": paths[0], "mask": paths[1],
                        "label": 1, "row": i + 1})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256x100 volumes, 24 demo scans")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-demo", type=int, default=None, help="demo scans used (default 120; quick 24)")
    parser.add_argument("--n-large", type=int, default=None, help="large volumes (default 4; quick 3)")
    parser.add_argument("--demo-dir", default="demo_data/ct_chest", help="demo cohort (generated if absent)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    n_demo = args.n_demo or (24 if args.quick else 120)
    cfg = DataConfig(windows=WINDOWS, spacing=[5.0, 5.0, 5.0], patch_size=[48, 48, 48])
    t0 = time.perf_counter()
    manifest = generate_demo(args.demo_dir, n_patients=100, seed=0)
    print(f"demo cohort ready in {time.perf_counter() - t0:.1f} s: {manifest}")
    records = manifest_to_records(read_manifest(manifest, vocabulary=cfg.labels), cfg)[:n_demo]
    bench("demo cohort (DICOM + NIfTI, 240 mm fields)", records, cfg, args.epochs)

    shape = (256, 256, 100) if args.quick else (512, 512, 200)
    n_large = args.n_large or (3 if args.quick else 4)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        large = large_cohort(Path(tmp), n_large, shape)
        print(f"\nwrote {n_large} volumes {shape} in {time.perf_counter() - t0:.1f} s")
        big = DataConfig(windows=WINDOWS, spacing=[1.5, 1.5, 1.5], patch_size=[96, 96, 96])
        bench(f"CT-sized volumes {shape} int16 .nii.gz", large, big, args.epochs)


if __name__ == "__main__":
    main()
