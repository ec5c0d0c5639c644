"""The source series' grid: its geometry tags parsed once (`finite_floats`), a bad tag named with its file."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medres import DataError
from medres.data.readers.source_series import finite_floats, source_series
from tests.data.dicom_factory import AXIAL, write_series


def test_finite_floats_reads_dicom_multivalues():
    ds = Dataset()
    ds.ImagePositionPatient = ["-158.0", "-179.5", "1e1"]
    ds.PixelSpacing = [0.5, 0.75]
    assert finite_floats(ds.ImagePositionPatient, 3).tolist() == [-158.0, -179.5, 10.0]
    assert finite_floats(ds.PixelSpacing, 2).tolist() == [0.5, 0.75]
    assert finite_floats(ds.PixelSpacing, 3) is None  # another count of values
    assert finite_floats(ds.get("ImageOrientationPatient"), 6) is None  # absent
    assert finite_floats(["1", "x", "2"], 3) is None  # not a number
    assert finite_floats(["1", "nan", "2"], 3) is None
    assert finite_floats(1.0, 1) is None  # a single value is not a vector


def test_grid_orientation_and_spacing_are_the_slices(tmp_path):
    paths = write_series(tmp_path, 3)
    grid = source_series(paths)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert grid.orientation.tolist() == list(AXIAL)
    assert grid.pixel_spacing.tolist() == [float(v) for v in first.PixelSpacing]
    assert np.allclose(grid.normal, [0.0, 0.0, 1.0])


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("value", [["1", "2"], ["1", "nan", "2"]])
def test_a_slice_without_a_valid_position_is_named(tmp_path, value):
    def edit(k, ds):
        if k == 1:
            ds.ImagePositionPatient = value

    paths = write_series(tmp_path, 3, edit=edit)
    with pytest.raises(DataError, match="lacks a valid ImagePositionPatient") as err:
        source_series(paths)
    assert paths[1].name in str(err.value) and "re-export the source series" in str(err.value)
