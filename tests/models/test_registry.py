"""The model registry: names, None-dropping, helpful errors."""

from __future__ import annotations

import pytest
import torch

from medres import ConfigError
from medres.models import create_model, list_models, register_model, registry
from medres.models.resnet import ResNet

BACKBONES = [
    "resnet10",
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


def test_list_models_has_every_builder_and_its_dual_twin():
    assert list_models() == sorted(BACKBONES + [f"dual_{n}" for n in BACKBONES])
    assert list_models("dual_*") == sorted(f"dual_{n}" for n in BACKBONES)
    assert list_models("resnet1*") == ["resnet10", "resnet101", "resnet152", "resnet18"]


def test_unknown_name_names_the_closest():
    with pytest.raises(ConfigError) as e:
        create_model("resnet19")
    assert "resnet18" in str(e.value) and "unknown model 'resnet19'" in str(e.value)
    with pytest.raises(ConfigError, match="dual_resnet50"):
        create_model("dual_resnt50")


def test_unknown_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="num_clases"):
        create_model("resnet10", num_clases=3)


def test_none_keywords_keep_the_model_defaults():
    m = create_model("resnet10", spatial_dims=None, num_classes=None, base_channels=8)
    assert isinstance(m, ResNet)
    assert m.spatial_dims == 2 and m.fc.out_features == 1000 and m.conv1.in_channels == 3


def test_register_model_and_duplicate_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry as it was

    @register_model(name="_test_tiny_resnet")
    def tiny(**kwargs):
        return create_model("resnet10", base_channels=4, **kwargs)

    assert "_test_tiny_resnet" in list_models("_test_*")
    out = create_model("_test_tiny_resnet", num_classes=3)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    with pytest.raises(ConfigError, match="already registered"):
        register_model(lambda: None, name="_test_tiny_resnet")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"norm": "batchh"}, "batch"),
        ({"act": "rellu"}, "relu"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"shortcut": "C"}, "shortcut"),
        ({"stem_kernel": (7, 7)}, "stem_kernel"),
    ],
)
def test_bad_options_are_config_errors(kw, match):
    kw.setdefault("spatial_dims", 3)
    with pytest.raises(ConfigError, match=match):
        create_model("resnet10", base_channels=4, **kw)
