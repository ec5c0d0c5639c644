"""medres.plan: the fingerprint against independent counts, the rules, the measured batch, and two cohorts
of different geometry getting different, sensible plans that load as configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medres.config import load_config
from medres.data.demo import generate_demo
from medres.errors import DataError
from medres.plan import PlanOptions, fingerprint_cohort, plan_config
from medres.plan.fingerprint import ras_geometry
from medres.plan.measure import measure_step
from medres.plan.planner import _Bench, _coarser, _target_spacing

ROOT = Path(__file__).resolve().parents[2]


def _mr_cohort(root: Path, n_patients: int = 8) -> Path:
    """Anisotropic two-channel MR-like NIfTI cohort: 1 x 1 mm in-plane, 4 mm slices (3 mm for a quarter),
    a spherical lesion of radius 6 mm in half the patients, intensities in arbitrary positive units."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["case_id,patient_id,image_t1,image_t2,mask,label"]
    for i in range(n_patients):
        dz = 3.0 if i % 4 == 0 else 4.0
        nz = int(round(40 / dz))
        shape = (40, 40, nz)
        affine = np.diag([1.0, 1.0, dz, 1.0])
        x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(nz) * dz, indexing="ij")
        body = ((x - 20) ** 2 + (y - 20) ** 2) < 18 ** 2
        mask = np.zeros(shape, np.uint8)
        if i % 2:
            mask[((x - 20) ** 2 + (y - 16) ** 2 + (z - 20) ** 2) <= 36] = 1
        for seq, base in (("t1", 300.0), ("t2", 800.0)):
            img = np.where(body, base + rng.normal(0, 20, shape), 0.0) + mask * base * 0.8
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), root / f"s{i}_{seq}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), root / f"s{i}_mask.nii.gz")
        label = "lesion" if i % 2 else "normal"
        rows.append(f"c{i},p{i},s{i}_t1.nii.gz,s{i}_t2.nii.gz,s{i}_mask.nii.gz,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_ras_geometry_matches_nibabel_for_a_flipped_permuted_affine():
    # voxel axes: 0 -> S (2.5 mm), 1 -> -R (0.7 mm), 2 -> -A (0.8 mm)
    aff = np.array([[0, -0.7, 0, 10], [0, 0, -0.8, 5], [2.5, 0, 0, -3], [0, 0, 0, 1]], dtype=float)
    spacing, size, codes = ras_geometry(aff, (30, 200, 180))
    assert codes == "".join(nib.aff2axcodes(aff)) == "SLP"
    ornt = nib.orientations.io_orientation(aff)
    reoriented = nib.orientations.apply_orientation(np.zeros((30, 200, 180)), ornt).shape
    assert size == list(reoriented) == [200, 180, 30]
    assert spacing == [0.7, 0.8, 2.5]


def test_fingerprint_counts_lesions_and_keeps_no_identifiers(tmp_path):
    manifest = _mr_cohort(tmp_path)
    fp = fingerprint_cohort(manifest)
    assert fp["modality"] == "MR" and fp["n_scans"] == 8 and fp["image_columns"] == ["image_t1", "image_t2"]
    assert fp["class_balance"]["patients_by_label"] == {"lesion": 4, "normal": 4}
    assert fp["spacing_mm"]["median"] == [1.0, 1.0, 4.0]
    # lesion volumes against an independent count of the mask voxels (nibabel, numpy)
    vols = sorted(float((nib.load(tmp_path / f"s{i}_mask.nii.gz").get_fdata() > 0).sum())
                  * float(np.prod(nib.load(tmp_path / f"s{i}_mask.nii.gz").header.get_zooms()))
                  for i in (1, 3, 5, 7))
    assert fp["lesions"]["n"] == 4
    assert fp["lesions"]["volume_mm3"]["min"] == pytest.approx(vols[0])
    assert fp["lesions"]["volume_mm3"]["max"] == pytest.approx(vols[-1])
    assert fp["lesions"]["extent_mm"]["R"]["max"] == pytest.approx(13.0)  # |x - 20| <= 6: 13 voxels of 1 mm
    # foreground intensities are the lesion's (base x 1.8), the body's the background tissue's
    t1_fg, t1_body = fp["intensity"]["foreground"][0], fp["intensity"]["body"][0]
    assert 480 < t1_fg["percentiles"]["p50"] < 600 and 250 < t1_body["percentiles"]["p50"] < 350
    text = json.dumps(fp)  # no case ids, patient ids, file names or folders
    for secret in ('"c1"', '"p1"', '"p3"', "s1_t1", "s1_mask", str(tmp_path)):
        assert secret not in text, secret
    assert [s["case"] for s in fp["scans"]][:2] == ["case-0001", "case-0002"]


def test_spacing_rules():
    iso = {"spacing_mm": {"median": [0.8, 0.8, 1.0], "p10": [0.7, 0.7, 1.0]}}
    assert _target_spacing(iso)[0] == [0.8, 0.8, 1.0]
    aniso = {"spacing_mm": {"median": [0.8, 0.8, 5.0], "p10": [0.7, 0.7, 3.0]}}
    target, why = _target_spacing(aniso)
    assert target == [0.8, 0.8, 3.0] and "anisotropic" in why
    assert _coarser([3.75, 3.75, 5.0], 5.0) == [4.6875, 4.6875, 5.0]
    assert _coarser([4.6875, 4.6875, 5.0], 5.0) == [5.0, 5.0, 5.0]
    assert _coarser([5.0, 5.0, 5.0], 5.0) is None  # never past the ceiling


def test_measured_peak_memory_grows_with_the_batch():
    raw = {"data": {"spacing": [5.0, 5.0, 5.0], "patch_size": [32, 32, 32], "windows": [
        {"name": "w", "center": 0, "width": 100}]}, "model": {"name": "dual_resnet10",
                                                              "options": {"base_channels": 8}}}
    bench = _Bench(raw, "cpu")
    measure_step(bench.build, bench.batch_maker([32, 32, 32]), 2, device=torch.device("cpu"))  # warm-up
    two = measure_step(bench.build, bench.batch_maker([32, 32, 32]), 2, device=torch.device("cpu"))
    eight = measure_step(bench.build, bench.batch_maker([32, 32, 32]), 8, device=torch.device("cpu"),
                         timed_steps=1)
    # 6 more samples, each at least its input (32^3 x 1 channel x 4 bytes) and the stem's output
    # (16^3 x 8 channels x 4 bytes) held for the backward pass
    assert eight.peak_bytes > two.peak_bytes + 6 * (32**3 + 16**3 * 8) * 4
    assert eight.seconds > 0 and eight.method


@pytest.mark.slow
def test_two_cohorts_of_different_geometry_get_different_sensible_plans(tmp_path):
    demo_manifest = generate_demo(tmp_path / "demo", n_patients=12, seed=0)
    demo = plan_config(demo_manifest, tmp_path / "cfg" / "demo.yaml")
    mr = plan_config(_mr_cohort(tmp_path / "mr_data"), tmp_path / "cfg_mr" / "mr.yaml")
    for plan in (demo, mr):
        cfg = load_config(plan.path)  # the written file loads and validates
        assert cfg.model_dump() == plan.config.model_dump()
        assert (plan.path.parent / "fingerprint.json").is_file()
        assert all(p % 16 == 0 for p in cfg.data.patch_size)
        assert cfg.train.batch_size >= 1 and cfg.train.epochs >= 5
        text = plan.path.read_text()
        for key in ("spacing:", "patch_size:", "batch_size:", "epochs:", "cache:", "cls:", "seg:"):
            line = text.splitlines().index(next(ln for ln in text.splitlines() if ln.strip().startswith(key)))
            assert text.splitlines()[line - 1].strip().startswith("#"), key  # every choice explained
    d, m = demo.config, mr.config
    # CT demo: near-isotropic median spacing, HU windows from the fingerprint; nodule is the positive class
    assert d.data.modality == "CT" and d.data.normalize == "window" and len(d.data.windows) == 2
    assert d.data.spacing == [3.75, 3.75, 5.0] and d.data.patch_size == [64, 64, 48]
    assert d.data.labels == ["normal", "nodule"] and d.data.positive_label == "nodule"
    lesion, body = d.data.windows
    fg = demo.fingerprint["intensity"]["foreground"][0]["percentiles"]
    assert lesion.center - lesion.width / 2 < fg["p0.5"] and fg["p99.5"] < lesion.center + lesion.width / 2
    assert lesion.width < body.width  # the lesion window is the narrower, higher-contrast channel
    # MR: z-score, two channels, the anisotropic rule (10th-percentile slice spacing 3 mm), another patch
    assert m.data.modality == "MR" and m.data.normalize == "zscore" and not m.data.windows
    assert m.data.image_columns == ["image_t1", "image_t2"] and m.model.in_channels == 2
    assert m.data.spacing == [1.0, 1.0, 3.0] and "anisotropic" in mr.path.read_text()
    assert m.data.patch_size == [48, 48, 16] and m.data.patch_size != d.data.patch_size
    assert m.data.labels == ["normal", "lesion"] or m.data.labels == ["lesion", "normal"]
    # a tight time budget costs epochs (or resolution), and the comment says so
    quick = plan_config(demo_manifest, tmp_path / "cfg" / "quick.yaml", minutes=0.3,
                        options=PlanOptions(fingerprint=demo.fingerprint))
    assert (quick.config.train.epochs < d.train.epochs
            or np.prod(quick.config.data.patch_size) < np.prod(d.data.patch_size))
    assert "budget of 0.3 min" in quick.path.read_text()


@pytest.mark.slow
def test_cli_writes_the_config_and_the_fingerprint(tmp_path):
    manifest = _mr_cohort(tmp_path)
    out = tmp_path / "configs" / "my_cohort.yaml"
    work = tmp_path / "work"  # where the planner probes the epoch's end (training's runs/ go here)
    work.mkdir()
    p = subprocess.run([sys.executable, "-m", "medres.plan", "--manifest", str(manifest), "--out", str(out),
                        "--modality", "MR", "--memory-gb", "4", "--minutes", "30"], cwd=work,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(work.iterdir()) == []  # the probe's checkpoints and MLflow store are gone
    measured = json.loads((out.parent / "fingerprint.json").read_text())["plan_measurements"]
    timing = measured["chosen"]["timing"]
    # an epoch is counted in its parts, each measured: steps, inner validation, checkpoint and metrics
    assert timing["train_s"] > 0 and timing["val_s"] > 0 and timing["epoch_end_s"] > 0
    assert timing["epoch_s"] == pytest.approx(timing["train_s"] + timing["val_s"] + timing["epoch_end_s"])
    assert timing["step_s"] >= timing["step_min_s"]  # the median step, never below the fastest
    assert "checkpoint and metrics" in out.read_text()
    assert "wrote" in p.stdout and out.is_file() and (out.parent / "fingerprint.json").is_file()
    cfg = load_config(out)
    assert cfg.data.manifest == str(manifest) and cfg.output.name == "my_cohort"
    assert "budget 4.0 GiB" in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "medres.plan", "--manifest", str(tmp_path / "none.csv"),
                          "--out", str(tmp_path / "other.yaml")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "manifest not found" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_out_that_is_an_input_or_not_yaml_or_existing_is_refused(tmp_path, capsys):
    from medres.plan.__main__ import main
    from medres.plan.planner import _check_out

    manifest = _mr_cohort(tmp_path / "data", n_patients=2)
    before = manifest.read_bytes()
    link = tmp_path / "cohort_link.yaml"
    link.symlink_to(manifest)
    existing = tmp_path / "cfg" / "old.yaml"
    existing.parent.mkdir()
    existing.write_text("data: {}\n")
    for out, said in ((manifest, "does not end in .yaml"), (tmp_path / "data" / "x.txt", ".yml"),
                      (link, "is the manifest"), (existing, "--force")):
        assert main(["--manifest", str(manifest), "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert manifest.read_bytes() == before and existing.read_text() == "data: {}\n"
    assert not (tmp_path / "cfg" / "fingerprint.json").exists()
    # a manifest named fingerprint.json beside --out would be replaced
    named = tmp_path / "fp" / "fingerprint.json"
    named.parent.mkdir()
    named.write_bytes(before)
    with pytest.raises(DataError, match="is the manifest"):
        _check_out(named, tmp_path / "fp" / "plan.yaml", force=True)
    (tmp_path / "cfg" / "fingerprint.json").write_text('{"mine": 1}')  # not medres's: --force needed
    with pytest.raises(DataError, match="not a fingerprint medres.plan wrote"):
        _check_out(manifest, tmp_path / "cfg" / "new.yaml", force=False)
    _check_out(manifest, existing, force=True)  # --force: both may be replaced
