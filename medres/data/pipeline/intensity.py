"""Intensity transforms medres adds to MONAI's: CT windows in HU mapped to channels.

Each comes as an array transform plus its ``d``-suffixed dictionary form, like MONAI's own.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange, Transform

__all__ = ["CTWindows", "CTWindowsd"]


class CTWindows(Transform):
    """Map CT intensities in HU to one channel per window, each in [0, 1].

    A window ``(center, width)`` maps ``center - width/2`` to 0 and ``center + width/2`` to 1, clipping
    outside (MONAI's ``ScaleIntensityRange`` for each window). An input with C channels gives C * W
    channels, ordered window-major within each input channel: ``[c0w0, c0w1, ..., c1w0, ...]``.

    Args:
        windows: ``(center, width)`` pairs in HU, e.g. ``[(-600, 1500), (40, 400)]`` (lung, mediastinum).

    Shapes: ``[C, *spatial]`` -> ``[C * W, *spatial]``; the output keeps the input's metadata.
    """

    backend = ScaleIntensityRange.backend

    def __init__(self, windows: Sequence[tuple[float, float]]) -> None:
        if not windows:
            raise ValueError("CTWindows needs at least one (center, width) window")
        self.windows = [(float(c), float(w)) for c, w in windows]
        if any(w <= 0 for _, w in self.windows):
            raise ValueError(f"window widths must be positive, got {self.windows}")
        self._scalers = [ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0,
                                             clip=True) for c, w in self.windows]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = img if isinstance(img, torch.Tensor) else torch.as_tensor(img)
        img = img.float()
        out = [scale(img[c : c + 1]) for c in range(img.shape[0]) for scale in self._scalers]
        return torch.cat(out, dim=0)


class CTWindowsd(MapTransform):
    """Dictionary form of :class:`CTWindows` (usually ``keys="image"``)."""

    backend = CTWindows.backend

    def __init__(self, keys: KeysCollection, windows: Sequence[tuple[float, float]],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = CTWindows(windows)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d
