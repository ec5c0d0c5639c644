"""The ImageNet-style image folder as a cohort: symbolic links may not lead out of it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medres.data.cohort import image_folder_manifest
from medres.errors import DataError


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def test_links_out_of_the_image_folder_are_refused(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    _png(folder / "cat" / "a.png", 10)
    _png(folder / "dog" / "b.png", 20)
    _png(elsewhere / "x.png", 30)
    os.symlink(folder / "cat" / "a.png", folder / "dog" / "alias.png")  # inside: allowed
    df, classes = image_folder_manifest(folder)
    assert classes == ["cat", "dog"] and len(df) == 3
    os.symlink(elsewhere / "x.png", folder / "dog" / "out.png")
    with pytest.raises(DataError) as info:
        image_folder_manifest(folder)
    assert "1 image(s) lead out of the image folder" in info.value.reason
    assert "dog/out.png" in info.value.reason and "data.link_roots" in info.value.hint
    df, _ = image_folder_manifest(folder, [str(elsewhere)])  # the user trusts that folder
    assert len(df) == 4
    os.symlink(elsewhere, folder / "bird")  # a whole class folder linked in from outside
    with pytest.raises(DataError, match="2 image"):
        image_folder_manifest(folder)
