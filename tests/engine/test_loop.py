"""The loop on a tiny model and an in-memory dataset: it learns, resumes exactly, stops on NaN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medres.config import TrainConfig
from medres.engine.checkpoint import LAST, load_checkpoint
from medres.engine.loop import (
    Interrupted,
    LoopState,
    TrainingDiverged,
    evaluate_epoch,
    fit,
    restore_state,
    val_metrics,
)
from medres.engine.precision import resolve_fast_path
from medres.engine.sampling import EpochSampler
from medres.errors import ConfigError, DataError
from medres.models import DualOutput, create_model


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


def make(tmp_path, *, epochs=2, lr=3e-3, checkpoint_every_steps=None, patience=None):
    torch.manual_seed(0)
    model = create_model("dual_resnet10", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2,
                         base_channels=4, dropout=0.2)
    cfg = TrainConfig(epochs=epochs, batch_size=4, precision="fp32", device="cpu",
                      checkpoint_every_steps=checkpoint_every_steps)
    cfg.early_stopping.patience = patience
    fast = resolve_fast_path(cfg, spatial_dims=3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    total = epochs * 3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    train_ds, val_ds = ToyVolumes(12), ToyVolumes(8, augment=False)

    def train_loader_for(epoch, skip):
        train_ds.set_epoch(epoch)
        sampler = EpochSampler(len(train_ds), seed=7, epoch=epoch, skip=skip * cfg.batch_size)
        return DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler), 3

    val_loader = DataLoader(val_ds, batch_size=1, sampler=EpochSampler(len(val_ds), shuffle=False))
    return SimpleNamespace(model=model, opt=opt, sched=sched, scaler=fast.grad_scaler(), loss=ToyLoss(),
                           fast=fast, cfg=cfg, train_loader_for=train_loader_for, val_loader=val_loader,
                           dir=tmp_path)


def run_fit(t, state=None, rng=None, should_stop=lambda: None):
    return fit(t.model, loss_fn=t.loss, optimizer=t.opt, scheduler=t.sched, scaler=t.scaler, fast=t.fast,
               train_cfg=t.cfg, spatial_dims=3, train_loader_for=t.train_loader_for, val_loader=t.val_loader,
               fold_dir=t.dir, meta={"config": {}, "model_spec": {}}, state=state, resume_rng=rng,
               should_stop=should_stop)


def test_fit_learns_and_writes_checkpoints(tmp_path):
    t = make(tmp_path, epochs=4, lr=1e-2)
    before = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.fast, spatial_dims=3))
    state = run_fit(t)
    after = evaluate_epoch(t.model, t.val_loader, t.loss, t.fast, spatial_dims=3)
    m = val_metrics(after)
    assert state.epoch == 4 and state.step == 12 and state.finished
    assert m["val_loss"] < before["val_loss"]
    # AUROC agrees with scikit-learn on the gathered records; each case once, in dataset order
    assert [r["index"] for r in after] == list(range(8))
    y = [r["label"] for r in after]
    assert m["val_auroc"] == pytest.approx(roc_auc_score(y, [r["probs"][1] for r in after]))
    ck = load_checkpoint(tmp_path / LAST)
    assert ck["epoch"] == 4 and ck["step"] == 12 and (tmp_path / "checkpoint_best.pt").exists()


def test_mid_epoch_resume_is_bit_identical(tmp_path):
    ref = make(tmp_path / "ref", epochs=2)
    run_fit(ref)

    t = make(tmp_path / "cut", epochs=2)
    calls = {"n": 0}

    def stop_after_4_steps():
        return 15 if t.sched.last_epoch >= 4 else None

    with pytest.raises(Interrupted) as exc:
        run_fit(t, should_stop=stop_after_4_steps)
    assert exc.value.signum == 15
    ck = load_checkpoint(tmp_path / "cut" / LAST)
    assert ck["step"] == 4 and ck["batch_in_epoch"] == 1 and ck["epoch"] == 1

    torch.manual_seed(99)  # a resumed process starts with other RNG states
    r = make(tmp_path / "cut", epochs=2)
    state, rng = restore_state(ck, model=r.model, optimizer=r.opt, scheduler=r.sched, scaler=r.scaler,
                               loss_fn=r.loss)
    calls["n"] += 1
    run_fit(r, state=state, rng=rng)
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), r.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make(tmp_path, epochs=3, checkpoint_every_steps=1)

    class Poisoned(ToyLoss):
        def forward(self, out, labels, masks, epoch):
            total, terms = super().forward(out, labels, masks, epoch)
            return (total * math.nan if epoch == 1 else total), terms

    t.loss = Poisoned()
    with pytest.raises(TrainingDiverged, match=r"step 3 .*case"):
        run_fit(t)
    ck = load_checkpoint(tmp_path / LAST)
    assert ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_non_finite_input_is_a_data_error_naming_the_case(tmp_path):
    t = make(tmp_path)
    ds = ToyVolumes(4, augment=False)
    ds.items[2][0][0, 1, 1, 1] = math.inf
    loader = DataLoader(ds, batch_size=1, sampler=EpochSampler(4, shuffle=False))
    with pytest.raises(DataError, match="case002"):
        evaluate_epoch(t.model, loader, t.loss, t.fast, spatial_dims=3)


def test_early_stopping_ends_training(tmp_path):
    t = make(tmp_path, epochs=6, lr=1e-9, patience=0)  # nothing improves after the first round
    t.cfg.early_stopping.monitor = "val_loss"
    t.cfg.early_stopping.mode = "min"
    state = run_fit(t)
    assert state.finished and state.epoch < 6


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
    t = make(tmp_path, epochs=3, lr=1e-2)
    t.cfg.device, t.cfg.precision, t.cfg.pin_memory = device, precision, "auto"
    if device == "cpu":  # refused whatever the CPU (test_cpu_bf16_is_refused_for_3d_on_every_cpu)
        with pytest.raises(ConfigError, match="wrong Conv3d weight gradients"):
            resolve_fast_path(t.cfg, spatial_dims=3)
        return
    t.fast = resolve_fast_path(t.cfg, spatial_dims=3)
    t.scaler = t.fast.grad_scaler()
    assert t.scaler.is_enabled() == (precision == "fp16") and t.fast.pin_memory == (device == "cuda")
    t.model.to(t.fast.device)
    t.loss.to(t.fast.device)
    before = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.fast, spatial_dims=3))["val_loss"]
    run_fit(t)
    after = val_metrics(evaluate_epoch(t.model, t.val_loader, t.loss, t.fast, spatial_dims=3))["val_loss"]
    assert math.isfinite(after) and after < before


def test_cpu_bf16_is_refused_for_3d_on_every_cpu():
    """Explicit bf16 + 3D on the CPU is a ConfigError and ``auto`` picks fp32, on AVX-512 and AMX CPUs
    alike (their bf16 Conv3d gradients are wrong in different places, so no probe decides it); 2D bf16
    on the CPU stays allowed."""
    cfg = TrainConfig(precision="bf16", device="cpu")
    with pytest.raises(ConfigError, match="wrong Conv3d weight gradients") as e:
        resolve_fast_path(cfg, spatial_dims=3)
    assert e.value.field == "train.precision"
    assert resolve_fast_path(cfg, spatial_dims=2).dtype == torch.bfloat16
    for dims in (2, 3):
        assert resolve_fast_path(TrainConfig(precision="auto", device="cpu"), spatial_dims=dims).dtype is None


def test_patch_sized_volume_shortcut_matches_sliding_window(tmp_path):
    from medres.config import Config
    from medres.engine.fold import _volume_infer
    from medres.engine.sliding import infer_volume

    t = make(tmp_path)
    t.model.eval()
    cfg = Config.model_validate({"data": {"patch_size": [16, 16, 16]}})
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        cls, seg = _volume_infer(cfg)(t.model, x)
    ref = infer_volume(t.model, x[0], roi_size=[16, 16, 16])
    assert torch.allclose(torch.softmax(cls, 1)[0], ref.cls_probs, atol=1e-5)
    assert torch.allclose(seg[0], ref.seg_logits, atol=1e-4)
