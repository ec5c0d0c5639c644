"""A dual-head ResNet-10 at the smallest useful size, saved through the engine's checkpoint writer: the
model the predict, SEG and PACS tests run (random weights, seeded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def save_tiny_checkpoint(path: Path, prepare: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Build the model (seed 0), let ``prepare`` adjust its weights, and save it at ``path``."""
    from medres.checkpoint import save_checkpoint
    from medres.config import load_config
    from medres.training.fold import build_model, model_spec

    cfg = load_config({
        "data": {"labels": ["normal", "nodule"], "windows": [{"name": "lung", "center": -600, "width": 1500}],
                 "normalize": "window", "spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
    })
    torch.manual_seed(0)
    model = build_model(cfg)
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg), "epoch": 1}, path)
    return path
