"""The sliding-window memory bound counts the output buffers (stitched logits, count map, TTA copies,
every member's logits), not only the window's input."""

from __future__ import annotations

import math

import pytest

from medres.config import load_config
from medres.config.schema import input_channels
from medres.errors import DataError
from medres.inference import predictor


def _allow(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    import medres.data.readers.limits as limits

    monkeypatch.setattr(limits, "memory_allowance", lambda: (room, "a test's allowance"))


def test_a_volume_whose_outputs_do_not_fit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config({"data": {"patch_size": [64, 64, 64]}})
    channels = input_channels(config.data)
    seg = len(config.data.mask_labels)
    shape = (256, 256, 256)
    volume = math.prod(shape)
    inputs = channels * volume * 4  # the scan itself: what an input-only count sees
    stitched = seg * volume * 4  # MONAI's stitched logits, one pass, one model: a floor for the outputs
    room = inputs * 2 + stitched // 2
    _allow(monkeypatch, room)
    predictor.check_window(config, 1)  # the window alone fits
    with pytest.raises(DataError) as err:
        predictor.check_window(config, 1, shape=shape, case_id="c1")
    msg = str(err.value)
    assert f"{room / 2**30:.1f} GiB (a test's allowance)" in msg and "for its outputs" in msg
    need = float(msg.split(" needs ")[1].split(" GiB")[0])
    assert need * 2**30 >= inputs + stitched - 0.05 * 2**30
    assert err.value.case_id == "c1" and "256 x 256 x 256 volume" in msg


def test_members_and_tta_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config({"data": {"patch_size": [32, 32, 32]}})
    shape = (96, 96, 96)
    _allow(monkeypatch, 2**40)
    c, k = input_channels(config.data), len(config.data.labels)
    assert len(config.data.mask_labels) == 2
    parts = predictor._window_memory(c, [32] * 3, 2, k, 1, shape, 1, False, 0.25)
    five = predictor._window_memory(c, [32] * 3, 10, k, 1, shape, 5, False, 0.25)
    flips = predictor._window_memory(c, [32] * 3, 2, k, 1, shape, 1, True, 0.25)
    volume = math.prod(shape) * 4
    assert five["outputs"] - parts["outputs"] >= 2 * 8 * volume  # 8 more channels, stitched and summed
    assert flips["outputs"] - parts["outputs"] >= 2 * volume and flips["input"] > parts["input"]
    need = sum(parts.values())
    _allow(monkeypatch, need + 1)
    predictor.check_window(config, 1, shape=shape)  # fits
    _allow(monkeypatch, need + 1)
    with pytest.raises(DataError, match="5 model"):
        predictor.check_window(config, 1, shape=shape, members=5)
    with pytest.raises(DataError, match="flip TTA"):
        predictor.check_window(config, 1, shape=shape, tta=True)
