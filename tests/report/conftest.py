"""Shared fixtures: one synthetic run folder and its evaluated bundle per test session."""

from __future__ import annotations

import pytest

from tests.report.synthetic_run import write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """A run folder following the run-folder contract (3 folds, 30 patients, seg masks)."""
    return write_synthetic_run(tmp_path_factory.mktemp("synth"), n_test_patients=6)


@pytest.fixture(scope="session")
def bundle_dir(synthetic_run):
    """The report bundle of `synthetic_run`, written by ``medres.evaluation.evaluate_run``."""
    from medres.evaluation import evaluate_run

    return evaluate_run(synthetic_run, synthetic_run.parent / "synth_report").parent
