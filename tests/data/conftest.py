"""Fixtures for the data tests: the real files shipped with pydicom and nibabel, NIfTI writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data.dicom_factory import TEST_FILES

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="session")
def dicom_files() -> Path:
    """pydicom's shipped test files (``pydicom/data/test_files``)."""
    return TEST_FILES


@pytest.fixture(scope="session")
def nibabel_files() -> Path:
    """nibabel's shipped test files (``nibabel/tests/data``)."""
    return NIBABEL_DATA


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None, *,
                qform_code: int = 1, sform_code: int = 1) -> Path:
    """Save ``data`` as NIfTI-1 with the given affine (default: 1.5 mm isotropic) and form codes."""
    affine = np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return Path(path)
