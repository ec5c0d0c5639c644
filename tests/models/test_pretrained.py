"""load_pretrained: torchvision files, stem adaptation, 2D -> 3D inflation, MedicalNet files, reports."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from medres import ConfigError
from medres.models import create_model, load_pretrained, medicalnet_kwargs
from medres.models.pretrained import adapt_input_conv


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so eval-mode outputs depend on every norm."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    tv = _randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18-tv.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_torchvision_file_loads_fully_and_gives_torchvision_outputs(tv_resnet18_file, caplog):
    tv, path = tv_resnet18_file
    model = create_model("resnet18").eval()
    with caplog.at_level(logging.INFO, logger="medres.models.pretrained"):
        report = load_pretrained(model, path, source="torchvision")
    assert len(report.loaded) == 122 and not (
        report.missing or report.unexpected or report.skipped or report.adapted
    )
    assert "122 loaded" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def test_one_channel_stem_sums_rgb_and_head_of_another_size_is_skipped(tv_resnet18_file, caplog):
    tv, path = tv_resnet18_file
    model = create_model("resnet18", in_channels=1, num_classes=2).eval()
    fc_before = model.fc.weight.clone()
    with caplog.at_level(logging.WARNING, logger="medres.models.pretrained"):
        report = load_pretrained(model, path)
    assert report.adapted == {"conv1.weight": "input channels 3 -> 1"}
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and "num_classes" in report.skipped["fc.weight"]
    assert "fc.weight skipped" in caplog.text
    assert torch.equal(model.fc.weight, fc_before)
    grey = torch.randn(2, 1, 64, 64)  # a grey image seen by the RGB model as R = G = B
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(grey),
            tv.layer4(_tv_stem(tv, grey.expand(-1, 3, -1, -1))),
            rtol=1e-4,
            atol=1e-4,
        )


def _tv_stem(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer3(tv.layer2(tv.layer1(x)))


def test_n_channel_stem_is_repeated_and_scaled():
    w = torch.randn(8, 3, 7, 7)
    w4 = adapt_input_conv(w, 4)
    torch.testing.assert_close(w4, torch.cat([w, w[:, :1]], 1) * 0.75)
    w6 = adapt_input_conv(w, 6)  # six equal channels respond like three equal ones
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(
        nn.functional.conv2d(x.expand(-1, 6, -1, -1), w6),
        nn.functional.conv2d(x.expand(-1, 3, -1, -1), w),
        rtol=1e-4,
        atol=1e-4,
    )
    torch.testing.assert_close(adapt_input_conv(w, 1), w.sum(1, keepdim=True))


@pytest.mark.parametrize("stem_stride", [2, (1, 2, 2)])
def test_inflated_3d_model_on_a_repeated_image_gives_the_2d_logits(tmp_path, stem_stride):
    """Exact when depth sees no zero padding: 'replicate' padding keeps a depth-constant volume constant.

    Every layer then maps a volume of identical slices to identical slices equal to the 2D output:
    each inflated kernel sums its depth taps (w / depth each) back to the 2D kernel; strides and
    max-pooling along depth keep slices identical; eval-mode BN is per channel; the global average
    over depth is then the 2D value.
    """
    torch.manual_seed(0)
    kw = {"base_channels": 16, "num_classes": 5, "padding_mode": "replicate"}
    m2 = _randomize_norms(create_model("resnet18", **kw)).eval()
    torch.save(m2.state_dict(), tmp_path / "r18.pth")
    m3 = create_model("resnet18", spatial_dims=3, stem_stride=stem_stride, **kw).eval()
    report = load_pretrained(m3, tmp_path / "r18.pth", source="torchvision")
    assert "inflated 2D -> 3D (depth 7)" in report.adapted["conv1.weight"]
    assert not report.missing and not report.skipped
    image = torch.randn(2, 3, 64, 64)
    volume = image.unsqueeze(2).expand(-1, -1, 12, -1, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(m3(volume), m2(image), rtol=1e-4, atol=1e-4)


def test_inflated_stem_with_zero_padding_matches_away_from_the_depth_borders(tv_resnet18_file, tmp_path):
    """With torchvision's zero padding the property holds on slices whose 7-deep window stays inside."""
    tv, path = tv_resnet18_file
    m3 = create_model("resnet18", spatial_dims=3, in_channels=1, stem_stride=(1, 2, 2)).eval()
    report = load_pretrained(m3, path)
    assert report.adapted["conv1.weight"] == "inflated 2D -> 3D (depth 7); input channels 3 -> 1"
    grey = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        out3 = m3.conv1(grey.unsqueeze(2).expand(-1, -1, 10, -1, -1))
        out2 = tv.conv1(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(
        out3[:, :, 3:7], out2.unsqueeze(2).expand(-1, -1, 4, -1, -1), rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(out3[:, :, 0], out2, atol=1e-3)  # the border slice sees zeros


def test_dual_head_model_loads_into_its_backbone(tv_resnet18_file):
    tv, path = tv_resnet18_file
    model = create_model("dual_resnet18", spatial_dims=2, in_channels=3, num_classes=1000).eval()
    report = load_pretrained(model, path)
    assert "backbone.fc.weight" in report.loaded and "backbone.conv1.weight" in report.loaded
    assert report.missing and all(k.startswith("seg_head.") for k in report.missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).cls_logits, tv(x))
    m3 = create_model("dual_resnet18", spatial_dims=3, in_channels=2, num_classes=2)
    report = load_pretrained(m3, path)
    assert report.adapted["backbone.conv1.weight"] == "inflated 2D -> 3D (depth 7); input channels 3 -> 2"
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(
        m3.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight.unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3
    )


def _medicalnet_file(model, path, with_downsample=True):
    """A MedicalNet-layout file: ``{"state_dict": {"module.<name>": ...}}``, no fc, with conv_seg."""
    sd = {
        f"module.{k}": v
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    sd["module.conv_seg.0.weight"] = torch.randn(8, 4, 2, 2, 2)
    torch.save({"state_dict": sd, "epoch": 200}, path)


@pytest.mark.parametrize("depth", [10, 18])
def test_medicalnet_file_reproduces_the_network(tmp_path, depth):
    torch.manual_seed(0)
    kw = {**medicalnet_kwargs(depth), "base_channels": 8, "num_classes": 2}
    src = _randomize_norms(create_model(f"resnet{depth}", **kw)).eval()
    _medicalnet_file(src, tmp_path / "mednet.pth")
    model = create_model(f"resnet{depth}", **kw).eval()
    report = load_pretrained(model, tmp_path / "mednet.pth", source="medicalnet")
    assert report.unexpected == ["conv_seg.0.weight"] and "conv_seg" in report.skipped["conv_seg.0.weight"]
    assert {k for k in report.missing if not k.endswith("num_batches_tracked")} == {"fc.weight", "fc.bias"}
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), src.forward_features(x))
    # MedicalNet's layout: output stride 8, every block of layer3/4 dilated
    assert model.feature_info[-1]["reduction"] == 8 and model.layer3[0].conv1.dilation == (2, 2, 2)


