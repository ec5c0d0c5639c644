"""The loop's steps on a tiny model and an in-memory dataset, and ``train_fold`` (which runs the epochs)
on a tiny NIfTI cohort through the real data pipeline: it learns, resumes exactly, stops early and on NaN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medres.checkpoint import BEST, LAST, load_checkpoint
from medres.config import Config, TrainConfig
from medres.cv import FoldData
from medres.data.manifest import read_manifest
from medres.data.pipeline.datasets import manifest_to_records
from medres.errors import ConfigError, DataError
from medres.models import DualOutput, create_model
from medres.training.fold import FoldJob, train_fold
from medres.training.loop import (
    EpochSettings,
    Interrupted,
    LoopState,
    TrainingDiverged,
    TrainParts,
    evaluate_epoch,
    train_one_epoch,
    val_metrics,
)
from medres.training.precision import resolve_compute_settings
from medres.training.sampling import EpochSampler


class ToyVolumes(Dataset):
    """16^3 volumes; positives hold a bright cube (also the mask). Augmentation noise = f(seed, epoch, i)."""

    def __init__(self, n: int = 12, seed: int = 0, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(1234)
        self.items = []
        for i in range(n):
            img = torch.randn(1, 16, 16, 16, generator=g) * 0.1
            mask = torch.zeros(1, 16, 16, 16, dtype=torch.long)
            label = i % 2
            if label:
                mask[:, 4:10, 5:11, 6:12] = 1
                img[mask.bool()] += 1.0
            self.items.append((img, mask, label))
        self.seed, self.epoch, self.augment = seed, 0, augment

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        img, mask, label = self.items[i]
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + i)
            img = img + 0.05 * torch.randn(img.shape, generator=g)
        return {"image": img, "mask": mask, "label": label, "case_id": f"case{i:03d}"}


class ToyLoss(nn.Module):
    def forward(self, out: DualOutput, labels, masks, epoch):
        cls = nn.functional.cross_entropy(out.cls_logits.float(), labels)
        seg = nn.functional.cross_entropy(out.seg_logits.float(), masks[:, 0])
        return cls + seg, {"loss_cls": cls, "loss_seg": seg}


def make(tmp_path, *, epochs=2, lr=3e-3):
    """The toy model, loss, optimizer and loaders for the loop's steps."""
    torch.manual_seed(0)
    model = create_model("dual_resnet10", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2,
                         base_channels=4, dropout=0.2)
    cfg = TrainConfig(epochs=epochs, batch_size=4, precision="fp32", device="cpu")
    compute = resolve_compute_settings(cfg, spatial_dims=3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    train_ds, val_ds = ToyVolumes(12), ToyVolumes(8, augment=False)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size,
                              sampler=EpochSampler(len(train_ds), seed=7))
    val_loader = DataLoader(val_ds, batch_size=1, sampler=EpochSampler(len(val_ds), shuffle=False))
    return SimpleNamespace(model=model, opt=opt, scaler=compute.grad_scaler(), loss=ToyLoss(),
                           compute=compute, settings=EpochSettings(compute, spatial_dims=3), cfg=cfg,
                           train_loader=train_loader, val_loader=val_loader,
                           dir=tmp_path)


