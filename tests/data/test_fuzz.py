"""Seeded byte-mutation fuzzing: every mutant of a real DICOM and a real NIfTI file loads or raises a
DataError, no other exception, each within a few seconds (checked per mutant)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.conftest import NIBABEL_DATA
from tests.data.dicom_factory import CT_SMALL

N_MUTANTS = 400
SECONDS_PER_MUTANT = 5.0
# where the structure lives: DICOM header (CT_small's pixel data starts at byte 6,438), NIfTI header
HEADER_BYTES = {"dcm": 6438, "nii": 352}
PATIENT_VALUES = ("CompressedSamples", "1CT1", "JFK IMAGING")  # CT_small's patient name, id, institution
EXTREMES = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
            b"\x01\x00\x00\x00"]


def mutate(data: bytes, rng: np.random.Generator, header: int) -> bytes:
    """One random edit: flipped bytes, a 4-byte extreme value, truncation, insertion or deletion."""
    buf = bytearray(data)
    kind = int(rng.integers(6))
    # three quarters of the edits hit the header, where parsing happens
    pos = int(rng.integers(header)) if rng.random() < 0.75 else int(rng.integers(len(buf)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(header))
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        n = int(rng.integers(1, 17))
        buf[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:
        pos -= pos % 2
        buf[pos:pos + 4] = EXTREMES[int(rng.integers(len(EXTREMES)))]
    elif kind == 3:
        del buf[int(rng.integers(len(buf))):]
    elif kind == 4:
        buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:
        del buf[pos:pos + int(rng.integers(1, 9))]
    return bytes(buf)


def _fuzz(source: Path, suffix: str, seed: int, tmp_path: Path) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    data = source.read_bytes()
    outcomes = {"loaded": 0, "DataError": 0}
    for i in range(N_MUTANTS):
        path = tmp_path / f"mutant{i:03d}{suffix}"
        path.write_bytes(mutate(data, rng, HEADER_BYTES[suffix.lstrip(".")]))
        start = time.perf_counter()
        try:
            img = load_image(path)
            assert np.isfinite(img.numpy()).all() and np.isfinite(img.affine.numpy()).all(), path.name
            outcomes["loaded"] += 1
        except DataError as err:
            assert "unexpected reader failure" not in err.reason, (path.name, err.reason)
            assert err.path == str(path)
            assert not any(secret in str(err) for secret in PATIENT_VALUES), (path.name, str(err))
            outcomes["DataError"] += 1
        # any other exception fails the test here, naming the mutant
        elapsed = time.perf_counter() - start
        assert elapsed < SECONDS_PER_MUTANT, f"{path.name} took {elapsed:.1f} s"
        path.unlink()
    return outcomes


def test_fuzz_dicom(tmp_path):
    outcomes = _fuzz(CT_SMALL, ".dcm", seed=20261126, tmp_path=tmp_path)
    assert outcomes["loaded"] > 0 and outcomes["DataError"] > 0  # the mutations reach both outcomes


def test_fuzz_nifti(tmp_path):
    outcomes = _fuzz(NIBABEL_DATA / "anatomical.nii", ".nii", seed=20261127, tmp_path=tmp_path)
    assert outcomes["loaded"] > 0 and outcomes["DataError"] > 0
