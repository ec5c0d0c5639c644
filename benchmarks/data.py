"""Scans per second through the training pipeline: medres vs plain MONAI vs MONAI CacheDataset.

One run, the same transforms for all three (orientation, resampling, foreground-aware patch crop, CT
windows on the patch, flips, small affine, intensity jitter); only loading and caching differ:

- ``monai``: ``LoadImaged`` with MONAI's default readers, no cache (every epoch loads every scan).
- ``monai_cache``: MONAI ``CacheDataset`` over the same transforms (caches up to the first random one:
  load, orient, resample, pad; float32 HU, filled at construction).
- ``medres``: ``medres.data.pipeline.datasets.build_dataset`` (``MedresReader`` with its geometry and
image/mask
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
from medres.data.demo import generate_demo
from medres.data.pipeline.datasets import build_dataset, manifest_to_records
from medres.data.pipeline.transforms import sample_transforms

WINDOWS = [{"name": "lung", "center": -600, "width": 1500},
           {"name": "mediastinum", "center": 40, "width": 400}]


def monai_transforms(cfg: DataConfig) -> list:
    """The same pipeline as medres's, loaded by MONAI's default readers (no medres checks)."""
    keys = ["image", "mask"]
    return [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=cfg.spacing, mode=("bilinear", "nearest"), dtype=np.float32),
            *sample_transforms(cfg, train=True)]


def _epoch(ds, order: np.ndarray, epoch: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for one pass over ``order``."""
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in order:
        sample = ds[int(i)]
        assert sample["image"].ndim == 4
    return time.perf_counter() - wall, time.process_time() - cpu


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
    """Epochs of the three pipelines interleaved (monai, monai_cache, medres, monai, ...), so that load
    from other processes on a shared machine hits them alike; wall and CPU seconds both reported."""
    n = len(records)
    plain = [{"image": r["image"], "mask": r["mask"]} for r in records]
    Compose(monai_transforms(cfg))(dict(plain[0]))  # warm-up (imports, reader set-up): not timed
    build_dataset(records[:1], cfg, train=True, seed=0)[0]
    kinds = ("monai", "monai_cache", "medres")
    datasets, times = {}, {k: [] for k in kinds}
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(n)
        for kind in kinds:
            build = (0.0, 0.0)
            if epoch == 0:  # building a dataset (CacheDataset fills its cache here) counts to epoch 1
                wall, cpu = time.perf_counter(), time.process_time()
                if kind == "monai":
                    datasets[kind] = Dataset(plain, Compose(monai_transforms(cfg)))
                elif kind == "monai_cache":
                    datasets[kind] = CacheDataset(plain, Compose(monai_transforms(cfg)), cache_rate=1.0,
                                                  num_workers=0, progress=False)
                else:
                    datasets[kind] = build_dataset(records, cfg, train=True, seed=0)
                build = (time.perf_counter() - wall, time.process_time() - cpu)
            w, c = _epoch(datasets[kind], order, epoch)
            times[kind].append((w + build[0], c + build[1]))
    print(f"\n## {name}: {n} scans, spacing {cfg.spacing} mm, patch {cfg.patch_size}, {epochs} epochs")
    print("scans/s by wall clock (and by process CPU time) | ratio to uncached MONAI (CPU) | cache MB/volume")
    print(f"{'pipeline':<12} {'epoch 1':>17} {'later epochs':>17} {'x epoch 1':>10} {'x later':>8} "
          f"{'MB/vol':>7}")
    rate = {k: [(n / w, n / c) for w, c in v] for k, v in times.items()}
    first = {k: rate[k][0] for k in kinds}
    later = {k: (float(np.mean([r[0] for r in rate[k][1:]])), float(np.mean([r[1] for r in rate[k][1:]])))
             for k in kinds}
    mem = {k: _cached_bytes(datasets[k]) / n / 2**20 for k in kinds}
    for k in kinds:
        print(f"{k:<12} {first[k][0]:>7.2f} ({first[k][1]:>6.2f}) {later[k][0]:>7.2f} ({later[k][1]:>6.2f}) "
              f"{first[k][1] / first['monai'][1]:>10.2f} {later[k][1] / later['monai'][1]:>8.2f} "
              f"{mem[k]:>7.2f}")
    print(f"medres later / CacheDataset later (CPU) = {later['medres'][1] / later['monai_cache'][1]:.2f}; "
          f"medres cache MB / CacheDataset = {mem['medres'] / max(mem['monai_cache'], 1e-9):.2f}; "
          f"medres epoch 1 / uncached MONAI epoch 1 (CPU) = {first['medres'][1] / first['monai'][1]:.2f}")


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