def run_epochs(t, n=1):
    state = LoopState()
    for _ in range(n):
        state.new_epoch()
        train_one_epoch(TrainParts(t.model, t.loss, t.opt, None, t.scaler), t.train_loader, state,
                        EpochSettings(t.compute, spatial_dims=3, total_batches=len(t.train_loader)))
        state.epoch += 1
    return state


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 training and 8 inner-validation 16^3 NIfTI volumes (positives hold a bright cube, also their
    mask) and one runs folder for the module's folds (so they share one MLflow store: creating one
    takes seconds)."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("toy_cohort")
    rows = []
    for i, vol in enumerate(ToyVolumes(20, augment=False).items):
        img, mask, label = vol
        for name, arr in (("img", img[0].numpy()), ("seg", mask[0].numpy().astype(np.uint8))):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), root / f"{name}{i:02d}.nii.gz")
        rows.append({"case_id": f"case{i:03d}", "patient_id": f"p{i:03d}", "image": f"img{i:02d}.nii.gz",
                     "mask": f"seg{i:02d}.nii.gz", "label": ["normal", "nodule"][label]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def tiny_fold(root, **overrides):
    """A Config and FoldData over the toy cohort, read through the manifest reader and the real data
    pipeline; ``section__name=value`` overrides a setting."""
    settings = {
        "data": {"modality": "MR", "normalize": "zscore", "patch_size": [16, 16, 16],
                 "augment": {"enabled": True}, "orientation": None},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4, "dropout": 0.2}},
        "optim": {"lr": 1e-2}, "schedule": {"name": "cosine"},
        "train": {"epochs": 2, "batch_size": 4, "precision": "fp32", "device": "cpu",
                  "early_stopping": {"monitor": "val_loss", "mode": "min"}},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        settings.setdefault(section, {})[name] = value
    cfg = Config.model_validate(settings).resolved()
    records = manifest_to_records(read_manifest(root / "manifest.csv", vocabulary=cfg.data.labels), cfg.data)
    return cfg, FoldData(fold=0, train=records[:12], inner_val=records[12:], heldout=[], test=[])


def fold_run(cfg, data, fold_dir, **kwargs):  # fold_dir: <cohort>/runs/<name>
    compute = resolve_compute_settings(cfg.train, spatial_dims=3)
    return train_fold(cfg, data, fold_dir, FoldJob(compute=compute, **kwargs))


@pytest.mark.slow
def test_train_fold_learns_and_writes_checkpoints(cohort):
    cfg, data = tiny_fold(cohort, train__epochs=4)
    fold = cohort / "runs" / "learns"
    state = fold_run(cfg, data, fold)
    assert state.epoch == 4 and state.step == 12 and state.finished
    metrics = pd.read_csv(fold / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert metrics["val_loss"].iloc[-1] < metrics["val_loss"].iloc[0]
    ck = load_checkpoint(fold / LAST)
    assert ck["epoch"] == 4 and ck["step"] == 12 and (fold / BEST).exists()
    best = load_checkpoint(fold / BEST)
    assert best["best_epoch"] == int(metrics["val_loss"].idxmin()) + 1  # the best round, by val_loss
    # an existing fold is never overwritten silently
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        fold_run(cfg, data, fold)


def test_validation_records_and_auroc_agree_with_scikit_learn(tmp_path):
    t = make(tmp_path, lr=1e-2)
    before = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.settings))
    run_epochs(t, 3)
    after = evaluate_epoch(t.model, t.val_loader, t.loss, t.settings)
    m = val_metrics(after)
    assert m["val_loss"] < before["val_loss"]
    # each case once, in dataset order
    assert [r["index"] for r in after] == list(range(8))
    y = [r["label"] for r in after]
    assert m["val_auroc"] == pytest.approx(roc_auc_score(y, [r["probs"][1] for r in after]))


@pytest.mark.slow
def test_mid_epoch_resume_is_bit_identical(cohort):
    cfg, data = tiny_fold(cohort)
    runs = cohort / "runs"
    fold_run(cfg, data, runs / "ref")

    calls = {"n": 0}

    def stop_at_step_4():  # asked after every step and at each epoch's end: 3 steps, end, step 4
        calls["n"] += 1
        return 15 if calls["n"] >= 5 else None

    with pytest.raises(Interrupted) as exc:
        fold_run(cfg, data, runs / "cut", should_stop=stop_at_step_4)
    assert exc.value.signum == 15
    ck = load_checkpoint(runs / "cut" / LAST)
    assert ck["step"] == 4 and ck["batch_in_epoch"] == 1 and ck["epoch"] == 1

    torch.manual_seed(99)  # a resumed process starts with other RNG states
    state = fold_run(cfg, data, runs / "cut", resume=True)
    assert state.finished and state.step == 6
    ref, resumed = load_checkpoint(runs / "ref" / LAST), load_checkpoint(runs / "cut" / LAST)
    for k, a in ref["model"].items():
        assert torch.equal(a, resumed["model"][k]), k


def test_nan_loss_stops_naming_step_and_cases(tmp_path):
    t = make(tmp_path)

    class Poisoned(ToyLoss):
        def forward(self, out, labels, masks, epoch):
            total, terms = super().forward(out, labels, masks, epoch)
            return (total * math.nan if epoch == 1 else total), terms

    t.loss = Poisoned()
    with pytest.raises(TrainingDiverged, match=r"step 3 .*case"):
        run_epochs(t, 2)