def test_medicalnet_shortcut_a_into_a_shortcut_b_model_is_reported(tmp_path):
    src = create_model("resnet18", **medicalnet_kwargs(18), base_channels=8)
    _medicalnet_file(src, tmp_path / "m18.pth")
    model = create_model("resnet18", spatial_dims=3, in_channels=1, base_channels=8)
    before = model.layer2[0].downsample[0].weight.clone()
    with pytest.raises(ConfigError, match="shortcut type A"):
        load_pretrained(model, tmp_path / "m18.pth", source="medicalnet")
    assert torch.equal(model.layer2[0].downsample[0].weight, before)  # nothing loaded on failure
    report = load_pretrained(model, tmp_path / "m18.pth", source="medicalnet", strict_backbone=False)
    down = {k for k in report.missing if "downsample" in k}
    assert {k.split(".")[0] for k in down} == {"layer2", "layer3", "layer4"}
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_medres_checkpoint_round_trip_and_cross_loading(tmp_path):
    torch.manual_seed(0)
    kw = {"spatial_dims": 3, "in_channels": 2, "num_classes": 3, "seg_classes": 2, "base_channels": 8}
    src = _randomize_norms(create_model("dual_resnet10", **kw)).eval()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    dst = create_model("dual_resnet10", **kw).eval()
    report = load_pretrained(dst, tmp_path / "ckpt.pt", source="medres")
    assert not (report.missing or report.unexpected or report.skipped)
    x = torch.randn(1, 2, 19, 21, 23)
    with torch.no_grad():
        a, b = src(x), dst(x)
    torch.testing.assert_close(a.cls_logits, b.cls_logits)
    torch.testing.assert_close(a.seg_logits, b.seg_logits)
    plain = create_model("resnet10", spatial_dims=3, in_channels=2, num_classes=3, base_channels=8).eval()
    report = load_pretrained(plain, tmp_path / "ckpt.pt", source="medres")
    assert report.unexpected and all(k.startswith("seg_head.") for k in report.unexpected)
    assert not report.missing
    with torch.no_grad():
        torch.testing.assert_close(plain(x), a.cls_logits)


def test_errors_name_the_file_and_the_problem(tmp_path, tv_resnet18_file):
    _, path = tv_resnet18_file
    model = create_model("resnet50", base_channels=8)
    with pytest.raises(ConfigError, match="no weight file"):
        load_pretrained(model, tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="unknown weight source"):
        load_pretrained(model, path, source="timm")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pth")  # a pickled module, refused by weights_only
    with pytest.raises(ConfigError, match="cannot read weights") as e:
        load_pretrained(model, tmp_path / "pickled.pth")
    assert "pickled.pth" in str(e.value)
    with pytest.raises(ConfigError, match="backbone weight"):
        load_pretrained(model, path)
