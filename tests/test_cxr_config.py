"""cxr.yaml (shipped): what it declares, and model.pretrained with a local torchvision ResNet-18 file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medres.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_cxr_config_declares_the_2d_radiograph_job():
    cfg = load_config(ROOT / "configs" / "cxr.yaml").resolved()
    d, m = cfg.data, cfg.model
    assert (d.modality, d.spatial_dims, d.spacing, d.demo.kind) == ("XR", 2, [3.0, 3.0], "cxr")
    assert (m.spatial_dims, m.in_channels, m.num_classes, m.seg_classes) == (2, 1, 2, 3)
    assert d.mask_labels == {0: "background", 1: "lung", 2: "opacity"} and cfg.cv.folds == 5
    assert cfg.loss.cls.weights == "balanced" and cfg.loss.seg.lambda_dice > 0
    assert cfg.loss.seg.class_weights == [1, 1, 2]  # background, lung, opacity (BENCHMARKS.md)
    assert d.radiograph.views == ["PA", "AP"] and not d.radiograph.allow_for_processing
    assert cfg.train.precision == "bf16_if_native"  # fp32 where bf16 would be emulated


def test_pretrained_torchvision_resnet18_loads_into_the_cxr_model(tmp_path):
    """A torchvision ResNet-18 file (random init here: nothing downloads) loads into the dual-head
    model; the RGB stem is summed to one channel."""
    torchvision = pytest.importorskip("torchvision")
    from medres.training.fold import build_model

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-local.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config(ROOT / "configs" / "cxr.yaml",
                      [f"model.pretrained={{path: {path}, source: torchvision}}"])
    model = build_model(cfg.resolved())
    sd = model.state_dict()
    stem = next(k for k in sd if k.endswith("conv1.weight") and "layer" not in k)
    torch.testing.assert_close(sd[stem], tv.conv1.weight.sum(dim=1, keepdim=True))
    layer = next(k for k in sd if k.endswith("layer4.1.conv2.weight"))
    torch.testing.assert_close(sd[layer], tv.layer4[1].conv2.weight)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 128, 128))
    assert tuple(out.cls_logits.shape) == (1, 2) and tuple(out.seg_logits.shape) == (1, 3, 128, 128)
