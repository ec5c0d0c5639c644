"""How an undefined metric is reported: NaN plus a reason, never a made-up value such as 0.5."""

from __future__ import annotations

import math
import warnings


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this sample (e.g. AUROC with one class); its value is NaN."""


def undefined(reason: str, *, warn: bool = True, stacklevel: int = 3) -> float:
    """Return NaN, warning with ``reason`` so the cause is never silent."""
    if warn:
        warnings.warn(reason, UndefinedMetricWarning, stacklevel=stacklevel)
    return math.nan
