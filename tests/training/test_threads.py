"""OpenMP's wait policy is set before torch is imported, and a user's own setting is kept."""

from __future__ import annotations

import os
import subprocess
import sys

from medres.training.threads import WAIT_POLICY


def _run(code: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k != WAIT_POLICY}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


def test_passive_before_torch_and_kept_when_set():
    code = ("import os, sys; from medres.training.threads import passive_openmp_waits as p; "
            "print(p(), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert _run(code) == ["True", "PASSIVE", "False"]
    assert _run(code, OMP_WAIT_POLICY="ACTIVE") == ["True", "ACTIVE", "False"]


def test_too_late_after_torch():
    """Once torch (and its OpenMP runtime) is loaded the environment is left alone and False returned."""
    code = ("import os, torch; from medres.training.threads import passive_openmp_waits as p; "
            "print(p(), os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    assert _run(code) == ["False", "unset"]


def test_train_entry_point_sets_it():
    """``python -m medres.train`` sets it first thing (here with --list-configs, which trains nothing)."""
    code = ("import os, contextlib, io, medres.train as t\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    t.main(['--list-configs'])\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    assert _run(code) == ["PASSIVE"]
