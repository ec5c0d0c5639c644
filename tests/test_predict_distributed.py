"""``torchrun -m medres.predict``: two CPU processes (gloo) share the cases and write what one process
writes; a rank that fails stops the run with a message naming it and no ``predictions.csv``."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medres.errors import DataError
from medres.files import WRITTEN_LIST
from medres.predict import main
from tests.test_predict import AFFINE, ROOT, ct_volume
from tests.tiny_checkpoint import save_tiny_checkpoint
from tests.training.train_subprocess import env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "medres.predict", *args]
    e = env()
    e["OMP_NUM_THREADS"] = "1"  # the same kernels in both runs, and no oversubscription on a small machine
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.pt")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Five scans of different shapes (a mask landing on another case's row would show) and a manifest
    with a subgroup column, listed out of name order."""
    folder = tmp_path_factory.mktemp("scans")
    shapes = [(30, 26, 9), (20, 22, 7), (24, 20, 8), (18, 16, 6), (26, 24, 10)]
    for k, shape in enumerate(shapes):
        nib.save(nib.Nifti1Image(ct_volume(shape), AFFINE), folder / f"s{k}.nii.gz")
    rows = [("e", 4, "B"), ("a", 0, "A"), ("d", 3, "A"), ("b", 1, "B"), ("c", 2, "C")]
    (folder / "m.csv").write_text("case_id,patient_id,image,site\n" + "".join(
        f"{c},p{k},s{k}.nii.gz,{site}\n" for c, k, site in rows))
    return folder / "m.csv"


def _nifti_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())  # the image and header, without gzip's time stamp


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(checkpoint, cases, tmp_path):
    outs = {n: tmp_path / f"out{n}" for n in (1, 2)}
    args = ["--checkpoint", str(checkpoint), "--input", str(cases), "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same CPU kernels
    try:
        assert main([*args, "--output", str(outs[1])]) == 0  # one process, no torchrun
    finally:
        torch.set_num_threads(threads)
    p = _torchrun(2, *args, "--output", str(outs[2]))
    assert p.returncode == 0, p.stderr[-4000:]
    assert (p.stdout + p.stderr).count("5 case(s) ->") == 1  # rank 0 merged and wrote the table, once
    one, two = (outs[n] / "predictions.csv" for n in (1, 2))
    assert two.read_bytes() == one.read_bytes()
    df = pd.read_csv(two, dtype=str, keep_default_na=False)
    assert df["case_id"].tolist() == ["e", "a", "d", "b", "c"]  # the manifest's order, not by rank
    assert df["site"].tolist() == ["B", "A", "A", "B", "C"]
    for row in df.itertuples():  # each row's mask is its own case's, in its scan's geometry
        mask = nib.load(outs[2] / row.seg_path)
        assert mask.shape == nib.load(row.image).shape
        assert _nifti_bytes(outs[2] / row.seg_path) == _nifti_bytes(outs[1] / row.seg_path)
    for n in (1, 2):  # no part file left behind; the written list names exactly what is there
        files = sorted(p.relative_to(outs[n]).as_posix() for p in outs[n].rglob("*") if p.is_file())
        listed = json.loads((outs[n] / WRITTEN_LIST).read_text())["files"]
        assert sorted(listed) == [f for f in files if f != WRITTEN_LIST]
        assert not [f for f in files if f.endswith(".parquet")]
        assert len(files) == 1 + 1 + len(df)  # the list, predictions.csv, one mask per case


@pytest.mark.slow
def test_a_failed_rank_fails_the_run_and_merges_nothing(checkpoint, cases, tmp_path):
    """Case 2 of 3 (rank 1's only case) is not a readable scan: both ranks stop, rank 0 names rank 1,
    no predictions.csv and no part file is left, rank 0's mask stays listed as medres's."""
    folder = cases.parent
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file at all")
    manifest = folder / "broken.csv"
    manifest.write_text("case_id,patient_id,image\na,p0,s0.nii.gz\nx,p9,broken.nii.gz\nb,p1,s1.nii.gz\n")
    out = tmp_path / "out"
    p = _torchrun(2, "--checkpoint", str(checkpoint), "--input", str(manifest), "--output", str(out),
                  "--device", "cpu")
    assert p.returncode != 0
    assert "rank 1 of 2 failed while predicting its cases" in p.stderr, p.stderr[-4000:]
    assert f'File "{ROOT / "medres"}' not in p.stderr  # a bad scan is the user's to fix: no medres traceback
    assert not (out / "predictions.csv").exists()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".parquet")]
    listed = json.loads((out / WRITTEN_LIST).read_text())["files"]
    assert sorted(listed) == [f for f in files if f != WRITTEN_LIST]
    assert len([f for f in listed if f.startswith("seg/")]) == 2  # rank 0's two cases: a and b
    assert np.asarray(nib.load(out / listed[0]).dataobj).shape in {(30, 26, 9), (20, 22, 7)}


def test_merged_parts_equal_the_one_process_table(tmp_path):
    """Rows split as the ranks split them (case i on rank i % N), written as parts and merged: the table
    one process builds from the same rows, a column only some rows have (a radiograph's ``view``) in its
    place, and a rank with no case (more ranks than cases) handled."""
    from medres.inference.predictor import write_table
    from medres.predict import _merge_parts

    rows = [{"case_id": f"c{i}", "y_true": i % 2, "p_a": i / 7, "p_b": float("nan"), "site": "S",
             **({"view": "PA"} if i in (1, 4) else {}), "image": f"s{i}.png"} for i in range(5)]
    for n in (2, 3, 7):
        parts = [f"part{r}.parquet" for r in range(n)]
        for r in range(min(n, len(rows))):
            write_table(pd.DataFrame(rows[r::n]), tmp_path / parts[r])
        merged = _merge_parts(tmp_path, parts, len(rows))
        expected = pd.DataFrame(rows)
        assert list(merged.columns) == ["case_id", "y_true", "p_a", "p_b", "site", "image", "view"]
        assert merged.to_csv(index=False) == expected.to_csv(index=False)
        pd.testing.assert_frame_equal(merged, expected)
        for name in parts:
            (tmp_path / name).unlink(missing_ok=True)
    write_table(pd.DataFrame(rows[0:4:2]), tmp_path / "part0.parquet")
    with pytest.raises(DataError, match="rank 1's part of the predictions is missing"):
        _merge_parts(tmp_path, ["part0.parquet", "part1.parquet"], 4)  # not a shared --output folder
    with pytest.raises(DataError, match="rank 0's part holds 2 rows, not 3"):
        _merge_parts(tmp_path, ["part0.parquet", "part1.parquet"], 5)