def test_non_finite_input_is_a_data_error_naming_the_case(tmp_path):
    t = make(tmp_path)
    ds = ToyVolumes(4, augment=False)
    ds.items[2][0][0, 1, 1, 1] = math.inf
    loader = DataLoader(ds, batch_size=1, sampler=EpochSampler(4, shuffle=False))
    with pytest.raises(DataError, match="case002"):
        evaluate_epoch(t.model, loader, t.loss, t.settings)


@pytest.mark.slow
def test_early_stopping_ends_training(cohort):
    # nothing improves after the first round
    cfg, data = tiny_fold(cohort, train__epochs=6, optim__lr=1e-9)
    cfg.train.early_stopping.patience = 0
    state = fold_run(cfg, data, cohort / "runs" / "early")
    assert state.finished and state.early_stopped and state.epoch < 6


def test_epoch_sampler_matches_distributed_sampler_and_skips():
    from torch.utils.data.distributed import DistributedSampler

    data = list(range(10))
    for rank in (0, 1):
        ref = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=5)
        ref.set_epoch(2)
        ours = EpochSampler(10, seed=5, epoch=2, rank=rank, world_size=3)
        assert list(ours) == list(ref)
        assert list(EpochSampler(10, seed=5, epoch=2, rank=rank, world_size=3, skip=2)) == list(ref)[2:]
    assert LoopState().epoch == 0


@pytest.mark.parametrize("device, precision", [
    ("cpu", "bf16"),
    pytest.param("cuda", "bf16", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason="needs CUDA")]),
    pytest.param("cuda", "fp16", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason="needs CUDA")]),
])
def test_mixed_precision_paths_train(tmp_path, device, precision):
    t = make(tmp_path, lr=1e-2)
    t.cfg.device, t.cfg.precision, t.cfg.pin_memory = device, precision, "auto"
    if device == "cpu":  # refused whatever the CPU (test_cpu_bf16_is_refused_for_3d_on_every_cpu)
        with pytest.raises(ConfigError, match="wrong Conv3d weight gradients"):
            resolve_compute_settings(t.cfg, spatial_dims=3)
        return
    t.compute = resolve_compute_settings(t.cfg, spatial_dims=3)
    t.scaler = t.compute.grad_scaler()
    assert t.scaler.is_enabled() == (precision == "fp16") and t.compute.pin_memory == (device == "cuda")
    t.model.to(t.compute.device)
    t.loss.to(t.compute.device)
    before = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.settings))["val_loss"]
    run_epochs(t, 3)
    after = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.settings))["val_loss"]
    assert math.isfinite(after) and after < before


def test_cpu_bf16_is_refused_for_3d_on_every_cpu():
    """Explicit bf16 + 3D on the CPU is a ConfigError and ``auto`` picks fp32, on AVX-512 and AMX CPUs
    alike (their bf16 Conv3d gradients are wrong in different places, so no probe decides it); 2D bf16
    on the CPU stays allowed."""
    cfg = TrainConfig(precision="bf16", device="cpu")
    with pytest.raises(ConfigError, match="wrong Conv3d weight gradients") as e:
        resolve_compute_settings(cfg, spatial_dims=3)
    assert e.value.field == "train.precision"
    assert resolve_compute_settings(cfg, spatial_dims=2).dtype == torch.bfloat16
    auto = TrainConfig(precision="auto", device="cpu")
    for dims in (2, 3):
        assert resolve_compute_settings(auto, spatial_dims=dims).dtype is None


def test_bf16_if_native_follows_the_cpu(monkeypatch, caplog):
    """``bf16_if_native`` on the CPU: bf16 for 2D where bf16 is native, fp32 where it would be emulated
    (logged) and for 3D whatever the CPU; on this machine it agrees with its own probe."""
    import medres.training.precision as precision

    cfg = TrainConfig(precision="bf16_if_native", device="cpu")
    this_cpu = resolve_compute_settings(cfg, spatial_dims=2).dtype
    assert this_cpu == (torch.bfloat16 if precision.cpu_supports_bf16() else None)
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_supports_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("INFO", logger="medres.training"):
            two = resolve_compute_settings(cfg, spatial_dims=2)
        assert two.dtype == (torch.bfloat16 if native else None)
        assert ("no native bf16" in caplog.text) == (not native)
        assert "emulated" not in caplog.text  # explicit bf16's warning is not given: fp32 was chosen
        three = resolve_compute_settings(cfg, spatial_dims=3)  # never a ConfigError, unlike explicit bf16
        assert three.dtype is None and three.precision == "fp32"


