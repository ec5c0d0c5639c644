"""Every command's --help shows its whole first paragraph: no sentence cut off, backticks balanced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["medres.train", "medres.evaluate", "medres.predict", "medres.export", "medres.plan",
            "medres.data.check", "medres.data.demo", "medres.data.index", "medres.data.listen"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_description_is_whole(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    description = p.stdout.split("\n\n")[1]  # argparse: usage, description, options
    assert description.count("``") % 2 == 0 and description.count("`") % 2 == 0, description
    assert description.rstrip().endswith((".", ")", "``")), description
