"""benchmarks/gpu_check.sh --dry-run: every stage of the prepared GPU check runs on the CPU at tiny sizes
and writes gpu_check.json and the Markdown table (so the script is known to work before a GPU is at hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # minutes on a loaded 2-core machine: five processes import torch and train
@pytest.mark.timeout(1500)
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    script = ROOT / "benchmarks" / "gpu_check.sh"
    p = subprocess.run(["bash", str(script), "--out", str(tmp_path), "--dry-run"], cwd=ROOT,
                       env={**env, "GPU_CHECK_LIMIT_S": "1400"}, capture_output=True, text=True, timeout=1450)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = res["stages"]
    assert res["dry_run"] and all(s["ok"] for s in stages.values())
    assert set(stages) == {"device", "pytest_gpu", "resnet50", "fullres_switches", "fullres_loader",
                           "e2e_ct_chest", "e2e_fullres", "resnet50_compile", "fullres_compile"}
    assert stages["pytest_gpu"]["failed"] == 0 and stages["pytest_gpu"]["skipped"] >= 5  # no CUDA here
    r = stages["resnet50"]["eager"]
    assert r["medres"] > 0 and r["torchvision"] > 0
    loader = stages["fullres_loader"]
    assert loader["samples_per_s"] > 0 and loader["loader_over_device"] > 0
    for e2e in ("e2e_ct_chest", "e2e_fullres"):
        assert stages[e2e]["seconds"] > 0 and stages[e2e]["epochs"] == 1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| figure | value | goal |" in table and "loader / device" in table and "FAILED" not in table
