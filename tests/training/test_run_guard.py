"""The run folder's guard: fold locks naming their holder, the shared files written once and verified,
and the hashes a checkpoint records of its folds and configuration."""

from __future__ import annotations

import os
import pathlib

import pandas as pd
import pytest

from medres.config import load_config
from medres.errors import ConfigError
from medres.training.run_guard import FolderLock, claim_run, config_sha256, folds_sha256

SMOKE = pathlib.Path(__file__).parents[2] / "configs" / "smoke.yaml"


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


def _checkpoint(fold_dir, cfg, **extra):
    from medres.checkpoint import save_checkpoint
    from medres.training.fold import build_model, model_spec

    fold_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": build_model(cfg).state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg), **extra}, fold_dir / "checkpoint_last.pt")


def test_resume_checks_the_recorded_folds_and_configuration(tmp_path, caplog):
    import logging

    from medres.training.run_guard import check_fold_start

    cfg = load_config(SMOKE)
    trained, edited = folds_sha256(_table([0, 1, 0, 1])), folds_sha256(_table([1, 0, 0, 1]))
    _checkpoint(tmp_path / "new", cfg, folds_sha256=trained, config_sha256=config_sha256(cfg))
    assert check_fold_start(tmp_path / "new", cfg, fold=0, folds_hash=trained, resume=True,
                            force=False)["folds_sha256"] == trained
    for force in (False, True):  # other folds: never resumed, --force or not
        with pytest.raises(ConfigError, match="another patient-to-fold assignment"):
            check_fold_start(tmp_path / "new", cfg, fold=0, folds_hash=edited, resume=True, force=force)
    changed = load_config(SMOKE, ["optim.lr=0.01"])
    with pytest.raises(ConfigError, match="optim.lr"):
        check_fold_start(tmp_path / "new", changed, fold=0, folds_hash=trained, resume=True, force=False)
    assert check_fold_start(tmp_path / "new", changed, fold=0, folds_hash=trained, resume=True, force=True)

    # the configuration inside the checkpoint edited after it was written: its hash no longer matches
    lr_edited = cfg.model_dump(mode="json")
    lr_edited["optim"]["lr"] = 0.01
    _checkpoint(tmp_path / "edited", cfg, folds_sha256=trained, config_sha256=config_sha256(cfg))
    import torch

    state = torch.load(tmp_path / "edited" / "checkpoint_last.pt", weights_only=True)
    torch.save({**state, "config": lr_edited}, tmp_path / "edited" / "checkpoint_last.pt")
    with pytest.raises(ConfigError, match="does not match the hash recorded with it"):
        check_fold_start(tmp_path / "edited", changed, fold=0, folds_hash=trained, resume=True, force=True)

    # written before the hashes were recorded: resumed, with a warning that its folds cannot be verified
    _checkpoint(tmp_path / "old", cfg)
    engine_log = logging.getLogger("medres.training")
    engine_log.addHandler(caplog.handler)  # medres's own logger may not propagate (medres.train sets it up)
    try:
        assert check_fold_start(tmp_path / "old", cfg, fold=0, folds_hash=edited, resume=True, force=False)
    finally:
        engine_log.removeHandler(caplog.handler)
    assert "did not record its folds" in caplog.text
