"""ResNet: torchvision parity (parameters, state dicts, outputs), every registered model, options."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from medres.models import BasicBlock, Bottleneck, ResNet, create_model, list_models

# docs/reference.md §1 (torchvision's num_params metadata) and state-dict key counts.
PARAMS = {
    "resnet18": (11_689_512, 122),
    "resnet34": (21_797_672, 218),
    "resnet50": (25_557_032, 320),
    "resnet101": (44_549_160, 626),
    "resnet152": (60_192_808, 932),
    "resnext50_32x4d": (25_028_904, None),
    "wide_resnet50_2": (68_883_240, None),
}
TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_table(name):
    params, keys = PARAMS[name]
    m = create_model(name)
    assert n_params(m) == params
    if keys is not None:
        assert len(m.state_dict()) == keys


def test_one_input_channel_removes_the_rgb_stem_weights():
    assert n_params(create_model("resnet18")) - n_params(create_model("resnet18", in_channels=1)) == 6_272


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_strictly_and_gives_its_outputs(name):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a misplaced norm would show in the outputs
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ours = create_model(name).eval()
    assert n_params(ours) == n_params(tv)
    sd = tv.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in sd.items()]
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# 2D grey (X-ray-like) and 3D four-channel (multi-sequence MR); 3D one-channel CT and 1..4 channels in
# both 2D and 3D are covered by the dual-head and pretrained tests.
@pytest.mark.parametrize("spatial_dims, in_channels", [(2, 1), (3, 4)])
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs(name, spatial_dims, in_channels):
    """Every builder, 2D and 3D, 1 and several channels, small widths and inputs; forward + backward."""
    torch.manual_seed(0)
    size = (32, 32) if spatial_dims == 2 else (16, 24, 24)
    kw = {"spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": 3, "base_channels": 16}
    if name.startswith("dual_"):
        kw["seg_classes"] = 2
    model = create_model(name, **kw)
    x = torch.randn(2, in_channels, *size)
    out = model(x)
    if name.startswith("dual_"):
        assert out.cls_logits.shape == (2, 3)
        assert out.seg_logits.shape == (2, 2, *size)
        loss = out.cls_logits.sum() + out.seg_logits.mean()
    else:
        assert out.shape == (2, 3)
        loss = out.sum()
    loss.backward()
    stem = model.backbone.conv1 if name.startswith("dual_") else model.conv1
    assert stem.weight.grad is not None and torch.isfinite(stem.weight.grad).all()
    assert stem.weight.ndim == spatial_dims + 2 and stem.weight.shape[1] == in_channels


@pytest.mark.parametrize(
    "norm, norm_type",
    [("instance", nn.InstanceNorm3d), ("group", nn.GroupNorm), (("group", {"num_groups": 4}), nn.GroupNorm)],
)
def test_norm_and_act_reach_every_block(norm, norm_type):
    m = create_model("resnet50", spatial_dims=3, in_channels=1, base_channels=16, norm=norm, act="gelu")
    assert not any(isinstance(x, (nn.BatchNorm3d, nn.ReLU)) for x in m.modules())
    norms = [x for x in m.modules() if isinstance(x, norm_type)]
    # stem + 3 per bottleneck (16 blocks) + 4 downsample shortcuts
    assert len(norms) == 1 + 3 * 16 + 4
    assert sum(isinstance(x, nn.GELU) for x in m.modules()) == 1 + 3 * 16
    if isinstance(norm, tuple):
        assert all(x.num_groups == 4 for x in norms)
    with torch.no_grad():  # 48^3: instance norm needs more than one voxel at layer4
        out = m(torch.randn(1, 1, 48, 48, 48))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_callable_norm_and_act_like_torchvision():
    m = create_model("resnet18", norm=nn.BatchNorm2d, act=lambda: nn.LeakyReLU(0.1), base_channels=8)
    assert sum(isinstance(x, nn.LeakyReLU) for x in m.modules()) == 1 + 2 * 8


def test_feature_info_matches_forward_intermediates():
    m = create_model("resnet50", spatial_dims=3, in_channels=2, base_channels=16)
    x = torch.randn(1, 2, 32, 64, 64)
    feats = m.forward_intermediates(x)
    assert [d["module"] for d in m.feature_info] == ["act", "layer1", "layer2", "layer3", "layer4"]
    for f, info in zip(feats, m.feature_info):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[2:] == tuple(s // info["reduction"] for s in x.shape[2:])
    torch.testing.assert_close(m.forward_features(x), feats[-1])
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_head(m.forward_features(x)), m(x))
        assert m.forward_head(feats[-1], pre_logits=True).shape == (1, 16 * 8 * 4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_hooks_on_the_stages_fire(checkpointing):
    """layer1..4 are called as modules (timm's way), so a hook on a stage (Grad-CAM's) sees its output;
    with gradient checkpointing the blocks are run one by one and the last block's hook still fires."""
    m = create_model("dual_resnet10", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2,
                     base_channels=4, grad_checkpointing=checkpointing)
    seen = {}
    target = m.backbone.layer4[-1] if checkpointing else m.backbone.layer4
    for name in ("layer1", "layer2", "layer3", "layer4"):
        # a forward hook that returns a value replaces the module's output: these return None
        getattr(m.backbone, name).register_forward_hook(
            lambda mod, i, o, n=name: seen.update({n: o.shape}) if n not in seen else None)
    target.register_forward_hook(lambda mod, i, o: seen.update({"target": o.shape}))
    out = m(torch.randn(2, 1, 32, 32, 32))  # batch 2: batch norm needs two values per channel at 1^3
    assert seen["target"] == (2, 32, 1, 1, 1) and out.cls_logits.shape == (2, 2)
    if not checkpointing:
        assert list(seen) == ["layer1", "layer2", "layer3", "layer4", "target"]


