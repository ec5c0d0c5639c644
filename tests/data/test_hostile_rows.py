"""Issue 8 item 6: errors at training time name the manifest's own row (not the row inside a fold's
sub-frame), and a disk that refuses the cache is named as a disk problem with its path."""

from __future__ import annotations

import resource
import signal

import nibabel as nib
import numpy as np
import pytest

from medres.config import DataConfig
from medres.data.manifest import read_manifest
from medres.data.pipeline.datasets import CaseDataset, manifest_to_records
from medres.errors import DataError


def _cohort(tmp_path, n=20, broken=15):
    lines = ["case_id,patient_id,image,label"]
    for i in range(1, n + 1):
        path = tmp_path / f"s{i}.nii.gz"
        if i == broken:
            path.write_bytes(b"\x1f\x8b" + b"garbage" * 20)  # gzip magic, damaged stream
        else:
            nib.save(nib.Nifti1Image(np.full((8, 8, 8), i, np.int16), np.eye(4)), path)
        lines.append(f"E{i},P{i},{path.name},normal")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(tmp_path / "m.csv", vocabulary=["normal", "nodule"])


def _cfg(**kw):
    return DataConfig(mask_column=None, spacing=None, orientation=None, **kw)


def test_records_of_a_sub_frame_carry_the_manifest_row(tmp_path):
    df = _cohort(tmp_path)
    fold_rows = df[df["case_id"].isin([f"E{i}" for i in range(11, 21)])]  # a fold's sub-frame
    records = manifest_to_records(fold_rows, _cfg())
    assert [r["row"] for r in records] == list(range(11, 21))
    dataset = CaseDataset(records, _cfg(), train=False, cache="none")
    with pytest.raises(DataError) as info:
        dataset.fill_cache()
    assert info.value.row == 15 and info.value.case_id == "E15"
    assert str(info.value).startswith("row 15, case 'E15'")


def test_a_full_cache_disk_is_named_as_a_disk_problem(tmp_path):
    df = _cohort(tmp_path, n=3, broken=0)
    records = manifest_to_records(df, _cfg())
    cache = tmp_path / "cache"
    dataset = CaseDataset(records, _cfg(), train=False, cache="disk", cache_dir=cache)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))  # the OS refuses bytes past 512
    try:
        with pytest.raises(DataError) as info:
            dataset.fill_cache()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    err = info.value
    assert "a problem of the disk, not of the scan" in err.reason and str(cache) in err.reason
    assert err.row == 1 and "medres.data.check" not in str(err)
    assert not list(cache.glob(".*tmp*"))  # nothing half-written left


def test_study_audit_errors_give_each_hint_once():
    import pandas as pd

    from medres.cv import audit_folds
    from medres.errors import DataErrors

    df = pd.DataFrame({"case_id": list("abcd"), "patient_id": ["p1", "p2", "p3", "p4"],
                       "study_uid": ["s1", "s1", "s2", "s3"], "image": list("wxyz"), "label": ["n"] * 4})
    folds = pd.DataFrame({"patient_id": ["p1", "p2", "p3", "p4"], "fold": [0, 1, 0, 1]})
    with pytest.raises(DataErrors) as info:
        audit_folds(df, folds)
    text = str(info.value)
    assert text.splitlines()[-1] == "Fix every listed row, then run again."  # on its own line
    assert all(line.count("(hint:") <= 1 for line in text.splitlines())
    located = info.value.located(row=3)  # a list of problems can be located like one
    assert isinstance(located, DataErrors) and len(located.errors) == 2


_CHILD = """
import sys
from medres.config import DataConfig
from medres.data.pipeline.datasets import CaseDataset, manifest_to_records
from medres.data.manifest import read_manifest
from medres.errors import DataError
cfg = DataConfig(mask_column=None, spacing=None, orientation=None)
records = manifest_to_records(read_manifest(sys.argv[1], vocabulary=["normal", "nodule"]), cfg)
try:
    CaseDataset(records, cfg, train=False, cache="disk", cache_dir=sys.argv[2]).fill_cache()
except DataError as err:
    print("DataError:", err.row, err.reason)
"""


def test_a_cache_folder_without_write_permission_is_named_as_such(tmp_path):
    """A real EACCES from the kernel: a cache folder of mode 0555. Root ignores modes, so as root the
    child runs under util-linux's setpriv without CAP_DAC_OVERRIDE (then modes bind root too)."""
    import os
    import shutil
    import subprocess
    import sys

    _cohort(tmp_path, n=2, broken=0)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o555)
    cache.chmod(0o555)
    cmd = [sys.executable, "-c", _CHILD, str(tmp_path / "m.csv"), str(cache)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "util-linux's setpriv is needed to drop root's permission override"
        no_override = "-dac_override,-dac_read_search"
        cmd = [setpriv, f"--inh-caps={no_override}", f"--bounding-set={no_override}", *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        cache.chmod(0o755)
    assert "DataError: 1 permission denied at" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "a problem of the disk, not of the scan" in out.stdout and str(cache) in out.stdout
    assert "Traceback" not in out.stderr and not list(cache.iterdir())
