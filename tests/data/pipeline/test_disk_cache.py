"""The memory-mapped cache (data.cache: mmap): the same samples as the in-memory cache, stored as
float16 / uint8 .npy files that are read memory-mapped, shared between datasets, no ids inside, and a
damaged entry recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medres.config import DataConfig
from medres.data import read_manifest
from medres.data.pipeline.datasets import build_dataset, manifest_to_records
from medres.data.pipeline.disk_cache import MmapCache
from tests.data.demo_cohort import demo_manifest  # noqa: F401 - fixture

WINDOWS = [{"name": "lung", "center": -600, "width": 1500}]


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"windows": WINDOWS, "spacing": [10.0, 10.0, 10.0], "patch_size": [16, 16, 16], **kw})


@pytest.fixture(scope="module")
def records(demo_manifest: Path) -> list[dict]:  # noqa: F811
    return manifest_to_records(read_manifest(demo_manifest, vocabulary=["normal", "nodule"]), _cfg())[:3]


def test_mmap_cache_serves_what_the_memory_cache_serves(records: list[dict], tmp_path: Path) -> None:
    memory = build_dataset(records, _cfg(cache="memory"), train=True, seed=3)
    mapped = build_dataset(records, _cfg(cache="mmap"), train=True, seed=3, cache_dir=tmp_path / "c")
    for i in range(len(records)):
        a, b = memory.cached(i), mapped.cached(i)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert b["image"].dtype == torch.float16 and b["mask"].dtype == a["mask"].dtype
        x, y = memory[i], mapped[i]  # the same augmented training sample
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    entries = sorted((tmp_path / "c").glob("*/image.npy"))
    assert len(entries) == len(records)
    assert np.load(entries[0], mmap_mode="r").dtype == np.float16
    assert np.load(entries[0].with_name("mask.npy"), mmap_mode="r").dtype == np.uint8
    again = build_dataset(records, _cfg(cache="mmap"), train=True, seed=3, cache_dir=tmp_path / "c")
    again.cached(0)
    assert again.stats == {"hits": 1, "misses": 0}  # a second dataset (another worker, fold or run) reuses it
    blob = b"".join(f.read_bytes() for f in (tmp_path / "c").rglob("*") if f.is_file())
    for text in (records[0]["case_id"], records[0]["patient_id"], Path(records[0]["image"]).name):
        assert text.encode() not in blob


def test_damaged_entry_is_recomputed(records: list[dict], tmp_path: Path) -> None:
    ds = build_dataset(records[:1], _cfg(cache="mmap"), train=False, cache_dir=tmp_path / "c")
    first = ds[0]["image"]
    key = ds.cache_key(0)
    (tmp_path / "c" / key / "image.npy").write_bytes(b"not an array")
    assert MmapCache(tmp_path / "c").get(key) is None
    second = build_dataset(records[:1], _cfg(cache="mmap"), train=False, cache_dir=tmp_path / "c")
    assert torch.equal(second[0]["image"], first) and second.stats["misses"] == 1
    assert (tmp_path / "c" / key / "meta.pt").exists()  # rewritten


def test_an_unreadable_entry_loses_only_the_files_an_entry_is_made_of(tmp_path: Path) -> None:
    cache = MmapCache(tmp_path / "cache")
    key = "ab" * 32
    entry = tmp_path / "cache" / key
    entry.mkdir(parents=True)
    (entry / "meta.pt").write_bytes(b"not a torch file")
    (entry / "image.npy").write_bytes(b"junk")
    (entry / "notes.txt").write_text("someone's")
    assert cache.get(key) is None
    assert sorted(p.name for p in entry.iterdir()) == ["notes.txt"]
    (entry / "notes.txt").unlink()
    (entry / "meta.pt").write_bytes(b"junk")
    assert cache.get(key) is None and not entry.exists()  # nothing else in it: the folder goes too
