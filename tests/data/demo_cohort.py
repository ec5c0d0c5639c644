"""A small demo cohort shared by the data-pipeline tests (generated once per session; reused by path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medres.data.demo import generate_demo

N_PATIENTS = 8


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``manifest.csv`` of an 8-patient demo cohort (10 scans); generate_demo reuses a complete folder."""
    return generate_demo(tmp_path_factory.getbasetemp() / "demo8", n_patients=N_PATIENTS, seed=0)
