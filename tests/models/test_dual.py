"""DualHeadResNet: output shapes at any input size, heads on/off, decoder widths, skips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medres import ConfigError
from medres.models import DualHeadResNet, DualOutput, create_model


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(37, 45), (19, 33, 41), (32, 32), (33, 17, 64)])
def test_odd_sizes_give_input_sized_logits(size, in_channels):
    torch.manual_seed(0)
    m = create_model(
        "dual_resnet18",
        spatial_dims=len(size),
        in_channels=in_channels,
        num_classes=3,
        seg_classes=4,
        base_channels=8,
    )
    out = m(torch.randn(2, in_channels, *size))
    assert isinstance(out, DualOutput)
    assert out.cls_logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 4, *size)
    (out.cls_logits.sum() + out.seg_logits.mean()).backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("size", [(37, 45), (19, 33, 41)])
def test_heads_switched_off(size):
    kw = {"spatial_dims": len(size), "in_channels": 2, "base_channels": 8}
    x = torch.randn(2, 2, *size)
    seg_only = create_model("dual_resnet10", cls_head=False, **kw)
    assert seg_only.cls_head is None
    out = seg_only(x)
    assert out.cls_logits is None and out.seg_logits.shape == (2, 2, *size)
    cls_only = create_model("dual_resnet10", seg_head=False, num_classes=5, **kw)
    assert cls_only.seg_head is None and not any(k.startswith("seg_head") for k in cls_only.state_dict())
    out = cls_only(x)
    assert out.seg_logits is None and out.cls_logits.shape == (2, 5)
    with pytest.raises(ConfigError, match="both heads"):
        create_model("dual_resnet10", cls_head=False, seg_head=False, **kw)


def test_classification_head_sees_the_unpadded_image():
    """The classification logits equal a plain forward through the backbone (no padding for the decoder)."""
    m = create_model("dual_resnet18", spatial_dims=2, in_channels=1, num_classes=2, base_channels=8).eval()
    x = torch.randn(1, 1, 37, 45)
    with torch.no_grad():
        expected = m.backbone(x)  # the backbone with its own head (pool, dropout, fc)
        torch.testing.assert_close(m(x).cls_logits, expected)


@pytest.mark.parametrize("name, top", [("dual_resnet18", 512), ("dual_resnet50", 2048)])
def test_decoder_widths_follow_the_backbone(name, top):
    m = create_model(name, spatial_dims=3, in_channels=1, base_channels=16)
    assert m.backbone.num_features == top // 4
    assert m.seg_head.stages[0].up.in_channels == m.backbone.num_features
    assert [s.up.out_channels for s in m.seg_head.stages] == [64, 32, 16, 8]
    skips = [d["num_chs"] for d in m.backbone.feature_info[::-1][1:]]
    assert skips == ([64, 32, 16, 16] if top == 512 else [256, 128, 64, 16])
    assert [s.conv.in_channels for s in m.seg_head.stages] == [w + c for w, c in zip([64, 32, 16, 8], skips)]
    # 3x3 fusion at reductions 16, 8, 4; 1x1 at the stem's level (reduction 2); logits straight from a deconv
    assert [s.conv.kernel_size for s in m.seg_head.stages] == [(3, 3, 3)] * 3 + [(1, 1, 1)]
    assert m.seg_head.final_up.out_channels == 2 and m.seg_head.final_up.stride == (2, 2, 2)
    custom = create_model(
        name, spatial_dims=2, in_channels=1, base_channels=16, decoder_channels=[40, 30, 20, 10]
    )
    assert [s.up.out_channels for s in custom.seg_head.stages] == [40, 30, 20, 10]
    with pytest.raises(ConfigError, match="decoder_channels"):
        create_model(name, spatial_dims=2, base_channels=16, decoder_channels=[8, 8])


def test_without_skip_connections_the_decoder_sees_only_layer4():
    m = create_model(
        "dual_resnet10",
        spatial_dims=2,
        in_channels=1,
        base_channels=8,
        skip_connections=False,
        cls_head=False,
    ).eval()
    assert [s.conv.in_channels for s in m.seg_head.stages] == [s.up.out_channels for s in m.seg_head.stages]
    x = torch.randn(1, 1, 64, 64)
    feats = m.backbone.forward_intermediates(x)
    feats_other = [torch.randn_like(f) for f in feats[:-1]] + [feats[-1]]
    with torch.no_grad():
        torch.testing.assert_close(m.seg_head(feats, x.shape[2:]), m.seg_head(feats_other, x.shape[2:]))


def test_backbone_options_pass_through_and_dilation():
    m = DualHeadResNet(
        *_arch("resnet18"),
        spatial_dims=3,
        in_channels=1,
        base_channels=8,
        norm="instance",
        act="leakyrelu",
        replace_stride_with_dilation=(False, True, True),
        dropout=0.3,
        stem_stride=(1, 2, 2),
    )
    assert not any(isinstance(x, (nn.BatchNorm3d, nn.ReLU)) for x in m.modules())
    assert any(isinstance(x, nn.InstanceNorm3d) for x in m.seg_head.modules())
    assert m.backbone.drop.p == 0.3 and m.cls_head is m.backbone.fc
    out = m(torch.randn(1, 1, 9, 23, 30))
    assert out.seg_logits.shape == (1, 2, 9, 23, 30)
    assert m.feature_info[-1] == {"module": "backbone.layer4", "num_chs": 64, "reduction": (4, 8, 8)}


def _arch(name):
    from medres.models.resnet import ARCHS

    block, layers, _ = ARCHS[name]
    return block, layers


@pytest.mark.parametrize("size", [(40, 36), (17, 24, 20)])
def test_mask_scores_replace_logits_with_the_masks_most_confident_pixel(size):
    kw = {"spatial_dims": len(size), "in_channels": 1, "num_classes": 3, "seg_classes": 3, "base_channels": 8}
    torch.manual_seed(0)
    plain = create_model("dual_resnet18", **kw).eval()
    torch.manual_seed(0)
    scored = create_model("dual_resnet18", mask_scores=[[2, 1], [0, 2]], **kw).eval()
    assert scored.state_dict().keys() == plain.state_dict().keys()  # no parameters of its own
    x = torch.randn(2, 1, *size)
    a, b = plain(x), scored(x)
    torch.testing.assert_close(b.seg_logits, a.seg_logits)
    top = torch.softmax(a.seg_logits, 1).flatten(2).amax(2)  # [B, K]: each class's most confident pixel
    torch.testing.assert_close(b.cls_logits[:, 2], torch.logit(top[:, 1]))
    torch.testing.assert_close(b.cls_logits[:, 0], torch.logit(top[:, 2]))
    torch.testing.assert_close(b.cls_logits[:, 1], a.cls_logits[:, 1])
    # the score's loss trains nothing: the mask is the segmentation loss's alone
    scored.train()
    scored(x).cls_logits[:, [0, 2]].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in scored.parameters())


@pytest.mark.parametrize("pairs, words", [
    ([[3, 1]], "outside"), ([[0, 0]], "outside"), ([[0, 3]], "outside"), ([[0, 1], [0, 2]], "twice"),
    ([[0]], "pairs"),
])
def test_bad_mask_scores_are_refused(pairs, words):
    kw = {"spatial_dims": 2, "num_classes": 3, "seg_classes": 3, "base_channels": 8}
    with pytest.raises(ConfigError, match=words):
        create_model("dual_resnet18", mask_scores=pairs, **kw)
    with pytest.raises(ConfigError, match="head is off"):
        create_model("dual_resnet18", mask_scores=[[0, 1]], seg_head=False, **kw)
