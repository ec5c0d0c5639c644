"""Provenance of a report: what produced the numbers (versions, commit, configuration, checkpoints, seeds)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

from medres.config import Config, config_hash

__all__ = ["LIBRARIES", "provenance", "sha256_file", "git_commit"]

LIBRARIES = (
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "jinja2",
    "pyarrow",
    "torch",
    "monai",
    "nibabel",
    "pydicom",
    "pydantic",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(folder: Path) -> str:
    """The commit of the git checkout holding ``folder`` (``+dirty`` if modified), or "not a git checkout"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def provenance(config: Config, run_dir: Path, checkpoints: list[Path], *, report_seed: int) -> dict[str, str]:
    """Ordered provenance fields; checkpoint paths are relative to the run folder."""
    import medres

    out = {
        "medres version": medres.__version__,
        "medres git commit": git_commit(Path(medres.__file__).parent),
        "configuration sha256": config_hash(config),
        "model": f"{config.model.name} (cls_head={config.model.cls_head}, seg_head={config.model.seg_head})",
        "seeds": f"train.seed={config.train.seed}, cv.seed={config.cv.seed}, "
        f"report bootstrap seed={report_seed}",
        "python": f"{platform.python_version()} ({platform.system()} {platform.machine()})",
        "libraries": ", ".join(f"{lib} {_version(lib)}" for lib in LIBRARIES),
        "report generated (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    for ck in checkpoints:
        out[f"sha256 {ck.as_posix()}"] = sha256_file(run_dir / ck)
    if not checkpoints:
        out["checkpoints"] = "none in the run folder"
    return out
