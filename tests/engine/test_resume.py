"""Resuming a run: a changed configuration is refused unless --force, a truncated last checkpoint falls
back to the previous one with a warning, and an existing run is never overwritten silently."""

from __future__ import annotations

import pytest
import torch

from tests.engine.train_subprocess import demo_dir, train

pytestmark = pytest.mark.slow


def test_resume_checks_config_and_survives_a_truncated_checkpoint(tmp_path_factory):
    demo = demo_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("resume")
    fold = out / "smoke" / "fold_0"
    train(out, demo, "--set", "train.epochs=1", "--set", "train.checkpoint_every_steps=1")
    assert torch.load(fold / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(fold / "checkpoint_prev.pt", weights_only=True)["step"] == 4  # kept as the fallback

    again = train(out, demo, "--set", "train.epochs=1", check=False)  # neither --resume nor --force
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr

    changed = train(out, demo, "--resume", "--set", "train.epochs=2", "--set", "optim.lr=0.01", check=False)
    assert changed.returncode == 2
    assert "configuration changed" in changed.stderr
    assert "optim.lr: 0.003 -> 0.01" in changed.stderr and "train.epochs: 1 -> 2" in changed.stderr

    data = (fold / "checkpoint_last.pt").read_bytes()
    (fold / "checkpoint_last.pt").write_bytes(data[: len(data) // 3])  # e.g. a full disk
    forced = train(out, demo, "--resume", "--force", "--set", "train.epochs=2")
    assert "previous good checkpoint" in forced.stderr
    assert "resuming after step 4 " in forced.stderr  # the fallback: the last mid-epoch checkpoint
    ckpt = torch.load(fold / "checkpoint_last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["config"]["train"]["epochs"] == 2
