"""Resuming a run: a changed configuration is refused unless --force, a truncated last checkpoint falls
back to the previous one with a warning, and an existing run is never overwritten silently."""

from __future__ import annotations

import pytest
import torch

from tests.training.train_subprocess import demo_dir, train

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


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_run_changes_nothing_and_resume_checks_folds_and_locks(tmp_path_factory):
    import os
    import subprocess
    import sys

    import pandas as pd

    from medres.cv import read_folds
    from medres.errors import ConfigError
    from medres.train import run
    from medres.training.run_guard import folds_sha256
    from tests.training.train_subprocess import BASE, ROOT, SMOKE, env

    demo = demo_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("guarded")
    run_dir = out / "smoke"
    train(out, demo, "--set", "train.epochs=1")
    ckpt = torch.load(run_dir / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["folds_sha256"] == folds_sha256(read_folds(run_dir / "folds.csv"))
    sets = [BASE[i + 1] for i, a in enumerate(BASE) if a == "--set"]
    overrides = [f"output.dir={out}", f"data.demo.out={demo}", "train.epochs=1", *sets]
    before = _files(run_dir)

    # another cv.seed: refused (every fold, one fold, one fold with --force while fold 0 used the old
    # folds), and nothing in the run folder changed, config.yaml and folds.csv included
    for folds, force in ((None, False), ([1], False), ([1], True)):
        with pytest.raises(ConfigError, match="folds.csv assigns patients to folds differently"):
            run(SMOKE, overrides=[*overrides, "cv.seed=7"], folds=folds, force=force, predict=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        run(SMOKE, overrides=overrides, folds=[0], predict=False)
    assert _files(run_dir) == before

    # a hand-edited folds.csv (one patient of fold 0 swapped with one of fold 1): resume refuses, --force too
    good = (run_dir / "folds.csv").read_bytes()
    table = pd.read_csv(run_dir / "folds.csv", dtype=str)
    a, b = table.index[table["fold"] == "0"][0], table.index[table["fold"] == "1"][0]
    table.loc[[a, b], "fold"] = ["1", "0"]
    table.to_csv(run_dir / "folds.csv", index=False)
    for force in (False, True):
        with pytest.raises(ConfigError, match="another patient-to-fold assignment") as info:
            run(SMOKE, overrides=overrides, folds=[0], resume=True, force=force, predict=False)
        assert "--force does not override" in info.value.hint
    (run_dir / "folds.csv").write_bytes(good)

    # fold 0 locked by another process: refused, naming it; once that process dies (SIGKILL, no clean-up)
    # the same resume goes through
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom medres.training.run_guard import FolderLock\n"
         "FolderLock(sys.argv[1], what='x').acquire()\nprint('held', flush=True)\ntime.sleep(120)",
         str(run_dir / "fold_0" / ".lock")], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="fold 0 of run smoke is in use by another process") as info:
            run(SMOKE, overrides=overrides, folds=[0], resume=True, predict=False)
        assert f"pid {holder.pid} on host {os.uname().nodename}" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    done = run(SMOKE, overrides=overrides, folds=[0], resume=True, predict=False)
    assert done.states[0].epoch == 1
    assert (run_dir / "folds.csv").read_bytes() == good
