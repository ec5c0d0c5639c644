"""The run folder's guard: fold locks naming their holder, the shared files written once and verified,
and the hashes a checkpoint records of its folds and configuration."""

from __future__ import annotations

import os
import pathlib

import pandas as pd
import pytest

from medres.config import load_config
from medres.engine.run_guard import FolderLock, claim_run, config_sha256, folds_sha256
from medres.errors import ConfigError

SMOKE = pathlib.Path(__file__).parents[2] / "medres" / "configs" / "smoke.yaml"


def _table(folds):
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(len(folds))], "fold": folds})


def test_folds_hash_is_the_assignment_not_the_file_layout():
    t = _table([0, 1, 0, 1])
    shuffled = t.iloc[[3, 1, 0, 2]].reset_index(drop=True)
    assert folds_sha256(t) == folds_sha256(shuffled) == folds_sha256({"P0": 0, "P1": 1, "P2": 0, "P3": 1})
    assert folds_sha256(t) != folds_sha256(_table([1, 0, 0, 1]))  # two patients swapped
    assert folds_sha256(_table([0, 1])) != folds_sha256(
        pd.DataFrame({"patient_id": ["P0", "P1 "], "fold": [0, 1]}))  # ids are exact text


def test_config_hash_ignores_only_what_may_change_on_resume():
    cfg = load_config(SMOKE)
    assert config_sha256(cfg) == config_sha256(load_config(SMOKE, ["data.num_workers=0",
                                                                  "evaluate.bootstrap_resamples=700"]))
    assert config_sha256(cfg) != config_sha256(load_config(SMOKE, ["optim.lr=0.01"]))
    assert config_sha256(cfg) == config_sha256(cfg.model_dump(mode="json"))  # a checkpoint's dict


def test_fold_locks_side_by_side_and_the_shared_files_written_once(tmp_path):
    cfg = load_config(SMOKE)
    run_dir = tmp_path / "run"
    first = claim_run(run_dir, cfg, _table([0, 1, 0, 1]), [0], resume=False, force=False)
    try:
        written = {p: (run_dir / p).read_bytes() for p in ("config.yaml", "folds.csv")}
        second = claim_run(run_dir, cfg, _table([0, 1, 0, 1]), [1], resume=False, force=False)  # fold 1 job
        second.release()
        assert {p: (run_dir / p).read_bytes() for p in written} == written
        with pytest.raises(ConfigError, match="fold 0 of run run is in use by another process") as info:
            claim_run(run_dir, cfg, _table([0, 1, 0, 1]), [0], resume=False, force=False)
        assert f"(pid {os.getpid()} on host " in info.value.reason
        with pytest.raises(ConfigError, match="folds.csv assigns patients to folds differently"):
            claim_run(run_dir, cfg, _table([1, 0, 0, 1]), [1], resume=False, force=False)
        with pytest.raises(ConfigError, match="optim.lr"):
            claim_run(run_dir, load_config(SMOKE, ["optim.lr=0.01"]), _table([0, 1, 0, 1]), [1],
                      resume=False, force=False)
        assert {p: (run_dir / p).read_bytes() for p in written} == written
    finally:
        first.release()
    claim_run(run_dir, cfg, _table([0, 1, 0, 1]), [0], resume=False, force=False).release()  # released


def test_a_lock_waits_then_names_its_holder(tmp_path):
    held = FolderLock(tmp_path / ".lock", what="the thing").acquire()
    try:
        with pytest.raises(ConfigError, match="the thing is in use by another process") as info:
            FolderLock(tmp_path / ".lock", what="the thing").acquire(wait_s=0.5)
        assert f"pid {os.getpid()}" in info.value.reason
    finally:
        held.release()
    with FolderLock(tmp_path / ".lock", what="the thing") as again:
        assert again.held
    assert not again.held
