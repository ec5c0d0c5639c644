"""Guarding a run folder while it trains.

- Nothing is written into ``runs/<name>/`` before every refusal has been decided: :func:`claim_run`
  checks first (read only), then locks, checks again under the locks, and only then writes.
- One process per fold: ``fold_k/.lock`` is held (``flock``) for as long as the process trains the fold;
  the OS releases it when the process ends, crashed or not. The file names the holder (pid, host, start
  time) for the error a second process gets. ``--fold k`` jobs side by side each hold their own fold's
  lock; the shared ``config.yaml`` and ``folds.csv`` are written once under a short ``<run>/.lock`` and
  verified by every later job.
- Every checkpoint records the SHA-256 of the patient-to-fold assignment it was trained with and of its
  resolved configuration (less the settings that may change on resume); ``--resume`` refuses a
  checkpoint whose folds differ from the run's (never overridable: held-out patients would have been
  trained on) and, without ``--force``, one whose configuration differs.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medres.config import RESUME_IGNORED_FIELDS, Config, check_resume_config, flatten_dict
from medres.errors import ConfigError
from medres.runfolder import FoldFolder, RunFolder, fold_name

__all__ = ["FolderLock", "RunClaim", "claim_run", "check_fold_start", "folds_sha256", "config_sha256"]

log = logging.getLogger("medres.training")

#: how long a job waits for another's short hold of ``<run>/.lock`` (writing config.yaml / folds.csv)
SHARED_LOCK_WAIT_S = 120.0


class FolderLock:
    """An exclusive ``flock`` on ``path``, held until :meth:`release` or the end of the process.

    Hand-written over ``fcntl.flock`` rather than the ``filelock`` package: that one truncates the file
    when it opens it, which would erase the holder's pid/host/start line that the refusal quotes.
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait_s: float = 0.0) -> FolderLock:
        """Take the lock (polling up to ``wait_s`` seconds); ConfigError naming the holder otherwise."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated before it is held
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise ConfigError(f"cannot lock {self.what} ({os.strerror(exc.errno or 0)})",
                                      path=self.path, hint="run on a file system that supports flock "
                                                           "(local disks, NFSv4)") from None
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    raise ConfigError(f"{self.what} is in use by another process ({holder})", path=self.path,
                                      hint="wait for that process to finish or stop it; a process that "
                                           "ended (even by a crash) releases the lock by itself") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder unknown"


def folds_sha256(folds: Any) -> str:
    """SHA-256 of a patient-to-fold assignment in canonical form: ``[[patient_id, fold], ...]`` sorted,
    as JSON (the same assignment written in any row order or CSV style hashes the same)."""
    from medres.cv import folds_table

    table = folds_table(folds)
    pairs = sorted((str(p), int(f)) for p, f in zip(table["patient_id"], table["fold"]))
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


def config_sha256(config: Config | Mapping[str, Any]) -> str:
    """SHA-256 of a resolved configuration (a Config or a checkpoint's ``config`` dict), leaving out the
    settings that may change on resume (``RESUME_IGNORED_FIELDS``)."""
    plain = config.model_dump(mode="json") if isinstance(config, Config) else dict(config)
    flat = {k: v for k, v in flatten_dict(plain).items() if not _ignored(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in RESUME_IGNORED_FIELDS)


def check_fold_start(fold_dir: Path, cfg: Config, *, fold: int, folds_hash: str | None, resume: bool,
                     force: bool, mmap: bool = False, quiet: bool = False) -> dict[str, Any] | None:
    """Decide whether fold ``fold`` may start in ``fold_dir``: the checkpoint to resume from, or None to
    start afresh. Raises ConfigError when the folder holds a checkpoint and neither ``resume`` nor
    ``force`` is given; when resuming, when the checkpoint was trained with another patient-to-fold
    assignment (``force`` does not override this) or, without ``force``, another configuration.
    Reads only."""
    from medres.checkpoint import load_checkpoint

    last = FoldFolder(fold_dir).checkpoint_last
    if not (last.exists() or FoldFolder(fold_dir).checkpoint_prev.exists()):
        if resume and not quiet:
            log.info("fold_%d: nothing to resume in %s; starting it", fold, fold_dir)
        return None
    if not resume:
        if force:
            return None
        raise ConfigError(f"{fold_dir} already holds a checkpoint", field="output.name",
                          hint="pass --resume to continue it, --force to start it over, or choose "
                               "another output.name")
    ckpt = load_checkpoint(last, mmap=mmap, warn=not quiet)
    saved = ckpt.get("folds_sha256")
    if folds_hash is not None and saved is not None and saved != folds_hash:
        raise ConfigError(f"{fold_name(fold)}'s checkpoint was trained with another patient-to-fold "
                          f"assignment than the run's folds.csv (or cv.folds_file) now holds: resuming would "
                          f"score patients it trained on as held out", path=last, field="cv",
                          hint="restore the folds.csv the run was trained with, or start a new run "
                               "(another output.name); --force does not override this")
    if folds_hash is not None and saved is None and not quiet:
        log.warning("fold_%d: %s was written by an older medres that did not record its folds; it cannot "
                    "be verified against folds.csv (continuing)", fold, last)
    stored_cfg = ckpt.get("config_sha256")
    if stored_cfg is not None and isinstance(ckpt.get("config"), Mapping) \
            and config_sha256(ckpt["config"]) != stored_cfg:
        raise ConfigError(f"{fold_name(fold)}'s checkpoint holds a configuration that does not match the "
                          "hash recorded with it (the file was edited)", path=last,
                          hint="use the checkpoint as medres.train wrote it, or start a new run")
    if stored_cfg is None or stored_cfg != config_sha256(cfg):
        changes = check_resume_config(ckpt["config"], cfg, force=force)
        if changes and not quiet:
            log.warning("resuming fold_%d with a changed configuration (--force): %s", fold,
                        ", ".join(f for f, _, _ in changes))
    return ckpt


@dataclass
class RunClaim:
    """The locks a process holds on a run folder, and the hashes its checkpoints record."""

    run_dir: Path
    folds_hash: str
    config_hash: str
    locks: list[FolderLock] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()

    def shared(self) -> FolderLock:
        """The short lock around the files every fold job shares (config.yaml, folds.csv, the report)."""
        return FolderLock(RunFolder(self.run_dir).lock, what=f"run folder {self.run_dir.name}")


def claim_run(run_dir: Path, cfg: Config, fold_table: Any, folds: Sequence[int], *, resume: bool,
              force: bool) -> RunClaim:
    """Check every refusal, lock ``fold_k/.lock`` of each fold in ``folds``, check again under the locks,
    then write (or verify) ``config.yaml`` and ``folds.csv`` under ``<run>/.lock``. On a refusal nothing
    in the run folder has changed (at most an empty fold folder holding its lock file)."""
    folds_hash = folds_sha256(fold_table)
    run = RunFolder(run_dir)
    claim = RunClaim(run_dir=run_dir, folds_hash=folds_hash, config_hash=config_sha256(cfg))

    def check(quiet: bool) -> None:
        _check_folds_file(run_dir, fold_table, folds, force=force)
        for k in folds:  # before config.yaml: a checkpoint's own record says most precisely what changed
            check_fold_start(run.fold(k).dir, cfg, fold=k, folds_hash=folds_hash, resume=resume,
                             force=force, mmap=True, quiet=quiet)
        _check_config_file(run_dir, cfg, force=force)

    check(quiet=True)  # read only: the usual refusals cost nothing
    try:
        for k in folds:
            fold = run.fold(k)
            fold.dir.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(fold.lock, what=f"fold {k} of run {run_dir.name}")
            claim.locks.append(lock.acquire())
        with claim.shared().acquire(wait_s=SHARED_LOCK_WAIT_S):
            check(quiet=True)  # again: another job may have written since the first look
            _write_shared(run_dir, cfg, fold_table)
    except BaseException:
        claim.release()
        raise
    return claim


def _check_folds_file(run_dir: Path, fold_table: Any, folds: Sequence[int], *, force: bool) -> None:
    """Refuse when the run's folds.csv differs from this job's and may not be replaced: without
    ``force``, or when a fold this job does not restart was trained with it."""
    from medres.cv import folds_table

    run = RunFolder(run_dir)
    path = run.folds_csv
    if not path.exists():
        return
    current = _read_table(path)
    if current is not None and current.equals(folds_table(fold_table)):
        return
    others = sorted(int(f.index) for f in run.folds() if f.index not in folds
                    and (f.checkpoint_last.exists() or f.checkpoint_prev.exists()))
    if force and not others:
        return
    what = "cannot be read as a folds table" if current is None else (
        "assigns patients to folds differently than this run would (e.g. another cv.seed, cv.folds or "
        "manifest)")
    why = (f"fold(s) {others} were trained with it, so it is never replaced" if others else
           "pass --force to replace it")
    raise ConfigError(f"the run's folds.csv {what}; {why}", path=path, field="cv",
                      hint=f"run with the run's own configuration (--config {run.config}), or "
                           "choose another output.name")


def _check_config_file(run_dir: Path, cfg: Config, *, force: bool) -> None:
    """Refuse (without ``force``) when the run's config.yaml differs from this job's configuration in a
    setting that matters for learning; the refusal lists the settings."""
    from medres.config import load_config
    from medres.errors import MedresError

    path = RunFolder(run_dir).config
    if not path.exists():
        return
    try:
        saved = load_config(path)
    except (MedresError, OSError, ValueError):
        if force:
            return
        raise ConfigError("the run's config.yaml cannot be read", path=path,
                          hint="pass --force to replace it, or choose another output.name") from None
    try:
        check_resume_config(saved, cfg, force=force)
    except ConfigError as exc:
        raise ConfigError(exc.reason, field=exc.field, path=path, hint=exc.hint) from None


def _read_table(path: Path) -> Any:
    from medres.cv import folds_table, read_folds
    from medres.errors import MedresError

    try:
        return folds_table(read_folds(path))
    except (MedresError, OSError, ValueError):
        return None


def _write_shared(run_dir: Path, cfg: Config, fold_table: Any) -> None:
    """Write config.yaml and folds.csv where they are missing or differ (the checks allowed it)."""
    from medres.config import config_to_yaml, save_resolved
    from medres.cv import write_folds
    from medres.files import atomic_write

    cfg_path = RunFolder(run_dir).config
    if not cfg_path.exists() or config_to_yaml(cfg) not in cfg_path.read_text(encoding="utf-8"):
        save_resolved(cfg, cfg_path)
    from medres.cv import folds_table

    folds_path = RunFolder(run_dir).folds_csv
    if _read_table(folds_path) is None or not _read_table(folds_path).equals(folds_table(fold_table)):
        atomic_write(folds_path, lambda tmp: write_folds(fold_table, tmp))
