"""OpenMP's wait policy follows the machine, is set before torch is imported, and a user's own setting
is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medres.training.threads import WAIT_POLICY


def _run(code: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in (WAIT_POLICY, "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


CHOOSE = ("import os, sys; from medres.training.threads import choose_openmp_waits as c; "
          "print(c({load}, {cpus}), os.environ.get('OMP_WAIT_POLICY', 'unset'), 'torch' in sys.modules)")


@pytest.mark.parametrize("load, cpus, threads, decided, policy", [
    (0.1, 2, None, "spin", "unset"),          # an idle machine: spinning is the fastest wait
    (0.6, 2, None, "passive", "PASSIVE"),     # 0.6 + 2 threads > 2.5 cores: another job is there
    (1.0, 2, "1", "spin", "unset"),           # one thread beside one busy core fits
    (10.0, 64, None, "passive", "PASSIVE"),   # a busy cluster node
    (10.0, 64, "8", "spin", "unset"),         # ... where 8 threads still find free cores
])
def test_passive_only_when_the_cores_cannot_hold_the_threads(load, cpus, threads, decided, policy):
    env = {"OMP_NUM_THREADS": threads} if threads else {}
    assert _run(CHOOSE.format(load=load, cpus=cpus), **env) == [decided, policy, "False"]


def test_a_users_setting_is_kept_and_torch_first_is_too_late():
    assert _run(CHOOSE.format(load=9, cpus=2), OMP_WAIT_POLICY="ACTIVE") == ["environment", "ACTIVE", "False"]
    code = ("import os, torch; from medres.training.threads import choose_openmp_waits as c; "
            "print(c(9, 2), os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    assert _run(code) == ["too", "late", "unset"]


def test_train_entry_point_chooses_it():
    """``python -m medres.train`` chooses first thing (here with --list-configs, which trains nothing)."""
    code = ("import os, contextlib, io, medres.train as t\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    t.main(['--list-configs'])\n"
            "print(t.OPENMP_WAITS, os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    decided, policy = _run(code)
    assert (decided, policy) in (("spin", "unset"), ("passive", "PASSIVE"))


def test_other_work_counts_running_threads_besides_this_one():
    """A busy child process is other work; this process alone is none."""
    from medres.training.threads import other_work

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        assert other_work() >= 1
    finally:
        busy.kill()
        busy.wait()