def test_patch_sized_volume_shortcut_matches_sliding_window(tmp_path):
    from medres.config import Config
    from medres.inference.sliding import SlidingWindow, infer_volume
    from medres.training.fold import _volume_infer

    t = make(tmp_path)
    t.model.eval()
    cfg = Config.model_validate({"data": {"patch_size": [16, 16, 16]}})
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        cls, seg = _volume_infer(cfg)(t.model, x)
    ref = infer_volume(t.model, x[0], SlidingWindow([16, 16, 16]))
    assert torch.allclose(torch.softmax(cls, 1)[0], ref.cls_probs, atol=1e-5)
    assert torch.allclose(seg[0], ref.seg_logits, atol=1e-4)


@pytest.mark.slow
def test_workers_and_patches_per_volume_resume_bit_identical(cohort):
    """Persistent workers and two patches per loaded volume: the same weights as in-process loading,
    and a run cut mid-epoch and resumed ends bit-identical."""
    cfg, data = tiny_fold(cohort, data__patches_per_volume=2)
    runs = cohort / "runs"
    state = fold_run(cfg, data, runs / "ppv_ref")
    assert state.step == 12  # 12 volumes x 2 patches / batches of 4, for 2 epochs
    cfg_w, _ = tiny_fold(cohort, data__patches_per_volume=2, data__num_workers=2)
    fold_run(cfg_w, data, runs / "ppv_workers")
    calls = {"n": 0}

    def stop_at_step_8():  # 6 steps and the end of epoch 1, then steps 7 and 8
        calls["n"] += 1
        return 15 if calls["n"] >= 9 else None

    with pytest.raises(Interrupted):
        fold_run(cfg_w, data, runs / "ppv_cut", should_stop=stop_at_step_8)
    ck = load_checkpoint(runs / "ppv_cut" / LAST)
    assert ck["step"] == 8 and ck["batch_in_epoch"] == 2
    fold_run(cfg_w, data, runs / "ppv_cut", resume=True)
    ref = load_checkpoint(runs / "ppv_ref" / LAST)["model"]
    for name in ("ppv_workers", "ppv_cut"):
        other = load_checkpoint(runs / name / LAST)["model"]
        for k, a in ref.items():
            assert torch.equal(a, other[k]), (name, k)


def test_more_workers_than_cpus_are_capped_and_learn_the_same(cohort, caplog, monkeypatch):
    """data.num_workers above the usable CPUs is capped (logged), and the weights equal in-process loading."""
    import medres.training.compute as compute

    monkeypatch.setattr(compute, "usable_cpus", lambda: 1)
    cfg, data = tiny_fold(cohort, train__epochs=1)
    runs = cohort / "runs"
    fold_run(cfg, data, runs / "cap_ref")
    cfg_w, _ = tiny_fold(cohort, train__epochs=1, data__num_workers=8)
    with caplog.at_level("INFO", logger="medres.training"):
        fold_run(cfg_w, data, runs / "cap_workers")
    assert "data.num_workers 8 capped to the 1 usable CPUs" in caplog.text
    ref = load_checkpoint(runs / "cap_ref" / LAST)["model"]
    other = load_checkpoint(runs / "cap_workers" / LAST)["model"]
    assert all(torch.equal(a, other[k]) for k, a in ref.items())


def test_a_patch_larger_than_every_image_is_warned_at_training_time(cohort, caplog):
    cfg, data = tiny_fold(cohort, data__patch_size=[20, 20, 20], train__epochs=1)
    with caplog.at_level("WARNING", logger="medres.training"):
        fold_run(cfg, data, cohort / "runs" / "big_patch")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "data.patch_size [20, 20, 20] is larger than each of the first 8 training images" in text
    assert "[16, 16, 16]" in text  # the largest image, the size to choose instead
    caplog.clear()
    cfg, data = tiny_fold(cohort, train__epochs=1)
    with caplog.at_level("WARNING", logger="medres.training"):
        fold_run(cfg, data, cohort / "runs" / "fitting_patch")
    assert "patch_size" not in " ".join(r.getMessage() for r in caplog.records)
