"""The medres backbone serves MONAI's RetinaNet through MONAI's feature pyramid (no home-made detector)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")  # MONAI's box matcher needs it (the [detection] extra)

from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector  # noqa: E402
from monai.apps.detection.networks.retinanet_network import RetinaNet  # noqa: E402
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape  # noqa: E402
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN  # noqa: E402

from medres.models import create_model  # noqa: E402


@pytest.mark.slow
def test_retinanet_on_a_medres_backbone_trains_and_detects():
    torch.manual_seed(0)
    backbone = create_model("resnet18", spatial_dims=3, in_channels=1, base_channels=16, num_classes=0)
    returned = [1, 2]
    info = {d["module"]: d for d in backbone.feature_info}
    fpn = BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=[info[f"layer{k}"]["num_chs"] for k in returned],
        out_channels=32,
        spatial_dims=3,
    )
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**i for i in range(len(returned) + 1)], base_anchor_shapes=((6, 6, 6),)
    )
    network = RetinaNet(
        spatial_dims=3,
        num_classes=1,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=fpn,
        size_divisible=2 * info[f"layer{max(returned)}"]["reduction"],
    )
    detector = RetinaNetDetector(network, anchors)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(
        score_thresh=0.0, topk_candidates_per_level=50, nms_thresh=0.5, detections_per_img=5
    )

    image = torch.zeros(1, 1, 32, 32, 32)
    image[:, :, 8:16, 10:18, 12:20] = 1.0  # one bright cube
    target = [{"boxes": torch.tensor([[8.0, 10.0, 12.0, 16.0, 18.0, 20.0]]), "labels": torch.tensor([0])}]
    optimizer = torch.optim.SGD(detector.network.parameters(), lr=0.01, momentum=0.9)
    detector.train()
    for _ in range(3):
        losses = detector(image, target)
        assert set(losses) == {detector.cls_key, detector.box_reg_key}
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert backbone.layer1[0].conv1.weight.grad is not None  # the loss reached the medres backbone

    detector.eval()
    with torch.no_grad():
        (pred,) = detector(image, use_inferer=False)
    boxes = pred[detector.target_box_key]
    assert boxes.ndim == 2 and boxes.shape[1] == 6 and 1 <= boxes.shape[0] <= 5
    assert torch.isfinite(boxes).all() and torch.isfinite(pred[detector.pred_score_key]).all()
