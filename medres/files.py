"""Files medres writes for later (checkpoints, tables, masks, caches, the resolved config, metrics.csv):
each through :func:`atomic_write` (temporary file, fsync, rename), so a crash, a kill or a full disk
leaves the old file or the whole new one, never a part.

Where outputs may go: :func:`check_output`, called by every command before it writes (an output never
is, contains or lies inside an input); what may be removed: only what medres listed as written
(:func:`remove_written`, :func:`foreign_entries`), never a whole folder it did not create; what may be
replaced in an existing output folder: only files its written-files list names (:func:`claim_outputs`,
:func:`save_written`; one list, :data:`WRITTEN_LIST`, for every command). What is copied or linked from
an input: only the file that was checked (:func:`copy_checked`, :func:`link_checked`: the same device
and inode as the ``lstat`` the decision used, opened without following a symbolic link).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

from medres.errors import DataError

__all__ = ["WRITTEN_LIST", "FileChanged", "atomic_write", "check_output", "check_replace", "claim_outputs",
           "copy_checked", "foreign_entries", "link_checked", "remove_written", "save_written",
           "written_list"]

#: The written-files list a command keeps in an output folder it writes into (index, pull, demo, predict,
#: export, evaluate): the files medres wrote there, relative POSIX paths; only these may be replaced by a
#: later run.
WRITTEN_LIST = ".medres_written.json"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 before_replace: Callable[[], object] | None = None) -> Path:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part.

    ``write(tmp)`` writes the content to a temporary file in the same folder (its name ends in the
    target's suffixes, so writers that read the format from the name, such as ``nibabel.save``, work);
    the file is then flushed to disk (fsync), ``before_replace()`` runs (e.g. keep the previous file),
    it is renamed over ``path`` (``os.replace``, atomic on POSIX and Windows) and the folder is synced.
    On any error the temporary file is removed and the target is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes),
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _resolved(path: str | os.PathLike[str]) -> Path:
    """The absolute path with every symbolic link and ``..`` resolved (as far as it exists)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _resolved_cached(path: str | os.PathLike[str], parents: dict[str, str]) -> tuple[str, tuple | None]:
    """:func:`_resolved` (as text) and the file's (device, inode) (None when absent), with the folder
    part resolved once per folder: a manifest's thousands of scans share a few folders, so each costs
    one ``lstat`` (the name itself is followed only when it is a link)."""
    head, tail = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        st = os.lstat(os.path.join(head, tail))
    except (OSError, ValueError):
        st = None
    if not tail or tail in (".", "..") or (st is not None and stat.S_ISLNK(st.st_mode)):
        real = str(_resolved(path))
        return real, _identity(real)
    if head not in parents:
        parents[head] = os.path.realpath(head)
    return os.path.join(parents[head], tail), None if st is None else (st.st_dev, st.st_ino)


def _identity(path: str | os.PathLike[str]) -> tuple | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _within(inner: str, outer: str) -> bool:
    """``inner`` lies strictly inside ``outer`` (both resolved, as text: pathlib costs ~50 us a call)."""
    return inner != outer and inner.startswith(outer if outer.endswith(os.sep) else outer + os.sep)


def check_output(out: str | os.PathLike[str], *, inputs: Mapping[str, str | os.PathLike[str] | None],
                 what: str, may_lie_inside: Collection[str] = (),
                 scans: Mapping[str, str | os.PathLike[str]] | None = None) -> Path:
    """Refuse an output that would land on an input; return the output's resolved path.

    Every command that writes calls this before it writes anything. Both sides are resolved first
    (symbolic links followed, ``..`` and relative parts removed; two names of one file count as one),
    then, for each input in ``inputs`` (name -> path; None is skipped):

    - the output may never **be** the input (a file written over it, a folder written into it);
    - the output may never **contain** the input (a folder whose contents medres rewrites or prunes
      would hold it);
    - the output may not **lie inside** the input, except for the inputs named in ``may_lie_inside``.
      Which inputs those are is each command's rule: a folder medres reads as a whole (an export root,
      a folder of scans or a DICOM series folder, a run or export folder being read) never
      takes an output inside it (the next read would see the output as input), and a file cannot hold
      one; a folder that paths are merely resolved against (the data root, the manifest's folder: a
      project folder often holds the manifest beside ``runs/`` and ``predictions/``) may, and so may
      a folder medres itself keeps outputs in (a run's ``report/`` for ``medres.evaluate``).

    ``scans`` (name -> path, e.g. every image and mask of a manifest) are checked the same way, all
    three relations, but only when the output already exists (a new folder holds nothing).

    Raises:
        DataError: naming the output, the input and how they meet, with what to do.
    """
    given = Path(out)
    target = str(_resolved(given))
    checks = [(name, p) for name, p in inputs.items() if p is not None and str(p) != ""]
    if scans and os.path.exists(target):
        checks += [(name, p) for name, p in scans.items() if p is not None and str(p) != ""]
    found = []
    parents: dict[str, str] = {}
    target_id = _identity(target)
    for name, path in checks:
        src, src_id = _resolved_cached(path, parents)
        # the same file under two names (a hard link, a case-insensitive file system, a bind mount)
        if src == target or (target_id is not None and src_id == target_id):
            found.append((0, name, path, src))
        elif _within(src, target):
            found.append((1, name, path, src))
        elif _within(target, src) and name not in may_lie_inside:
            found.append((2, name, path, src))
    if found:  # the closest relation first: "is the data root" says more than "contains the manifest"
        rank, name, path, src = min(found, key=lambda f: f[0])
        relation = ("is", "contains", "lies inside")[rank]
        resolved = f" (resolved: {target} and {src})" if (str(target), str(src)) != (
            os.path.abspath(given), os.path.abspath(path)) else ""
        raise DataError(f"the {what} {relation} the {name} {path}{resolved}; medres never writes over, "
                        "into or around what it reads", path=given,
                        hint=f"put the {what} outside every input, e.g. in a new folder beside them")
    return Path(target)


