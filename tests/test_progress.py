"""Progress is shown by one rule (medres.progress): a bar on a terminal, log lines on a pipe, nothing when
quiet; the demo generator's command shows its stages on a pipe and nothing under --quiet."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medres import progress as P

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_logging_setup():
    """The ``medres`` logger as in a process where no command set it up (restored afterwards)."""
    logger, root = logging.getLogger("medres"), logging.getLogger()
    saved = logger.handlers[:], logger.level, logger.propagate
    saved_root = root.handlers[:], root.level
    logger.handlers, logger.propagate = [], True
    logger.setLevel(logging.NOTSET)
    # an earlier in-process command's logging.basicConfig leaves the root logger at INFO with a handler
    # on a stream that pytest has since closed; a fresh process has neither
    root.handlers = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    root.setLevel(logging.WARNING)
    yield
    logger.handlers, logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])
    root.handlers = saved_root[0]
    root.setLevel(saved_root[1])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_style_follows_stderr_and_the_wish(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert P.progress_style(True) == "log" and P.progress_style(False) == "off"
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert P.progress_style(True) == "bar" and P.progress_style(False) == "off"


def test_log_lines_count_and_time_a_stage_and_periodic_lines(monkeypatch, no_logging_setup):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(P.track(range(3), desc="writing", unit="scans")) == [0, 1, 2]
    assert re.fullmatch(r"\d\d:\d\d:\d\d writing: 3/3 scans done in \d+\.\d s\n", err.getvalue())

    err.seek(0), err.truncate()
    ticks = iter([0.0, 0.0, 20.0, 21.0, 45.0, 46.0])  # start, then one value per update / close
    # (2/4 after 20 s: a line; 4/4 after 45 s: none, the closing line follows)
    monkeypatch.setattr(P, "_clock", lambda: next(ticks))
    list(P.track(iter(range(4)), desc="epoch 1", total=4, unit="batches", final=False))
    lines = err.getvalue().splitlines()
    assert [line[9:] for line in lines] == ["epoch 1: 2/4 batches, 20.0 s",
                                            "epoch 1: 4/4 batches done in 46.0 s"]


def test_a_short_repeated_step_and_a_quiet_one_say_nothing(monkeypatch, no_logging_setup):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(P.track(range(5), desc="epoch 1", final=False)) == list(range(5))
    assert list(P.track(range(5), desc="writing", progress=False)) == list(range(5))
    with P.stage("index", progress=False):
        pass
    assert err.getvalue() == ""


def test_bar_on_a_terminal(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    shown = {}
    for i in P.track(range(3), desc="validate", unit="cases", postfix=shown):
        shown["loss"] = str(i)
    assert shown == {"loss": "2"}
    assert err.getvalue().startswith("\rvalidate:   0%|") and "0/3 [" in err.getvalue()  # tqdm's bar


def test_lines_go_through_the_medres_logger_where_a_command_set_it_up(caplog):
    logger = logging.getLogger("medres")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="medres"), P.stage("filling the cache"):
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["filling the cache ...",
                                                                       "filling the cache"]


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "medres.data.demo", "--n-patients", "4", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["ct_chest", "cxr"])
def test_demo_command_shows_stages_on_a_pipe_and_nothing_when_quiet(tmp_path, kind):
    n = "4" if kind == "ct_chest" else "6"
    loud = _demo(tmp_path, "--kind", kind, "--out", "loud", "--n-patients", n)
    assert loud.returncode == 0, loud.stderr
    unit = "scans" if kind == "ct_chest" else "patients"
    assert re.search(rf"demo cohort: writing loud: (\d+)/\1 {unit} done in \d", loud.stderr), loud.stderr
    quiet = _demo(tmp_path, "--kind", kind, "--out", "quiet", "--n-patients", n, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "demo cohort:" in quiet.stdout  # the result line stays
