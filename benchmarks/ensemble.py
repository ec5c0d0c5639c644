"""The fold ensemble's cost: five fold models in one sweep of windows against one model, on a scan larger
than the patch.

The main job's model and pipeline (``configs/ct_chest.yaml``: 3D dual-head ResNet-10, 48^3 windows at
5 mm, two CT windows) with random weights, five "folds" (different seeds) saved as checkpoints. One
synthetic CT scan (NIfTI, 256 x 256 x 200 at 1.25 mm, i.e. 64 x 64 x 50 voxels on the 5 mm grid:
eight overlapping windows) is predicted end to end -- loading, resampling, windows, stitching,
resampling the mask back to the scan, writing it -- by:

1. ``one``: one fold model (``Predictor.from_checkpoint``);
2. ``ensemble``: all five (``Predictor.from_run``): each window through every model while in memory;
3. ``reload``: five separate single-model predictions, each loading its checkpoint and the scan again
   (what a loop over ``--checkpoint`` would do), for reference.

The variants alternate after a warm-up, so a shared machine's load hits them alike; each figure is the
median of ``--repeats`` runs. The target: ``ensemble / one <= 5.5``.

    python benchmarks/ensemble.py [--repeats 5] [--device cpu|cuda] [--tta] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medres.checkpoint import save_checkpoint
from medres.config import load_config
from medres.inference.predictor import Predictor
from medres.training.fold import build_model, model_spec

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 5


def write_scan(path: Path, shape=(256, 256, 200), spacing=1.25) -> Path:
    """HU: air and body with a few blobs (values that the lung and mediastinum windows both see)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    body = (grid[0] ** 2 + grid[1] ** 2) < 0.8
    vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    for _ in range(4):
        c = rng.uniform(-0.5, 0.5, 3)
        vol[np.linalg.norm(grid - c[:, None, None, None], axis=0) < 0.08] = 60.0
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([spacing] * 3 + [1.0])), path)
    return path


def write_run(run: Path, cfg) -> None:
    for k in range(FOLDS):
        torch.manual_seed(k)
        model = build_model(cfg)
        save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                         "model_spec": model_spec(cfg), "epoch": 1, "fold": k},
                        run / f"fold_{k}" / "checkpoint_best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cfg = load_config(ROOT / "configs" / "ct_chest.yaml")
    with tempfile.TemporaryDirectory(prefix="medres-bench-ens-") as tmp:
        tmp = Path(tmp)
        scan = write_scan(tmp / "scan.nii.gz")
        write_run(tmp / "run", cfg)
        rec = [{"case_id": "scan", "image": str(scan)}]
        opts = {"device": device, "tta": args.tta or None}
        one = Predictor.from_checkpoint(tmp / "run" / "fold_0" / "checkpoint_best.pt", **opts)
        ens = Predictor.from_run(tmp / "run", **opts)
        grid = tuple(one.transform({"image": str(scan)})["image"].shape[1:])

        def t_one() -> None:
            one.predict_records(rec, seg_dir=tmp / "o1")

        def t_ens() -> None:
            ens.predict_records(rec, seg_dir=tmp / "o5")

        def t_reload() -> None:
            for k in range(FOLDS):
                p = Predictor.from_checkpoint(tmp / "run" / f"fold_{k}" / "checkpoint_best.pt", **opts)
                p.predict_records(rec, seg_dir=tmp / "or")

        variants = {"one": t_one, "ensemble": t_ens, "reload": t_reload}
        for fn in variants.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "scan": [256, 256, 200], "grid": list(grid), "patch": list(cfg.data.patch_size), "tta": args.tta,
        "folds": FOLDS, "repeats": args.repeats, "median_s": med, "all_s": times,
        "ratio_ensemble_to_one": med["ensemble"] / med["one"],
        "ratio_reload_to_one": med["reload"] / med["one"],
    }
    print(json.dumps(result, indent=1))
    print(f"| {result['device']} | {grid} | {'yes' if args.tta else 'no'} | {med['one']:.2f} | "
          f"{med['ensemble']:.2f} | {med['reload']:.2f} | {result['ratio_ensemble_to_one']:.2f}x | "
          f"{result['load_average']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
