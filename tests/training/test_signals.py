"""SIGTERM / SIGINT save a resumable checkpoint and exit 143 / 130; SIGKILL loses at most the steps since
the last checkpoint. Either way a resumed run ends bit-identical to an uninterrupted one (CPU, smoke
config with augmentation on and a cosine schedule). Real subprocesses, real signals."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.training.train_subprocess import Training, assert_same_weights, demo_dir, reference_run, train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig, code, after", [(signal.SIGTERM, 143, 1), (signal.SIGKILL, -9, 7)])
def test_interrupted_then_resumed_run_is_bit_identical(tmp_path_factory, sig, code, after):
    ref = reference_run(tmp_path_factory)
    demo = demo_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp(f"cut_{sig.name}")
    run = Training(out, demo, "--set", "train.checkpoint_every_steps=1")
    run.wait_for(f"checkpoint: step {after} ")
    run.proc.send_signal(sig)
    rc, stderr = run.finish()
    assert rc == code, stderr[-3000:]
    last = out / "smoke" / "fold_0" / "checkpoint_last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert after <= ckpt["step"] < 10 and not ckpt["finished"]  # stopped before the end
    if sig == signal.SIGTERM:
        assert ckpt["batch_in_epoch"] > 0  # a mid-epoch stop: the resume must skip the batches done
    if sig == signal.SIGTERM:
        assert "resume with --resume" in stderr
    resumed = train(out, demo, "--resume")
    assert "resuming after step" in resumed.stderr
    assert_same_weights(ref, last)


def test_sigint_saves_and_exits_130(tmp_path_factory):
    out = tmp_path_factory.mktemp("sigint")
    run = Training(out, demo_dir(tmp_path_factory), "--set", "train.checkpoint_every_steps=1")
    run.wait_for("checkpoint: step 1 ")
    run.proc.send_signal(signal.SIGINT)
    rc, stderr = run.finish()
    assert rc == 130, stderr[-3000:]
    ckpt = torch.load(out / "smoke" / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["step"] >= 1 and not ckpt["finished"]
