"""Provenance: checkpoint hashes, configuration hash, versions and seeds, checked independently."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from medres.config import config_to_yaml, load_config
from medres.report import guideline_table, provenance


def test_provenance_fields(tmp_path):
    cfg = load_config(data={"train": {"seed": 7}, "cv": {"seed": 3}})
    ck = tmp_path / "fold_0" / "checkpoint_best.pt"
    ck.parent.mkdir()
    ck.write_bytes(b"not really a checkpoint" * 1000)
    prov = provenance(cfg, tmp_path, [Path("fold_0/checkpoint_best.pt")], report_seed=7)
    assert prov["sha256 fold_0/checkpoint_best.pt"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert prov["configuration sha256"] == hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()
    assert "train.seed=7" in prov["seeds"] and "cv.seed=3" in prov["seeds"]
    assert re.search(r"scikit-learn \d+\.\d+", prov["libraries"])
    commit = prov["medres git commit"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit) or commit.startswith(("not a git", "unknown"))


def test_guideline_mapping_names_both_checklists():
    table = guideline_table()
    assert set(table.status) == {"covered", "partly covered", "researcher supplies"}
    assert table.guideline.str.contains("CLAIM").any() and table.guideline.str.contains("TRIPOD").any()