def test_dilation_stem_and_anisotropic_reduction():
    m = create_model(
        "resnet18",
        spatial_dims=3,
        in_channels=1,
        base_channels=8,
        stem_stride=(1, 2, 2),
        replace_stride_with_dilation=(False, True, True),
    )
    assert [d["reduction"] for d in m.feature_info] == [(1, 2, 2), (2, 4, 4), (4, 8, 8), (4, 8, 8), (4, 8, 8)]
    feats = m.forward_intermediates(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 16, 16), (8, 8, 8), (4, 4, 4), (4, 4, 4), (4, 4, 4)]
    # torchvision's convention: the first block of a dilated stage keeps the previous dilation
    assert m.layer3[0].conv1.dilation == (1, 1, 1) and m.layer3[1].conv1.dilation == (2, 2, 2)
    assert m.layer4[0].conv1.dilation == (2, 2, 2) and m.layer4[1].conv2.dilation == (4, 4, 4)
    mn = create_model(
        "resnet18",
        spatial_dims=3,
        base_channels=8,
        dilate_first_block=True,
        replace_stride_with_dilation=(False, True, True),
    )
    assert mn.layer3[0].conv1.dilation == (2, 2, 2) and mn.layer4[0].conv1.dilation == (4, 4, 4)


def test_torchvision_dilated_resnet50_matches():
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    ours = create_model("resnet50", replace_stride_with_dilation=(False, True, True)).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


def test_zero_init_residual_makes_blocks_identity_branches():
    m = create_model("resnet18", zero_init_residual=True, base_channels=8)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in m.modules() if isinstance(b, BasicBlock))
    m = create_model("resnet50", zero_init_residual=True, base_channels=8)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in m.modules() if isinstance(b, Bottleneck))


def test_shortcut_a_has_no_downsample_weights():
    m = create_model("resnet18", spatial_dims=3, in_channels=1, base_channels=8, shortcut="A")
    assert not any("downsample" in k for k in m.state_dict())
    b = create_model("resnet18", spatial_dims=3, in_channels=1, base_channels=8)
    assert n_params(b) - n_params(m) == sum(8 * 2**i * 8 * 2 ** (i - 1) + 2 * 8 * 2**i for i in (1, 2, 3))
    assert m(torch.randn(2, 1, 16, 16, 16)).shape == (2, 1000)


def test_no_stem_pool_and_features_only():
    m = ResNet(
        BasicBlock,
        [1, 1, 1, 1],
        spatial_dims=2,
        in_channels=1,
        num_classes=0,
        stem_pool=False,
        stem_stride=1,
        base_channels=8,
    )
    assert [d["reduction"] for d in m.feature_info] == [1, 1, 2, 4, 8]
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 64)
