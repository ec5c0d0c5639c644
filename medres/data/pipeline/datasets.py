"""Datasets, caching and loaders.

- :func:`manifest_to_records` turns a validated manifest into the records pipelines read.
- :func:`build_dataset` gives a :class:`CaseDataset`: the deterministic geometric part of the pipeline
  (load, check, orient, resample: ``medres.data.pipeline.transforms.load_transforms``) is cached in memory
  or on
  disk; intensity normalization and the per-sample part run on every access. Augmentation of sample ``i``
  in epoch ``e`` is a pure function of ``(seed, e, i)``: the random transforms are re-seeded per item, so
  results do not depend on DataLoader workers, order or resumption (``set_epoch``).
- :func:`build_loader` gives a DataLoader with a seeded order per ``(seed, epoch)``, an optional
  class-balanced sampler and distributed sampling.

Cache keys (SHA-256) cover every input file's identity and state — resolved path, size, mtime_ns,
ctime_ns and inode, for each file of a DICOM series folder — and the pipeline settings
(``preprocess_signature``), so a rewritten scan or a changed setting is never served from a stale cache.
(ctime cannot be set back by a user, so even a same-size rewrite with a restored mtime is caught.) Every
access re-checks the key, the in-memory cache included. Cached entries hold tensors, the affine and
acquisition fields only: no file names, manifest fields or DICOM patient fields. CT images are cached in
float16 HU (at most 0.5 HU rounding below 1024 HU, 2 HU up to 3071), a quarter of MONAI CacheDataset's
memory for two float32 windows; windows are applied after the cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.data.utils import list_data_collate
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler

from medres.config import DataConfig
from medres.config.tasks import SINGLE_LABEL_TYPES, AnyTask
from medres.data.pipeline.transforms import load_transforms, preprocess_signature, sample_transforms
from medres.data.readers.dicom import ACQUISITION_FIELDS
from medres.data.readers.limits import memory_error
from medres.data.readers.radiograph import RADIOGRAPH_META_FIELDS, RADIOGRAPH_RECORD_KEYS
from medres.data.readers.redact import safe_message
from medres.data.records import RECORD_KEYS, Case
from medres.errors import DataError
from medres.files import atomic_write

__all__ = ["manifest_to_records", "build_dataset", "build_loader", "CaseDataset", "item_seed", "case_targets",
           "balanced_sample_weights", "file_fingerprint", "RECORD_KEYS", "Case", "LoaderSettings"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 2  # bumped when what the readers return changes (2: 16-bit PNGs scaled by bit depth)
_META_KEEP = ("affine", "original_affine", "spatial_shape", "spacing", "space", "original_channel_dim",
              *ACQUISITION_FIELDS, *RADIOGRAPH_META_FIELDS)
_LOAD_KEYS = ("image", "mask", *RADIOGRAPH_RECORD_KEYS)  # radiographs: manifest pixel_spacing and view


def manifest_to_records(df: pd.DataFrame, data_cfg: DataConfig) -> list[Case]:
    """The :class:`~medres.data.records.Case` of each row of a manifest read by
    ``medres.data.read_manifest``, in the manifest's order.

    ``image`` is a path, or a tuple of paths when ``data.image_columns`` names several (one channel
    each); ``mask`` a path or None; ``label`` the index into ``data.labels`` (-1 when the manifest has no
    label column or the cell is empty); ``row`` the 1-based manifest row; ``fold``, ``study_uid`` and
    ``series_uid`` the cells as text where the manifest has the column; every other column is an extra,
    as text.
    """
    problems = []
    columns = list(df.columns)
    missing = [c for c in data_cfg.image_columns if c not in columns]
    if missing:
        raise DataError(f"manifest lacks the image column(s) {missing} named in data.image_columns",
                        path=df.attrs.get("manifest"), hint=f"the manifest has columns {columns}")
    mask_col = data_cfg.mask_column if data_cfg.mask_column in columns else None
    labels = {name: i for i, name in enumerate(data_cfg.labels)}
    skip = {*RECORD_KEYS, *data_cfg.image_columns, mask_col or "mask"}
    skip |= {c for c in columns if c.startswith("image_")}  # unused image columns are paths, not subgroups
    records = []
    # the manifest's own data row: read_manifest's integer index + 1, kept by every sub-frame (a fold's
    # rows), so "row 15" means line 16 of the CSV however the frame was split
    own_rows = ([int(i) + 1 for i in df.index] if pd.api.types.is_integer_dtype(df.index)
                else list(range(1, len(df) + 1)))

    def text(rec: Mapping[str, Any], column: str) -> str | None:
        return None if column not in columns else "" if rec[column] is None else str(rec[column])

    for row, rec in zip(own_rows, df.to_dict("records")):
        label_text = str(rec.get("label", "") or "")
        if label_text and label_text not in labels:
            problems.append(DataError(f"label {label_text!r} is not one of data.labels {list(labels)}",
                                      row=row, case_id=str(rec.get("case_id")), path=df.attrs.get("manifest"),
                                      hint="fix the label or add it to data.labels"))
            continue
        images = [str(rec[c]) for c in data_cfg.image_columns]
        mask = str(rec.get(mask_col, "") or "") if mask_col else ""
        records.append(Case(
            case_id=str(rec["case_id"]), patient_id=str(rec["patient_id"]),
            image=images[0] if len(images) == 1 else tuple(images), mask=mask or None,
            label=labels.get(label_text, -1), row=row, fold=text(rec, "fold"),
            study_uid=text(rec, "study_uid"), series_uid=text(rec, "series_uid"),
            extras={k: "" if v is None else str(v) for k, v in rec.items() if k not in skip}))
    if problems:
        from medres.errors import DataErrors

        raise DataErrors(problems, path=df.attrs.get("manifest"))
    return records


def case_targets(records: Sequence[Mapping[str, Any]], tasks: Sequence[AnyTask],
                 data_cfg: DataConfig) -> np.ndarray:
    """The tasks' targets of ``records`` (Cases, or dicts with the tasks' columns), read once by
    ``medres.data.tasks.parse_task_targets``: float32 ``[len(records), n_targets]`` in task order
    (single-label: the class index; multilabel: 0/1 per column; regression: the raw value; NaN unknown).
    A task reading ``label`` sees the cell's text (``data.labels[label]``, blank when -1).

    Raises:
        DataError / DataErrors: a missing column or a bad cell, naming the manifest row and column.
    """
    from medres.data.tasks import parse_task_targets

    items = [r.as_item() if isinstance(r, Case) else r for r in records]
    columns = list(dict.fromkeys(c for t in tasks for c in t.target_columns()))

    def cell(rec: Mapping[str, Any], column: str) -> str | None:
        value = rec.get(column)
        if column == "label" and isinstance(value, (int, np.integer)):
            return data_cfg.labels[value] if 0 <= value < len(data_cfg.labels) else ""
        return None if value is None else str(value)

    frame = pd.DataFrame({c: [cell(r, c) for r in items] for c in columns
                          if all(c in r for r in items)},
                         index=pd.Index([int(r.get("row") or i + 1) - 1 for i, r in enumerate(items)]))
    frame["case_id"] = [str(r.get("case_id")) for r in items]
    table = parse_task_targets(frame, tasks)
    parts = [table[t.name].values for t in tasks]
    out = np.concatenate(parts, axis=1) if parts else np.zeros((len(items), 0))
    return out.astype(np.float32)


def item_seed(seed: int, epoch: int, index: int, patch: int = 0) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a 32-bit int, stable across runs); ``patch``
    numbers the patches cut from one loaded volume (``data.patches_per_volume``; the first is patch 0)."""
    text = f"{int(seed)}:{int(epoch)}:{int(index)}" + (f":{int(patch)}" if patch else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def file_fingerprint(path: str | os.PathLike[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns, ctime_ns, inode]`` for a file, or for every file under a folder (sorted)."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _paths(record: Mapping[str, Any]) -> list[str]:
    image = record["image"]
    images = [image] if isinstance(image, (str, os.PathLike)) else list(image)
    mask = record.get("mask")
    return [str(p) for p in images] + ([str(mask)] if mask else [])


def _strip_meta(t: torch.Tensor) -> dict[str, Any]:
    """The whitelisted meta of a MetaTensor, as plain types (tensors, lists, numbers, strings)."""
    meta = getattr(t, "meta", {})
    out: dict[str, Any] = {}
    for k in _META_KEEP:
        if k not in meta:
            continue
        v = meta[k]
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().clone()
        elif isinstance(v, np.ndarray):
            v = torch.as_tensor(v).clone() if v.dtype.kind in "fiub" else v.tolist()
        elif isinstance(v, (np.generic,)):
            v = v.item()
        plain = v is None or isinstance(v, (torch.Tensor, int, float, str, list, tuple, bool))
        out[k] = v if plain else str(v)
    if isinstance(t, MetaTensor):
        out["affine"] = t.affine.detach().cpu().clone()
    return out


class CaseDataset(Dataset):
    """Cases through a cached pipeline. ``dataset[i]`` is a dict (see ``sample_transforms``) plus the
    record's other fields (``label``, ``case_id``, ``patient_id``, subgroup columns, ``row``); a training
    dataset with ``data.patches_per_volume`` k > 1 gives a list of k such dicts, cut from one load of the
    volume (MONAI's ``list_data_collate`` flattens them into the batch). ``dataset[(epoch, i)]`` draws
    epoch ``epoch``'s augmentation whatever ``set_epoch`` said: a sampler that tags its indices so
    (``EpochSampler(tag_epoch=True)``) lets persistent DataLoader workers follow the epochs.

    Args:
        records: Cases from :func:`manifest_to_records` (or dicts with ``image`` and optional ``mask``).
        data_cfg: the ``data`` section.
        train: training samples (patch crop + augmentation) or evaluation samples (whole volume).
        cache: ``"memory"``, ``"disk"`` (needs ``cache_dir``), ``"mmap"`` (memory-mapped ``.npy`` entries
            under ``cache_dir``: ``medres.data.pipeline.disk_cache``) or ``"none"``.
        cache_dir: folder of the disk cache (entries named by their key; shared safely between runs).
        seed: the run's seed; augmentation of item ``i`` in epoch ``e`` uses ``item_seed(seed, e, i)``.
        tasks: the configuration's ``tasks`` (None without): each item then carries ``targets``
            (:func:`case_targets`, a float32 tensor) and its ``label`` is the single-label task's class
            index (-1 when unknown or when no task is single-label).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], data_cfg: DataConfig, *, train: bool,
                 cache: Literal["memory", "disk", "mmap", "none"] = "memory",
                 cache_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                 tasks: Sequence[AnyTask] | None = None) -> None:
        if cache in ("disk", "mmap") and cache_dir is None:
            raise ValueError(f"cache={cache!r} needs a cache_dir")
        self.records = [r.as_item() if isinstance(r, Case) else dict(r) for r in records]
        self.targets: np.ndarray | None = None
        if tasks is not None:
            self.targets = case_targets(self.records, tasks, data_cfg)
            at, single = 0, None
            for t in tasks:
                if t.type in SINGLE_LABEL_TYPES:
                    single = at
                at += len(t.target_columns())
            for rec, row in zip(self.records, self.targets):
                rec["targets"] = torch.from_numpy(row.copy())
                y = row[single] if single is not None else np.nan
                rec["label"] = -1 if np.isnan(y) else int(y)
        self.cfg, self.train, self.cache, self.seed = data_cfg, train, cache, int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.epoch = 0
        self.load = Compose(load_transforms(data_cfg))
        self.tail = Compose(sample_transforms(data_cfg, train=train))
        self.signature = preprocess_signature(data_cfg)
        self.half = data_cfg.modality == "CT"
        self._memory: dict[int, tuple[str, dict[str, Any]]] = {}
        self.stats = {"hits": 0, "misses": 0}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation ``__getitem__`` draws (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> list[int]:
        return [int(r.get("label", -1)) for r in self.records]

    def cache_key(self, index: int) -> str:
        files = [file_fingerprint(p) for p in _paths(self.records[index])]
        extra = {k: self.records[index][k] for k in RADIOGRAPH_RECORD_KEYS if self.records[index].get(k)}
        blob = json.dumps({"v": _CACHE_VERSION, "pipeline": self.signature, "files": files,
                           "half": self.half, **({"record": extra} if extra else {})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _compute(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        d = self.load({k: rec[k] for k in _LOAD_KEYS if k in rec})
        entry: dict[str, Any] = {}
        for k in ("image", "mask"):
            if k in d:
                t = d[k]
                data = t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)
                if k == "image" and self.half:
                    data = data.to(torch.float16)
                entry[k] = data.contiguous()  # the pipeline's own tensor: nothing else holds it
                entry[f"{k}_meta"] = _strip_meta(t)
        return entry

    def _read_disk(self, path: Path) -> dict[str, Any] | None:
        try:
            # the cache's own tensors, written by this class (a model's file is read by medres.checkpoint)
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except MemoryError:  # not a damaged entry: say so, and keep the entry
            raise memory_error(path) from None
        except Exception:  # a truncated or foreign file: recompute and overwrite
            log.warning("unreadable cache entry %s; recomputing it", path.name)
            return None

    def _write_disk(self, path: Path, entry: dict[str, Any]) -> None:
        try:
            atomic_write(path, lambda tmp: torch.save(entry, tmp))
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, OSError) or "inline_container" in str(exc):
                raise disk_error(exc, path.parent, "writing the preprocessing cache") from None
            raise

    def cached(self, index: int) -> dict[str, Any]:
        """The geometric part's output for ``index`` (from the cache when its key still matches)."""
        if self.cache == "none":
            return self._compute(index)
        key = self.cache_key(index)
        if self.cache == "memory":
            hit = self._memory.get(index)
            if hit is not None and hit[0] == key:
                self.stats["hits"] += 1
                return hit[1]
            entry = self._compute(index)
            self._memory[index] = (key, entry)
        elif self.cache == "mmap":  # memory-mapped .npy entries (medres.data.pipeline.disk_cache)
            from medres.data.pipeline.disk_cache import MmapCache

            store = MmapCache(self.cache_dir)
            entry = store.get(key)
            if entry is not None:
                self.stats["hits"] += 1
                return entry
            entry = self._compute(index)
            store.put(key, entry)
        else:
            path = self.cache_dir / f"{key}.pt"
            entry = self._read_disk(path) if path.exists() else None
            if entry is not None:
                self.stats["hits"] += 1
                return entry
            entry = self._compute(index)
            self._write_disk(path, entry)
        self.stats["misses"] += 1
        return entry

    def preprocessed_shape(self, index: int) -> list[int]:
        """The spatial size of case ``index`` after the geometric part (computed once; the cache keeps it)."""
        return list(self._located(index, self.cached)["image"].shape[1:])

    def fill_cache(self, progress: bool | None = None) -> None:
        """Compute every entry now (before DataLoader workers fork, so they share the memory cache).
        ``progress``: show it (medres.progress; default: where the command shows INFO lines)."""
        from medres.progress import progress_wanted, track

        missing = [i for i in range(len(self)) if i not in self._memory]
        shown = progress_wanted() if progress is None else progress
        for i in track(range(len(self)), desc="preprocessing into the memory cache", unit="scans",
                       progress=shown and len(missing) > 0, final=False):
            self._located(i, self.cached)

    def uncached(self) -> int:
        """How many entries the cache lacks (the first epoch that reads them computes them)."""
        if self.cache == "none":
            return len(self)
        if self.cache == "memory":
            return sum(i not in self._memory for i in range(len(self)))
        keys = [self.cache_key(i) for i in range(len(self))]
        if self.cache == "mmap":
            return sum(not (self.cache_dir / k).is_dir() for k in keys)
        return sum(not (self.cache_dir / f"{k}.pt").exists() for k in keys)

    def _located(self, index: int, fn: Any) -> Any:
        rec = self.records[index]
        try:
            return fn(index)
        except Exception as exc:
            err = _behind(exc, DataError)
            if err is None and _behind(exc, MemoryError) is not None:  # MONAI wraps it in a RuntimeError
                err = memory_error(_paths(rec)[0])
            os_error = _find_os_error(exc) if err is None else None
            if os_error is not None:
                err = disk_error(os_error, Path(os_error.filename) if os_error.filename else self.cache_dir,
                                 "preprocessing")
            if err is None:
                err = DataError(f"could not be preprocessed ({type(exc).__name__}: {safe_message(exc)})",
                                path=_paths(rec)[0], hint="run python -m medres.data.check on the manifest")
            raise err.located(row=rec.get("row"), case_id=rec.get("case_id")) from None

    def _sample(self, entry: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, Any]:
        """The record's fields with fresh copies of the cached tensors (never hand out the cached ones)."""
        d: dict[str, Any] = {k: v for k, v in rec.items() if k not in ("image", "mask", "targets")}
        if "targets" in rec:
            d["targets"] = rec["targets"].clone()
        for k in ("image", "mask"):
            if k in entry:
                meta = dict(entry[f"{k}_meta"])
                t = entry[k]
                t = t.float() if t.dtype == torch.float16 else t.clone()
                d[k] = MetaTensor(t, affine=meta.pop("affine"), meta=meta)
        return d

    def _item(self, index: int, epoch: int) -> dict[str, Any] | list[dict[str, Any]]:
        entry, rec = self.cached(index), self.records[index]
        if not self.train:
            return self.tail(self._sample(entry, rec))
        k = self.cfg.patches_per_volume
        previous = get_track_meta()
        set_track_meta(False)  # training samples carry no metadata: plain tensors skip MetaTensor overhead
        try:
            out = []
            for patch in range(k):  # each patch from its own copy: a transform may work in place
                self.tail.set_random_state(seed=item_seed(self.seed, epoch, index, patch))
                d = self._sample(entry, rec)
                out.append(self.tail({n: v.as_tensor() if isinstance(v, MetaTensor) else v
                                      for n, v in d.items()}))
        finally:
            set_track_meta(previous)
        return out[0] if k == 1 else out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | list[dict[str, Any]]:
        tagged = isinstance(key, (tuple, list))
        epoch, index = (int(key[0]), int(key[1])) if tagged else (self.epoch, int(key))
        return self._located(index, lambda i: self._item(i, epoch))


def _find_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError in an exception chain (MONAI wraps transform errors in RuntimeError), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_error(exc: BaseException, where: Path | None, doing: str) -> DataError:
    """An OSError (no space, no permission, I/O error) named as the disk problem it is, with the path:
    the scan is not at fault, and ``medres.data.check`` would not find anything."""
    code = getattr(exc, "errno", None)
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EIO: "an input/output error of the disk", errno.EROFS: "the file system is read-only",
            }.get(code, f"a disk error ({os.strerror(code)})" if code else "the disk refused the write")
    return DataError(f"{what} at {where} while {doing}: a problem of the disk, not of the scan", path=where,
                     hint="free space or fix the permissions there (or set data.cache_dir / output.dir to "
                          "another disk), then run again")


E = TypeVar("E", bound=BaseException)


def _behind(exc: BaseException | None, kind: type[E]) -> E | None:
    """The exception of ``kind`` behind ``exc`` (MONAI's Compose wraps transform errors in RuntimeError)."""
    for _ in range(10):
        if exc is None:
            return None
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def build_dataset(records: Sequence[Mapping[str, Any]], data_cfg: DataConfig, *, train: bool,
                  cache_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                  tasks: Sequence[AnyTask] | None = None) -> CaseDataset:
    """A :class:`CaseDataset` with the configured cache (``data.cache``; ``disk`` goes to ``cache_dir``,
    default ``data.cache_dir``; with neither, the memory cache); ``tasks`` (``cfg.tasks``): items carry
    ``targets``."""
    cache = data_cfg.cache
    folder = cache_dir if cache_dir is not None else data_cfg.cache_dir
    if cache in ("disk", "mmap") and folder is None:
        log.info("data.cache is %r but no cache folder is set; caching in memory", cache)
        cache = "memory"
    return CaseDataset(records, data_cfg, train=train, cache=cache, cache_dir=folder, seed=seed, tasks=tasks)


def balanced_sample_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-sample weights ``1 / count(label)`` (unlabelled samples, -1, get weight 0)."""
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    weights = torch.zeros(len(labels_t), dtype=torch.double)
    for c in labels_t.unique().tolist():
        if c >= 0:
            sel = labels_t == c
            weights[sel] = 1.0 / int(sel.sum())
    return weights


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(item_seed(seed, epoch, -1))


@dataclass(frozen=True)
class LoaderSettings:
    """How a DataLoader loads, apart from what it loads and in which order (:func:`build_loader`).

    Attributes:
        num_workers: worker processes; a memory cache is filled first so that workers share it.
        pin_memory: page-locked batches, for a faster copy to a CUDA device.
        prefetch_factor: batches each worker loads ahead (with workers; torch's default 2 when None).
        persistent_workers: keep the workers between iterations of the loader. They keep the epoch the
            dataset had when they started, so iterate such a loader over several epochs only with a sampler
            that tags its indices with the epoch (``EpochSampler(tag_epoch=True)``), changing its
            ``epoch`` / ``skip`` before each pass; ``seed``/``epoch`` then only fix the first pass.
        drop_last: drop an epoch's last, incomplete batch.
        distributed: split the samples over ranks with ``DistributedSampler`` (seeded, ``set_epoch``).
    """

    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    drop_last: bool = False
    distributed: bool = False


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, epoch: int,
                 sampler: Sampler | Literal["balanced"] | None = None,
                 settings: LoaderSettings = LoaderSettings()) -> DataLoader:
    """A DataLoader whose order is a pure function of ``(seed, epoch)``.

    Args:
        dataset: usually a :class:`CaseDataset` (its ``set_epoch`` is called with ``epoch``).
        shuffle: a seeded random order (ignored when ``sampler`` is given).
        sampler: a Sampler, ``"balanced"`` (``WeightedRandomSampler`` with inverse class frequencies,
            seeded), or None.
        settings: workers, pinned memory, prefetching, the last batch and distribution.
    """
    s, workers = settings, settings.num_workers
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if s.distributed:
        if sampler is not None:
            raise ValueError("distributed loading takes no other sampler (balance with class weights)")
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=s.drop_last)
        sampler.set_epoch(epoch)
    elif sampler == "balanced":
        weights = balanced_sample_weights(dataset.labels())
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                        generator=_generator(seed, epoch))
    elif isinstance(sampler, str):
        raise ValueError(f"unknown sampler {sampler!r}; use 'balanced', a Sampler or None")
    if workers > 0 and isinstance(dataset, CaseDataset) and dataset.cache == "memory":
        dataset.fill_cache()
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=workers, collate_fn=list_data_collate,
                      generator=_generator(seed, epoch), drop_last=s.drop_last, pin_memory=s.pin_memory,
                      persistent_workers=s.persistent_workers and workers > 0,
                      prefetch_factor=s.prefetch_factor if workers > 0 else None)