def foreign_entries(folder: str | os.PathLike[str], written: Collection[str]) -> list[str]:
    """Entries under ``folder`` (relative POSIX paths, sorted) that are not in ``written``: files and
    links that medres did not list as its own. Folders count only through what they hold; symbolic
    links to folders are entries, never followed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return [] if not folder.exists() and not folder.is_symlink() else ["."]
    wanted = set(written)
    out = []
    for here, dirs, files in os.walk(folder, followlinks=False):
        rel = Path(here).relative_to(folder)
        for name in files + [d for d in dirs if (Path(here) / d).is_symlink()]:
            r = (rel / name).as_posix()
            if r not in wanted:
                out.append(r)
    return sorted(out)


def remove_written(folder: str | os.PathLike[str], written: Collection[str]) -> list[str]:
    """Remove the files in ``written`` (relative to ``folder``) and then every folder left empty on
    their way up to and including ``folder``; nothing else is touched (no ``rmtree``). Returns the
    entries that remain (:func:`foreign_entries`)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return ["."] if folder.is_symlink() or folder.exists() else []
    real = os.path.realpath(folder)
    parents: set[Path] = set()
    for rel in written:
        if os.path.isabs(rel) or ".." in Path(rel).parts or "\0" in rel:
            continue  # a list naming something outside the folder names nothing medres wrote in it
        p = folder / rel
        if os.path.realpath(p.parent) != os.path.normpath(os.path.join(real, os.path.dirname(rel))):
            continue  # reached through a link that leaves the folder: not this folder's file
        if p.is_symlink() or p.is_file():
            p.unlink()
        parents.update(q for q in p.parents if q == folder or q.is_relative_to(folder))
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only succeeds when empty
    return foreign_entries(folder, written) if folder.exists() else []


def written_list(folder: str | os.PathLike[str]) -> list[str]:
    """The files :data:`WRITTEN_LIST` in ``folder`` names ([] when there is none or it is unreadable:
    then nothing there counts as medres's); a name that leaves the folder is dropped."""
    try:
        files = json.loads((Path(folder) / WRITTEN_LIST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, str) and _inside_name(f)]


def _inside_name(name: str) -> bool:
    """A relative path that stays in its folder (no ``..``, not absolute, no NUL): a list naming
    anything else names nothing medres wrote there."""
    text = name if os.sep == "/" else name.replace(os.sep, "/")  # text, not pathlib: thousands of names
    return bool(text) and text[0] != "/" and "\0" not in text and "/../" not in f"/{text}/" and (
        os.sep == "/" or not os.path.isabs(name))


def save_written(folder: str | os.PathLike[str], files: Collection[str]) -> None:
    """Write ``folder``'s :data:`WRITTEN_LIST` naming ``files`` (relative POSIX paths), atomically; list a
    file before it is written, so that a crash leaves nothing of medres's unlisted."""
    _save_list(Path(folder), files)


