"""A digest of a demo folder's content that does not depend on the zlib build: PNGs by their decoded
pixels, ``.gz`` files by their decompressed bytes, everything else byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image


def content_digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """SHA-256 over every file under ``folder`` (relative path and content), ``skip`` left out."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel in skip or rel == ".medres_written.json":  # medres's list, not content
            continue
        data = p.read_bytes()
        if p.suffix == ".png":
            a = np.asarray(Image.open(io.BytesIO(data)))
            data = f"{a.dtype}{a.shape}".encode() + a.tobytes()
        elif p.name.endswith(".gz"):
            data = gzip.decompress(data)
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()
