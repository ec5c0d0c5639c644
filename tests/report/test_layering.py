"""medres.report rebuilds a report from saved predictions without torch (DESIGN.md layering)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_report_imports_neither_torch_nor_higher_layers():
    code = (
        "import sys, medres.report; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai') "
        "or m.startswith(('medres.models', 'medres.data', 'medres.engine', 'medres.cv'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
