"""Checkpoints: plain types only, atomic writes, fallback to the previous file, load_model."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch

from medres.checkpoint import (
    LAST,
    PREV,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from medres.config import load_config
from medres.errors import ConfigError
from medres.training.fold import build_model, model_spec


def test_plain_types_load_with_weights_only(tmp_path):
    state = {"a": np.float32(1.5), "b": np.arange(3), "p": pathlib.Path("/x/y"), "t": (np.int64(2), "s"),
             "rng": rng_state()}
    # torch itself refuses the raw objects (docs/reference.md §4) ...
    torch.save(state, tmp_path / "raw.pt")
    with pytest.raises(Exception):  # noqa: B017 - the unpickler's error type is torch-internal
        torch.load(tmp_path / "raw.pt", weights_only=True)
    # ... and accepts the converted ones
    save_checkpoint(state, tmp_path / LAST)
    back = torch.load(tmp_path / LAST, weights_only=True)
    assert back["a"] == 1.5 and isinstance(back["a"], float)
    assert torch.equal(back["b"], torch.arange(3))
    assert back["p"] == "/x/y" and back["t"] == (2, "s")


def test_rng_state_round_trip():
    s = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(to_plain(s))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


_W = {"w": torch.zeros(1)}  # load_checkpoint refuses a file without a model state dict


def test_truncated_last_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    save_checkpoint({"step": 1, "model": _W}, tmp_path / LAST)
    save_checkpoint({"step": 2, "model": _W}, tmp_path / LAST)
    assert load_checkpoint(tmp_path / PREV)["step"] == 1
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 2])  # a crash mid-write without the atomic rename
    with caplog.at_level("WARNING", logger="medres.training"):
        assert load_checkpoint(tmp_path / LAST)["step"] == 1
    assert "previous good checkpoint" in caplog.text
    # a damaged file never replaces the good previous one
    save_checkpoint({"step": 3, "model": _W}, tmp_path / LAST)
    assert load_checkpoint(tmp_path / PREV)["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_no_usable_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        load_checkpoint(tmp_path / LAST)


def test_load_model_rebuilds_the_model(tmp_path):
    cfg = load_config(pathlib.Path(__file__).parents[1] / "configs" / "smoke.yaml")
    model = build_model(cfg)
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg)}, tmp_path / "checkpoint_best.pt")
    back, cfg2 = load_model(tmp_path / "checkpoint_best.pt")
    assert not back.training and cfg2.model_dump() == cfg.model_dump()
    x = torch.randn(1, 1, 24, 24, 24)
    model.eval()
    with torch.no_grad():
        a, b = model(x), back(x)
    assert torch.equal(a.cls_logits, b.cls_logits) and torch.equal(a.seg_logits, b.seg_logits)


def test_own_last_checkpoint_is_kept_as_previous_without_reloading(tmp_path, monkeypatch):
    """The file this process wrote is kept as checkpoint_prev.pt without a torch.load of it; a file
    written by anyone else (here: replaced in place with the same content) is loaded first."""
    import medres.checkpoint as checkpoint

    loaded = []
    real = checkpoint._loads
    monkeypatch.setattr(checkpoint, "_loads", lambda p: loaded.append(p) or real(p))
    save_checkpoint({"step": 1, "model": _W}, tmp_path / LAST)
    save_checkpoint({"step": 2, "model": _W}, tmp_path / LAST)
    assert loaded == [] and load_checkpoint(tmp_path / PREV)["step"] == 1
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).unlink()
    (tmp_path / LAST).write_bytes(data)  # step 2 again, but not the file this process wrote
    save_checkpoint({"step": 3, "model": _W}, tmp_path / LAST)
    assert loaded == [tmp_path / LAST]
    assert load_checkpoint(tmp_path / PREV)["step"] == 2 and load_checkpoint(tmp_path / LAST)["step"] == 3