def _save_list(folder: Path, files: Collection[str]) -> None:
    text = json.dumps({"format": "medres written files", "files": sorted(set(files))}, indent=1) + "\n"
    atomic_write(folder / WRITTEN_LIST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_replace(folder: str | os.PathLike[str], names: Collection[str], *, what: str,
                  before_list: Collection[str] = (), listed: Collection[str] | None = None) -> None:
    """Refuse when one of ``names`` (paths relative to ``folder``) is there already and is not a file
    medres wrote there: not named by the folder's :data:`WRITTEN_LIST`, a folder, or reached through a
    symbolic link. Files the command does not write are never looked at (a folder may hold the user's
    other files). ``before_list``: names that count as medres's in a folder that has no list yet (one
    medres itself made before it kept lists, e.g. a run's own ``report/``). ``listed``: the folder's
    list when the caller has just read it (:func:`written_list`).

    Raises:
        DataError: naming the folder and the first such file, with what to do.
    """
    folder = Path(folder)
    listed = set(listed) if listed is not None else set(written_list(folder)) if folder.is_dir() else set()
    if not (folder / WRITTEN_LIST).exists():
        listed |= {Path(n).as_posix() for n in before_list}
    for name in sorted({Path(n).as_posix() for n in names}):
        if not _inside_name(name):
            raise DataError(f"the {what} would get a file outside it ({name!r})", path=folder,
                            hint="name outputs inside the folder (no '..', no absolute path)")
        p = folder / name
        via_link = any((folder / q).is_symlink() for q in Path(name).parents if str(q) != ".")
        if not (p.exists() or p.is_symlink() or via_link):
            continue
        if via_link or p.is_symlink() or not p.is_file() or name not in listed:
            raise DataError(f"the {what} holds {name}, a file medres did not write there; it would be "
                            "overwritten", path=folder,
                            hint=f"choose another (new or empty) folder, or move or remove {folder / name}")


@contextlib.contextmanager
def claim_outputs(folder: str | os.PathLike[str], names: Collection[str], *, what: str,
                  before_list: Collection[str] = ()) -> Iterator[Path]:
    """Around the writing of ``names`` (paths relative to ``folder``): :func:`check_replace`, then list
    them in the folder's :data:`WRITTEN_LIST` before they are written (a crash leaves nothing unlisted);
    on leaving, those that were not written are dropped from the list again (and a list naming nothing
    is removed, with the folder when this call created it and it is left empty).

    Raises:
        DataError: from :func:`check_replace` (``before_list`` as there).
    """
    folder = Path(folder)
    names = sorted({Path(n).as_posix() for n in names})
    check_replace(folder, names, what=what, before_list=before_list)
    created = not folder.exists()
    kept = {f for f in written_list(folder) if (folder / f).is_file() and f not in names} if not created \
        else set()
    folder.mkdir(parents=True, exist_ok=True)
    _save_list(folder, kept | set(names))
    try:
        yield folder
    finally:
        now = kept | {n for n in names if (folder / n).is_file()}
        if now:
            _save_list(folder, now)
        else:
            (folder / WRITTEN_LIST).unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty


class FileChanged(DataError):
    """An input file changed between the check that chose it and the copy (replaced, or made a link)."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_checked(src: str | os.PathLike[str], identity: tuple[int, int], what: str) -> int:
    """``src`` opened for reading without following a symbolic link in its last part, and only when it
    is still the regular file of ``identity`` (st_dev, st_ino): a swapped link or file is refused."""
    try:
        fd = os.open(src, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOENT):  # now a link (or gone)
            raise FileChanged(f"{what} changed after it was checked (it is now a symbolic link or gone); "
                              "it is not copied", hint="run again once the folder is no longer being "
                                                      "changed") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != tuple(identity):
        os.close(fd)
        raise FileChanged(f"{what} changed after it was checked (another file is under its name now); it "
                          "is not copied", hint="run again once the folder is no longer being changed")
    return fd


def copy_checked(src: str | os.PathLike[str], dst: str | os.PathLike[str], identity: tuple[int, int], *,
                 what: str = "an input file") -> None:
    """Copy ``src`` to ``dst`` from a descriptor opened with ``O_NOFOLLOW`` whose ``fstat`` is the
    checked file ``identity`` (st_dev, st_ino of the ``lstat`` the decision used), so a link or file
    swapped in between the check and the copy is never read.

    Raises:
        FileChanged: ``src`` is no longer that file (``what`` names it in the message).
    """
    fd = _open_checked(src, identity, what)
    with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def link_checked(src: str | os.PathLike[str], dst: str | os.PathLike[str], identity: tuple[int, int], *,
                 what: str = "an input file") -> None:
    """Hard-link ``dst`` to ``src`` only when it is the checked file ``identity``: the link is made
    without following a symbolic link and kept only when its own ``lstat`` is that file.

    Raises:
        FileChanged: ``src`` is no longer that file (nothing is left at ``dst``).
    """
    os.close(_open_checked(src, identity, what))
    os.link(src, dst, follow_symlinks=False)
    st = os.lstat(dst)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != tuple(identity):
        os.unlink(dst)
        raise FileChanged(f"{what} changed after it was checked; it is not linked",
                          hint="run again once the folder is no longer being changed")
