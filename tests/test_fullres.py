"""configs/ct_chest_fullres.yaml: what it asks for, and one short fold of it on the CPU at a reduced size
(the same code paths: the fullres demo grid, the memory-mapped cache, augmentation on the device)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from medres.config import load_config
from medres.data.demo import FULLRES_SITES

ROOT = Path(__file__).resolve().parents[1]
FULLRES = ROOT / "configs" / "ct_chest_fullres.yaml"

# ~4-5 mm voxels on the fullres grid's field, resampled to 6 mm: 42^3 volumes, 32^3 patches
REDUCED = ["data.demo.n_patients=8", "data.demo.grid_scale=5", "data.demo.workers=1", "data.spacing=[6,6,6]",
           "data.patch_size=[32,32,32]", "data.num_workers=0", "model.options.base_channels=8",
           "train.epochs=1", "schedule.warmup_epochs=0", "train.batch_size=2", "cv.folds=2",
           "cv.val_fraction=0.34",
           "evaluate.bootstrap_resamples=100", "loss.cls.weights=[1,1]"]


def test_fullres_config_asks_for_clinical_resolution():
    cfg = load_config(FULLRES)
    d = cfg.data
    assert d.demo.grid == "fullres" and d.demo.n_patients == 100
    assert d.spacing == [1.5, 1.5, 1.5] and min(d.patch_size) >= 96
    assert cfg.model.name in ("dual_resnet18", "dual_resnet34") and cfg.model.options["base_channels"] == 64
    assert cfg.train.precision == "auto" and d.cache == "mmap" and d.augment_on_device
    for s in FULLRES_SITES:
        assert 0.7 <= s.pixel_mm <= 0.9 and 256 <= s.n <= 512
        assert 1.25 <= s.slice_mm <= 2.5 and 150 <= s.n_slices <= 300


@pytest.mark.slow  # ~15 s on a quiet machine (imports and the tracker included)
def test_fullres_one_fold_on_the_cpu_at_reduced_size(tmp_path):
    from medres.train import run

    overrides = [*REDUCED, f"data.demo.out={tmp_path / 'demo'}", f"output.dir={tmp_path / 'runs'}"]
    result = run(FULLRES, overrides=overrides, folds=[0], predict=False, quiet=True)
    run_dir = tmp_path / "runs" / "ct_chest_fullres"
    m = pd.read_csv(run_dir / "fold_0" / "metrics.csv")
    assert list(m["epoch"]) == [1] and math.isfinite(m["loss"].iloc[0])
    assert result.states[0].step >= 1
    entries = list((run_dir / ".cache").glob("*/meta.pt"))  # the mmap cache holds the preprocessed scans
    assert entries and all((e.parent / "image.npy").exists() for e in entries)
    manifest = pd.read_csv(tmp_path / "demo" / "manifest.csv")
    assert len(manifest) >= 8 and set(manifest["site"]) == {"site_a", "site_b", "site_c"}
