"""``medres.train.run`` end to end on the smoke config, the ImageNet-style recipe on a folder of PNGs, and
multi-channel MR from generated NIfTIs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medres.config import load_config
from medres.train import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_api_smoke_fold(tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      [f"data.demo.out={tmp_path / 'demo'}", f"output.dir={tmp_path / 'runs'}"])
    result = run(cfg, folds=[0], quiet=True)
    d = result.run_dir
    assert d == tmp_path / "runs" / "smoke"
    for name in ("config.yaml", "folds.csv", "fold_0/checkpoint_last.pt", "fold_0/checkpoint_best.pt",
                 "fold_0/metrics.csv", "fold_0/predictions.parquet", "fold_0/inner_val_predictions.parquet"):
        assert (d / name).exists(), name
    assert not (d / "fold_1").exists()  # --fold trains one fold
    m = result.metrics[0]
    assert list(m["epoch"]) == [1, 2]
    for col in ("lr", "seconds", "samples_per_s", "loss", "loss_cls", "loss_seg", "val_loss", "val_auroc",
                "val_dice"):
        assert col in m.columns, col
    folds = pd.read_csv(d / "folds.csv", dtype=str)
    held = set(folds.loc[folds["fold"] == "0", "patient_id"])
    pred = result.predictions[0]
    assert set(pred["patient_id"]) == held  # exactly the held-out patients, each case once
    assert pred["case_id"].is_unique
    assert np.allclose(pred["p_normal"] + pred["p_nodule"], 1, atol=1e-5)
    inner = pd.read_parquet(d / "fold_0" / "inner_val_predictions.parquet")
    assert not set(inner["patient_id"]) & held
    assert result.oof.shape[0] == len(pred)
    # the demo's DICOM site carries made-up patient fields: none may reach the run folder
    dicom = pd.read_csv(tmp_path / "demo" / "manifest.csv", dtype=str)
    assert (dicom["site"] == "site_a").any()
    for f in d.rglob("*"):
        if f.is_file() and f.suffix in (".pt", ".csv", ".yaml", ".parquet"):
            data = pd.read_parquet(f).to_csv().encode() if f.suffix == ".parquet" else f.read_bytes()
            for secret in (b"DEMO^", b"Demo Hospital", b"ACCP0", b"DEMO^REFERRER"):
                assert secret not in data, (f, secret)


def _png_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, (lo, hi) in {"cat": (0, 120), "dog": (130, 255)}.items():
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(lo, hi, (40, 44, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_imagenet_recipe_one_step_on_a_png_folder(tmp_path):
    folder = _png_folder(tmp_path / "images")
    recipe = load_config(ROOT / "configs" / "imagenet_resnet50.yaml")
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.momentum, recipe.optim.weight_decay) == (
        "sgd", 0.1, 0.9, 1e-4)
    assert (recipe.schedule.name, recipe.schedule.step_size, recipe.schedule.gamma) == ("step", 30, 0.1)
    assert recipe.optim.reference_batch_size == 256 and recipe.schedule.warmup_epochs == 5
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.model.name) == (90, 256, "resnet50")
    assert recipe.data.augment.random_resized_crop == "auto" and recipe.data.augment.flip_prob == 0.5
    cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml", [
        f"data.image_folder={folder}", "model.num_classes=2", "data.patch_size=[32,32]", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=1", "optim.lr=0.001", "schedule.warmup_epochs=0", "cv.folds=2",
        "cv.val_fraction=0.34",
        f"output.dir={tmp_path / 'runs'}"])
    result = run(cfg, folds=[0], quiet=True, predict=False)  # (lr 0.1 at batch 4 diverges within a step)
    state = result.states[0]
    assert state.epoch == 1 and state.step == 1
    m = result.metrics[0]
    assert np.isfinite(m["loss"].iloc[0]) and "loss_seg" not in m.columns


def _nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path.name


def test_mr_multichannel_one_epoch(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(12):
        lesion = p % 2 == 1
        mask = np.zeros((16, 16, 16), np.uint8)
        if lesion:
            mask[5:10, 6:11, 4:9] = 1
        row = {"case_id": f"c{p}", "patient_id": f"p{p:03d}", "label": "lesion" if lesion else "normal",
               "mask": _nifti(tmp_path / f"c{p}_mask.nii.gz", mask)}
        for k, seq in enumerate(("t1", "t2", "flair")):
            img = rng.normal(100 * (k + 1), 10, (16, 16, 16)).astype(np.float32) + 50 * mask
            row[f"image_{seq}"] = _nifti(tmp_path / f"c{p}_{seq}.nii.gz", img)
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = load_config(ROOT / "configs" / "mr_multichannel.yaml", [
        f"data.manifest={tmp_path / 'manifest.csv'}", "data.patch_size=[16,16,16]", "data.spacing=[2,2,2]",
        "model.options.base_channels=4", "train.epochs=1", "train.batch_size=2", "cv.folds=2",
        "cv.val_fraction=0.34", f"output.dir={tmp_path / 'runs'}"])
    assert cfg.model.in_channels == 3
    result = run(cfg, folds=[0], quiet=True)
    assert result.states[0].epoch == 1
    pred = result.predictions[0]
    assert {"p_normal", "p_lesion", "image", "seg_path"} <= set(pred.columns)
    assert len(pred) == 6


@pytest.mark.slow
def test_balanced_sampler_and_focal_loss_train_a_fold(tmp_path):
    # the class-balanced sampler (loss.cls.balanced_sampler) and focal loss wired through a real fold
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      [f"data.demo.out={tmp_path / 'demo'}", f"output.dir={tmp_path / 'runs'}",
                       "loss.cls.balanced_sampler=true", "loss.cls.type=focal", "train.epochs=1"])
    result = run(cfg, folds=[0], quiet=True, evaluate=False)
    m = result.metrics[0]
    assert list(m["epoch"]) == [1] and np.isfinite(m["loss_cls"]).all()
    assert len(result.predictions[0]) > 0


def _tiny_cohort(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["case_id,patient_id,image,label"]
    for i in range(4):
        scan = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
        nib.save(scan, root / "images" / f"c{i}.nii.gz")
        rows.append(f"c{i},p{i},images/c{i}.nii.gz,{'nodule' if i % 2 else 'normal'}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root / "cohort.csv"


def test_a_run_folder_on_around_or_holding_an_input_is_refused(tmp_path):
    from medres.errors import DataError

    data = tmp_path / "project" / "data"
    manifest = _tiny_cohort(data)
    config = tmp_path / "cfg" / "c.yaml"
    config.parent.mkdir()
    config.write_text(f"data:\n  manifest: {manifest}\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out_dir, name, said in ((data.parent, "data", "is the data root"),
                                (tmp_path, "project", "contains the (manifest|data root)"),
                                (config.parent, "c.yaml", "is the config file"),
                                (data, "images", "contains the image of case 'c0'"),
                                (data / "images", "c0.nii.gz", "is the image of case 'c0'")):
        cfg = load_config(config, [f"output.dir={out_dir}", f"output.name={name}"])
        with pytest.raises(DataError, match=said) as err:
            run(cfg, quiet=True)
        assert str(out_dir / name) in str(err.value)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    cfg = load_config(config, [f"output.dir={data}", "output.name=run", f"data.cache_dir={data.parent}"])
    with pytest.raises(DataError, match="cache folder .* contains the "):
        run(cfg, quiet=True)
    assert not (data / "run").exists()


@pytest.mark.slow
def test_leave_site_out_run_reports_each_site_as_external(tmp_path):
    # three sites of four patients, and a fourth site only in the test split: one fold per site, each
    # fold's inner validation from the other sites, the report scoring each held-out site
    rng = np.random.default_rng(1)
    rows = []
    for p in range(16):
        lesion = p % 2 == 1
        site = "abcd"[p // 4]
        mask = np.zeros((16, 16, 16), np.uint8)
        if lesion:
            mask[5:10, 6:11, 4:9] = 1
        row = {"case_id": f"c{p}", "patient_id": f"p{p:03d}", "label": "lesion" if lesion else "normal",
               "site": site, "split": "test" if site == "d" else "train",
               "mask": _nifti(tmp_path / f"c{p}_mask.nii.gz", mask)}
        for k, seq in enumerate(("t1", "t2", "flair")):
            img = rng.normal(100 * (k + 1), 10, (16, 16, 16)).astype(np.float32) + 50 * mask
            row[f"image_{seq}"] = _nifti(tmp_path / f"c{p}_{seq}.nii.gz", img)
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = load_config(ROOT / "configs" / "mr_multichannel.yaml", [
        f"data.manifest={tmp_path / 'manifest.csv'}", "data.patch_size=[16,16,16]", "data.spacing=[2,2,2]",
        "model.options.base_channels=4", "train.epochs=1", "train.batch_size=4",
        "cv.strategy=leave_group_out", "cv.group_column=site", "cv.val_fraction=0.34",
        "evaluate.bootstrap_resamples=100", "output.tracking=[]", f"output.dir={tmp_path / 'runs'}"])
    result = run(cfg, quiet=True)
    d = result.run_dir
    assert result.config.cv.folds == 3 and load_config(d / "config.yaml").cv.folds == 3  # one per site
    folds = pd.read_csv(d / "folds.csv", dtype=str)
    assert dict(zip(folds.patient_id, folds.fold)) == {f"p{p:03d}": str(p // 4) for p in range(12)}
    for k, site in enumerate("abc"):
        held = pd.read_parquet(d / f"fold_{k}" / "predictions.parquet")
        inner = pd.read_parquet(d / f"fold_{k}" / "inner_val_predictions.parquet")
        assert set(held.site) == {site} and site not in set(inner.site) and "d" not in set(inner.site)
    summary = __import__("json").loads((Path(result.report).parent / "summary.json").read_text())
    records = pd.DataFrame(summary["records"])
    groups = records[(records.scope == "external_group") & (records.metric == "auroc")]
    assert sorted(groups.subgroup) == ["site = a", "site = b", "site = c"]
    assert (records.scope == "external_pooled").any()
    assert set(records.loc[records.scope == "external_test", "subgroup"]) == {"site = d"}
