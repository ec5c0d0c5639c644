"""A DICOM series folder is counted and checked before its files are parsed: more entries than
``data.max_files_per_series``, or one file under two names (hard or symbolic links), is refused up front;
the files' headers are read without their pixel data, and only the chosen series is read whole."""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest

from medres.config.schema import DataConfig
from medres.data.check import check_cohort
from medres.data.readers.io import load_image
from medres.data.readers.limits import DEFAULT_MAX_FILES_PER_SERIES
from medres.data.readers.source_series import series_in_folder
from medres.errors import DataError
from tests.data.dicom_factory import write_series

LINKS = 3000


def test_thousands_of_hard_links_to_one_slice_are_refused_before_parsing(tmp_path):
    folder = tmp_path / "series"
    (first,) = write_series(folder, 1)
    for k in range(LINKS):
        os.link(first, folder / f"link{k:05d}.dcm")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            load_image(folder)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "holds the same file under two names" in info.value.reason
    assert "hard links" in info.value.reason and info.value.path == str(folder)
    # parsing 3001 headers costs seconds and tens of MB; listing them costs neither
    assert elapsed < 3 and peak < 8 << 20, (elapsed, peak)


def test_symbolic_links_to_one_file_are_the_same_file(tmp_path):
    folder = tmp_path / "series"
    paths = write_series(folder, 3)
    os.symlink(paths[1], folder / "again.dcm")
    with pytest.raises(DataError, match="'IM0001.dcm' and 'again.dcm'|'again.dcm' and 'IM0001.dcm'"):
        load_image(folder)


def test_a_folder_past_the_bound_is_refused_before_reading(tmp_path):
    folder = tmp_path / "series"
    write_series(folder, 4)
    for k in range(20):
        (folder / f"note{k}.txt").write_text("not DICOM")
    with pytest.raises(DataError) as info:
        load_image(folder, max_files=10)
    assert "more than 10 entries" in info.value.reason and "data.max_files_per_series" in info.value.reason
    image = load_image(folder, max_files=24)  # 24 entries: at the bound, read (the notes are skipped)
    assert tuple(image.shape)[2] == 4


def test_the_bound_is_a_config_field_that_reaches_the_check(tmp_path):
    assert DataConfig().max_files_per_series == DEFAULT_MAX_FILES_PER_SERIES == 100_000
    with pytest.raises(ValueError):
        DataConfig(max_files_per_series=0)
    write_series(tmp_path / "s1", 6)
    (tmp_path / "m.csv").write_text("case_id,patient_id,image,label\nc1,p1,s1,normal\n")
    ok = check_cohort(tmp_path / "m.csv", vocabulary=["normal"], ndim=3, workers=1)
    assert ok.ok, ok.problems
    refused = check_cohort(tmp_path / "m.csv", vocabulary=["normal"], ndim=3, workers=1,
                           max_files_per_series=5)
    assert not refused.ok and "more than 5 entries" in refused.problems[0].reason
    assert refused.problems[0].row is not None


def test_only_the_chosen_series_is_read_whole(tmp_path):
    folder = tmp_path / "mixed"
    small = write_series(folder, 3, series_uid="1.2.826.0.1.3680043.8.498.111", name="A{:04d}.dcm")

    def big(k, ds):  # another series of 512 x 512 slices: 512 KiB of pixel data each, 10 MiB in all
        ds.Rows = ds.Columns = 512
        ds.PixelData = np.full((512, 512), k, np.int16).tobytes()

    write_series(folder, 20, series_uid="1.2.826.0.1.3680043.8.498.222", name="B{:04d}.dcm", edit=big,
                 series_number=4)
    tracemalloc.start()
    try:
        image = load_image(folder, series_uid="498.111")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tuple(image.shape) == (128, 128, 3) and len(small) == 3
    assert peak < 5 << 20, peak  # the other series' 10 MiB of pixels were never read


def test_source_series_listing_is_checked_too(tmp_path):
    folder = tmp_path / "series"
    paths = write_series(folder, 3)
    assert series_in_folder(folder).shape[2] == 3
    os.link(paths[0], folder / "copy.dcm")
    with pytest.raises(DataError, match="the same file under two names"):
        series_in_folder(folder)


def test_predict_input_discovery_costs_each_entry_once(tmp_path):
    # 4,000 loose DICOM names beside a NIfTI: every entry is compared once, not with every other
    import logging

    from medres.data.readers.inputs import discover_inputs

    (first,) = write_series(tmp_path / "src", 1)
    for k in range(4000):
        os.link(first, tmp_path / f"loose{k:05d}.dcm")
    (tmp_path / "a.nii.gz").write_bytes(b"")
    logging.disable(logging.WARNING)
    try:
        start = time.perf_counter()
        cases, skipped = discover_inputs(tmp_path)
        elapsed = time.perf_counter() - start
    finally:
        logging.disable(logging.NOTSET)
    assert [p.name for p in cases] == ["a.nii.gz", "src"]
    assert "4000 loose DICOM file(s)" in skipped[0][1]
    assert elapsed < 5, elapsed


def test_a_mosaic_folder_is_named_from_the_headers_alone(tmp_path):
    import shutil

    from tests.data.readers.test_hostile_realfiles import MOSAIC

    for path in MOSAIC:
        shutil.copy(path, tmp_path / path.name)
    with pytest.raises(DataError, match=r"Siemens MOSAIC image \(48 slices tiled in one 256x256 frame\)"):
        load_image(tmp_path)
