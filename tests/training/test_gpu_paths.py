"""The CUDA branches of the engine (``pytest -m gpu``; skipped without a GPU): resume bit-identity under
deterministic algorithms, fused optimizers, cuDNN switches, channels_last_3d, fp16 with a scaler.

Resume bit-identity on CUDA holds only with ``torch.use_deterministic_algorithms(True)``, cuDNN's
deterministic mode and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: with ``cudnn.benchmark`` (the GPU default)
the autotuner may pick another convolution algorithm in the resumed process, and several CUDA backward
kernels accumulate with atomics, so the last bits differ between runs (an interrupted and an
uninterrupted run then agree to float tolerance, not bit for bit). The test below checks the strict
case; ``benchmarks/gpu_check.sh`` runs this file.
"""

from __future__ import annotations

import io
import os

import pytest
import torch

from medres.config import OptimConfig, TrainConfig
from medres.models import create_model
from medres.training.loop import EpochSettings, LoopState, TrainParts, train_one_epoch
from medres.training.optim import build_optimizer
from medres.training.precision import resolve_compute_settings

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA use

NO_CUDA = not torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")]


def _batches(n: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = (torch.rand(2, 1, 24, 24, 24, generator=g) > 0.9).long()
        out.append({"image": torch.rand(2, 1, 24, 24, 24, generator=g).to(device), "mask": mask.to(device),
                    "label": torch.tensor([i % 2, (i + 1) % 2], device=device), "case_id": ["a", "b"]})
    return out


def _setup(precision: str):
    from medres.config import LossConfig
    from medres.training.losses import build_loss

    fast = resolve_compute_settings(TrainConfig(device="cuda", precision=precision, channels_last=True),
                             spatial_dims=3)
    torch.manual_seed(0)
    model = create_model("dual_resnet10", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2,
                         base_channels=8).to(fast.device, memory_format=torch.channels_last_3d)
    loss = build_loss(LossConfig(), num_classes=2, seg_classes=2).to(fast.device)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3), fused=True)
    return fast, model, loss, opt, fast.grad_scaler()


def _train(parts, batches) -> None:
    fast, model, loss, opt, scaler = parts
    train_one_epoch(TrainParts(model, loss, opt, None, scaler), batches, LoopState(),
                    EpochSettings(fast, spatial_dims=3, total_batches=len(batches)))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_is_bit_identical_under_deterministic_algorithms(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True)
    try:
        batches = _batches(4, torch.device("cuda"))
        straight = _setup(precision)
        _train(straight, batches)
        first = _setup(precision)
        _train(first, batches[:2])
        blob = io.BytesIO()
        _, model, loss, opt, scaler = first
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict()},
                   blob)
        resumed = _setup(precision)
        blob.seek(0)
        state = torch.load(blob, weights_only=True)
        resumed[1].load_state_dict(state["model"])
        resumed[3].load_state_dict(state["opt"])
        resumed[4].load_state_dict(state["scaler"])
        _train(resumed, batches[2:])
        for (name, a), b in zip(straight[1].state_dict().items(), resumed[1].state_dict().values()):
            assert torch.equal(a, b), name
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_fused_adamw_matches_the_default_kernel():
    batches = _batches(3, torch.device("cuda"))
    results = []
    for fused in (True, False):
        fast, model, loss, _, scaler = _setup("fp32")
        opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3), fused=fused or None)
        assert opt.defaults.get("fused") == (fused or None)
        _train((fast, model, loss, opt, scaler), batches)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_cuda_switches_resolve_as_documented():
    from medres.training.compute import apply_backend_flags, use_fused_optimizer

    cfg = TrainConfig(device="cuda")
    assert apply_backend_flags(cfg, torch.device("cuda")) == {"cudnn_benchmark": True}
    assert torch.backends.cudnn.benchmark and use_fused_optimizer(cfg, torch.device("cuda"))
    fast = resolve_compute_settings(cfg, spatial_dims=3)
    assert fast.pin_memory and fast.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert apply_backend_flags(TrainConfig(cudnn_benchmark=False), torch.device("cuda")) == {
        "cudnn_benchmark": False}
