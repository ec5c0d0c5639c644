"""Issue 8 items 5 and 7: crafted, foreign and malformed checkpoints are ConfigErrors in medres's words
(never PyTorch's advice to load unsafely), and a write the disk refuses loses nothing."""

from __future__ import annotations

import errno
import os
import pathlib
import resource
import signal

import pytest
import torch

from medres.checkpoint import (
    LAST,
    PREV,
    _write_error,
    clean_stale_temporaries,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from medres.config import load_config
from medres.errors import ConfigError, DataError
from medres.training.fold import build_model, model_spec

SMOKE = pathlib.Path(__file__).parents[1] / "configs" / "smoke.yaml"


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _real(tmp_path, cfg=None):
    cfg = cfg or load_config(SMOKE)
    model = build_model(cfg)
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
             "model_spec": model_spec(cfg)}
    return cfg, model, state


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    text = str(info.value)
    assert "code or objects that medres never writes" in text
    assert "weights_only" not in text and "trusted source" not in text
    assert info.value.path == str(tmp_path / "evil.pt")


@pytest.mark.parametrize("content, words", [
    ([1, 2, 3], "holds a list, not a dict"),
    ({"epoch": 3}, "no 'model' entry"),
    ({"model": [torch.zeros(1)]}, "not a state dict"),
])
def test_malformed_checkpoints_are_config_errors(tmp_path, content, words):
    torch.save(content, tmp_path / "ck.pt")
    with pytest.raises(ConfigError, match=words):
        load_checkpoint(tmp_path / "ck.pt")


def test_an_invalid_config_inside_is_a_config_error(tmp_path):
    _, _, state = _real(tmp_path)
    state["config"]["train"]["epochs"] = -4
    save_checkpoint(state, tmp_path / LAST)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(tmp_path / LAST)  # also what --resume calls
    assert "configuration that is not valid" in info.value.reason and "train.epochs" in info.value.reason


def test_weights_of_another_width_are_named_not_dumped(tmp_path):
    cfg, _, state = _real(tmp_path)
    other = load_config(SMOKE, ["model.name=resnet34"])
    state["model"] = build_model(other).state_dict()
    save_checkpoint(state, tmp_path / "checkpoint_best.pt")
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path / "checkpoint_best.pt")
    text = str(info.value)
    assert "weights of another model or width" in text
    assert text.count("\n") == 0 and len(text) < 800  # one line, not load_state_dict's hundred


def test_expect_model_checks_the_fit(tmp_path):
    cfg, model, state = _real(tmp_path)
    save_checkpoint(state, tmp_path / LAST)
    assert load_checkpoint(tmp_path / LAST, expect_model=model)["model"].keys() == state["model"].keys()
    smaller = build_model(load_config(SMOKE, ["model.seg_classes=5"]))
    with pytest.raises(ConfigError, match="differ in shape"):
        load_checkpoint(tmp_path / LAST, expect_model=smaller)


def test_a_refused_write_keeps_the_last_good_checkpoint(tmp_path):
    _, _, state = _real(tmp_path)
    save_checkpoint(state, tmp_path / LAST)
    good = (tmp_path / LAST).read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the OS refuses bytes past 4 KiB
    try:
        with pytest.raises(DataError) as info:
            save_checkpoint(state, tmp_path / LAST)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert f"the last good checkpoint is {tmp_path / LAST}" in info.value.reason
    assert (tmp_path / LAST).read_bytes() == good  # untouched
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / PREV).exists()


def test_disk_full_is_named_as_such(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / LAST)
    err = _write_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / LAST)
    assert err.reason.startswith(f"disk full at {tmp_path}")
    assert f"the last good checkpoint is {tmp_path / LAST}" in err.reason


def test_stale_temporaries_are_cleaned_at_start(tmp_path):
    (tmp_path / ".checkpoint_last.pt.x1y2.tmp").write_bytes(b"")
    (tmp_path / ".checkpoint_best.pt.abcd.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = clean_stale_temporaries(tmp_path)
    assert len(removed) == 2 and (tmp_path / "notes.tmp").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _huge_spec_checkpoint(tmp_path):
    """A ~2 KB checkpoint whose model_spec asks for a ~21 GiB network (base_channels 65536)."""
    cfg, _, state = _real(tmp_path)
    state["model_spec"]["kwargs"]["base_channels"] = 65536
    state["model"] = {"backbone.conv1.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "checkpoint_best.pt")
    return tmp_path / "checkpoint_best.pt"


@pytest.mark.parametrize("route", ["load_model", "load_members", "Predictor.from_checkpoint"])
def test_a_tiny_checkpoint_asking_for_a_huge_model_is_refused_before_allocating(tmp_path, route):
    from medres.inference.members import load_members
    from medres.inference.predictor import Predictor

    path = _huge_spec_checkpoint(tmp_path)
    assert path.stat().st_size < 8192
    load = {"load_model": load_model, "load_members": lambda p: load_members([p]),
            "Predictor.from_checkpoint": Predictor.from_checkpoint}[route]
    before = _peak_rss_bytes()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert _peak_rss_bytes() - before < 2**30  # the network (21 GiB) was never built
    text = str(info.value)
    assert "weights of another model or width" in text and info.value.path == str(path)
    assert "GiB), the file holds 1" in text  # what the spec describes against what the file holds


@pytest.mark.parametrize("spec, words", [
    ("dual_resnet10", "model_spec is not"),
    ({"name": "dual_resnet10", "kwargs": {"base_channels": {"a": 1}}}, "model_spec is not"),
    ({"name": "dual_resnet10", "kwargs": {"base_channels": 10**9}}, r"cannot build a model \(RuntimeError\)"),
    ({"name": "no_such_net", "kwargs": {}}, "unknown model 'no_such_net'"),
    ({"name": "dual_resnet10", "kwargs": {"wings": 2}}, "does not accept this option"),
])
def test_a_malformed_model_spec_is_a_config_error(tmp_path, spec, words):
    _, _, state = _real(tmp_path)
    state["model_spec"] = spec
    save_checkpoint(state, tmp_path / "checkpoint_best.pt")
    with pytest.raises(ConfigError, match=words) as info:
        load_model(tmp_path / "checkpoint_best.pt")
    assert info.value.path == str(tmp_path / "checkpoint_best.pt")


def test_the_checked_rebuild_gives_the_stored_weights(tmp_path):
    _, model, state = _real(tmp_path)
    save_checkpoint(state, tmp_path / "checkpoint_best.pt")
    loaded, _ = load_model(tmp_path / "checkpoint_best.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
