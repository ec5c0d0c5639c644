"""Datasets, caches and loaders: seeded augmentation per (seed, epoch, index), cache invalidation,
workers, samplers, errors located by row."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medres.config import DataConfig
from medres.data import read_manifest
from medres.data.pipeline.datasets import (
    LoaderSettings,
    balanced_sample_weights,
    build_dataset,
    build_loader,
    item_seed,
    manifest_to_records,
)
from medres.errors import DataError
from tests.data.demo_cohort import demo_manifest  # noqa: F401 - fixture

WINDOWS = [{"name": "lung", "center": -600, "width": 1500}, {"name": "med", "center": 40, "width": 400}]


def _cfg(**kw) -> DataConfig:
    base = {"windows": WINDOWS, "spacing": [10.0, 10.0, 10.0], "patch_size": [16, 16, 16],
            "augment": {"intensity_prob": 0.5, "noise_std": 0.02}}
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def records(demo_manifest: Path) -> list[dict]:  # noqa: F811
    return manifest_to_records(read_manifest(demo_manifest, vocabulary=["normal", "nodule"]), _cfg())


def test_records_from_manifest(records: list[dict], demo_manifest: Path) -> None:  # noqa: F811
    r = records[0]
    assert set(r) >= {"case_id", "patient_id", "image", "mask", "label", "row", "site", "scanner", "sex",
                      "age"}
    assert Path(r["image"]).is_absolute() and r["row"] == 1 and r["label"] in (0, 1)
    df = read_manifest(demo_manifest)
    assert [x["label"] for x in records] == [["normal", "nodule"].index(v) for v in df["label"]]
    two = df.assign(image_a=df["image"], image_b=df["image"], label="")
    recs = manifest_to_records(two, _cfg(image_columns=["image_a", "image_b"]))
    assert recs[0]["image"] == [df["image"][0]] * 2 and recs[0]["label"] == -1
    with pytest.raises(DataError, match="row 2.*'maybe'"):
        manifest_to_records(df.assign(label=["normal", "maybe", *df["label"][2:]]), _cfg())


def _all(ds, epoch: int) -> list[dict]:
    ds.set_epoch(epoch)
    return [ds[i] for i in range(len(ds))]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
               for x, y in zip(a, b))


def test_augmentation_is_a_function_of_seed_epoch_index(records: list[dict]) -> None:
    records = records[:4]
    ds = build_dataset(records, _cfg(), train=True, seed=5)
    e0, e1 = _all(ds, 0), _all(ds, 1)
    assert e0[0]["image"].shape == (2, 16, 16, 16) and e0[0]["mask"].dtype == torch.long
    assert not _same(e0, e1)  # epochs differ
    fresh = build_dataset(records, _cfg(), train=True, seed=5)  # a resumed run: straight to epoch 1
    assert _same(_all(fresh, 1), e1)
    fresh.set_epoch(0)
    assert _same([fresh[i] for i in reversed(range(len(fresh)))][::-1], e0)  # order does not matter
    assert not _same(_all(build_dataset(records, _cfg(), train=True, seed=6), 0), e0)
    assert item_seed(5, 1, 3) == item_seed(5, 1, 3) != item_seed(5, 1, 4)


def test_loader_order_and_workers(records: list[dict]) -> None:
    ds = build_dataset(records, _cfg(), train=True, seed=0)
    order = lambda epoch, **kw: [c for b in build_loader(ds, batch_size=3, shuffle=True, seed=0,  # noqa: E731
                                                         epoch=epoch, **kw) for c in b["case_id"]]
    first = order(2)
    assert first == order(2) and sorted(first) == sorted(r["case_id"] for r in records)
    assert first != order(3)
    ref = list(build_loader(ds, batch_size=4, shuffle=True, seed=0, epoch=1))
    workers = list(build_loader(ds, batch_size=4, shuffle=True, seed=0, epoch=1,
                                settings=LoaderSettings(num_workers=2)))
    assert len(ref) == len(workers) == 3
    for a, b in zip(ref, workers):
        assert a["case_id"] == b["case_id"] and torch.equal(a["image"], b["image"])
        assert a["image"].shape[1:] == (2, 16, 16, 16) and a["label"].dtype == torch.long


def test_balanced_sampler_is_seeded_and_balanced() -> None:
    labels = [0] * 90 + [1] * 10
    w = balanced_sample_weights(labels)
    assert torch.isclose(w[:90].sum(), w[90:].sum())

    class Labels(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 100

        def __getitem__(self, i: int) -> int:
            return labels[i]

        def labels(self) -> list[int]:
            return labels

    draw = lambda epoch: torch.cat(list(build_loader(Labels(), batch_size=50, shuffle=False, seed=1,  # noqa: E731
                                                     epoch=epoch, sampler="balanced"))).tolist()
    assert draw(0) == draw(0) != draw(1)
    counts = Counter(draw(0) + draw(1) + draw(2))
    assert 0.35 < counts[1] / 300 < 0.65  # 10% of the data, about half of the draws


def test_distributed_sampler(records: list[dict], tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ds = build_dataset(records[:6], _cfg(), train=False)
        ids = lambda epoch: [c for b in build_loader(ds, batch_size=1, shuffle=True, seed=0, epoch=epoch,  # noqa: E731
                                                      settings=LoaderSettings(distributed=True))
                             for c in b["case_id"]]
        assert sorted(ids(0)) == sorted(r["case_id"] for r in records[:6]) and ids(0) == ids(0) != ids(1)
    finally:
        dist.destroy_process_group()


def _write_nii(path: Path, data: np.ndarray) -> None:
    img = nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    nib.save(img, str(path))


@pytest.mark.parametrize("cache", ["disk", "memory"])
def test_cache_never_serves_a_changed_scan(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "scan.nii"  # uncompressed: a rewrite with other values keeps the size
    hu = np.full((12, 12, 12), -1000, dtype=np.int16)
    _write_nii(path, hu)
    rec = [{"case_id": "c1", "patient_id": "p1", "image": str(path), "mask": None, "label": 0, "row": 1}]
    cfg = _cfg(spacing=[8.0, 8.0, 8.0], cache=cache)
    ds = build_dataset(rec, cfg, train=False, cache_dir=tmp_path / "cache" if cache == "disk" else None)
    first = ds[0]["image"]
    assert ds[0] is not None and ds.stats == {"hits": 1, "misses": 1}
    before = path.stat()
    _write_nii(path, hu + 1040)  # same size, new content
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with the old mtime restored
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    second = ds[0]["image"]
    assert ds.stats["misses"] == 2 and not torch.equal(first, second)
    np.testing.assert_allclose(second[1].numpy(), (40 + 160) / 400, atol=1e-4)  # 40 HU, mediastinal
    # a changed geometric setting: a new key; a changed window: same entry, new output
    other = build_dataset(rec, DataConfig(**{**cfg.model_dump(), "spacing": [6.0, 6.0, 6.0]}), train=False,
                          cache_dir=tmp_path / "cache" if cache == "disk" else None)
    assert other[0]["image"].shape[1:] != second.shape[1:]
    assert other.cache_key(0) != ds.cache_key(0)
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
        narrow = build_dataset(rec, DataConfig(**{**cfg.model_dump(), "windows": WINDOWS[1:]}), train=False,
                               cache_dir=tmp_path / "cache")
        out = narrow[0]["image"]
        assert narrow.stats == {"hits": 1, "misses": 0} and out.shape[0] == 1
        assert torch.equal(out[0], second[1])


def test_disk_cache_holds_no_paths_or_ids(records: list[dict], tmp_path: Path) -> None:
    ds = build_dataset(records[:3], _cfg(cache="disk"), train=False, cache_dir=tmp_path / "c")
    sample = ds[0]
    files = list((tmp_path / "c").glob("*.pt"))
    assert len(files) == 1
    blob = files[0].read_bytes()
    for r in records[:1]:
        for text in (r["case_id"], r["patient_id"], Path(r["image"]).name, str(tmp_path)):
            assert text.encode() not in blob
    entry = torch.load(files[0], weights_only=True)  # plain types only
    assert entry["image"].dtype == torch.float16  # CT cached in HU, float16
    assert isinstance(sample["image"], torch.Tensor) and sample["image"].meta["spacing"] == [10.0] * 3
    assert "original_affine" in sample["image"].meta and sample["case_id"] == records[0]["case_id"]


def test_errors_name_the_row_and_case(records: list[dict], tmp_path: Path) -> None:
    bad = dict(records[0], image=str(tmp_path / "gone.nii.gz"), row=7, case_id="c7")
    ds = build_dataset([bad], _cfg(), train=True)
    with pytest.raises(DataError) as info:
        ds[0]
    assert info.value.row == 7 and info.value.case_id == "c7" and "gone.nii.gz" in str(info.value)


def test_balanced_weights_balance_the_draws() -> None:
    # the weights the training loop's class-balanced sampler uses (medres.training.fold)
    labels = [0] * 80 + [1] * 15 + [2] * 5 + [-1] * 10
    w = balanced_sample_weights(labels)
    y = np.array(labels)
    sums = [w[torch.tensor(y == c)].sum().item() for c in range(3)]
    np.testing.assert_allclose(sums, [sums[0]] * 3)  # every class carries the same total weight
    assert torch.all(w[torch.tensor(y == -1)] == 0.0)  # unlabelled scans are not drawn
    draws = torch.utils.data.WeightedRandomSampler(w, 30000, generator=torch.Generator().manual_seed(0))
    drawn = np.bincount(y[list(draws)] + 1, minlength=4) / 30000
    assert drawn[0] == 0
    np.testing.assert_allclose(drawn[1:], [1 / 3] * 3, atol=0.02)


def test_patches_per_volume_cuts_several_seeded_patches_from_one_load(records: list[dict]) -> None:
    one = build_dataset(records[:3], _cfg(), train=True, seed=5)
    three = build_dataset(records[:3], _cfg(patches_per_volume=3), train=True, seed=5)
    three.set_epoch(2)
    one.set_epoch(2)
    patches = three[1]
    assert isinstance(patches, list) and len(patches) == 3
    assert _same([patches[0]], [one[1]])  # patch 0 is the single-patch sample: same seed
    assert not torch.equal(patches[1]["image"], patches[2]["image"])  # the others are new draws
    assert all(p["case_id"] == records[1]["case_id"] for p in patches)
    assert _same(three[(2, 1)], patches) and not _same(three[(3, 1)], patches)  # an epoch-tagged key
    before = dict(three.stats)
    three[1]
    assert three.stats["misses"] + three.stats["hits"] == before["misses"] + before["hits"] + 1  # one load
    batch = next(iter(build_loader(three, batch_size=2, shuffle=False, seed=0, epoch=2)))
    assert batch["image"].shape == (6, 2, 16, 16, 16)  # 2 volumes x 3 patches, flattened
    assert batch["case_id"] == [records[0]["case_id"]] * 3 + [records[1]["case_id"]] * 3
    evaluation = build_dataset(records[:1], _cfg(patches_per_volume=3), train=False)
    assert isinstance(evaluation[0], dict)  # evaluation reads the whole volume once


def test_persistent_workers_follow_the_epochs_of_a_tagged_sampler(records: list[dict]) -> None:
    from medres.training.sampling import EpochSampler

    ds = build_dataset(records[:6], _cfg(), train=True, seed=3)
    sampler = EpochSampler(len(ds), seed=3, tag_epoch=True)
    loader = build_loader(ds, batch_size=2, shuffle=False, seed=0, epoch=0, sampler=sampler,
                          settings=LoaderSettings(num_workers=2, persistent_workers=True))
    seen, pids = [], []
    for epoch, skip in ((0, 0), (1, 0), (2, 2)):
        sampler.epoch, sampler.skip = epoch, skip
        seen.append([b for b in loader])
        pids.append(sorted(w.pid for w in loader._iterator._workers))
    assert pids[0] == pids[1] == pids[2]  # the same worker processes served every epoch
    for (epoch, skip), batches in zip(((0, 0), (1, 0), (2, 2)), seen):
        fresh = EpochSampler(len(ds), seed=3, epoch=epoch, skip=skip)
        ref = list(build_loader(ds, batch_size=2, shuffle=False, seed=0, epoch=epoch, sampler=fresh))
        assert len(ref) == len(batches) == (3 if skip == 0 else 2)
        for a, b in zip(ref, batches):
            assert a["case_id"] == b["case_id"] and torch.equal(a["image"], b["image"])
    assert not torch.equal(seen[0][0]["image"], seen[1][0]["image"])
