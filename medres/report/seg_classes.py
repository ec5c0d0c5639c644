"""Per-class segmentation bookkeeping for reports with several foreground classes (e.g. lung and opacity).

Each foreground class is reported on its own; this table says, per class, how many cases have the
structure in their reference mask and how many empty masks the Dice figures rest on (a both-empty case
counts as Dice 1 under the declared policy, so a class that most cases lack, such as a lesion, must be
read beside these counts and its "(reference present)" rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["class_empty_counts"]


def class_empty_counts(seg_cases: pd.DataFrame) -> pd.DataFrame:
    """One row per class: cases, reference present, reference empty (of which prediction empty too),
    prediction empty where the reference is not, and the mean Dice on the cases whose reference holds it.

    ``seg_cases``: one row per case and class with ``class``, ``dice`` and ``empty`` ("", "both",
    "reference", "prediction"), as ``medres.evaluate.segmentation_cases`` writes it.
    """
    rows = []
    if seg_cases is None or not len(seg_cases) or "empty" not in seg_cases.columns:
        return pd.DataFrame(rows)
    for cls, g in seg_cases.groupby("class", sort=False):
        empty = g["empty"].fillna("").astype(str)
        present = g[~empty.isin(["both", "reference"])]
        dice = present["dice"].to_numpy(np.float64) if "dice" in g.columns else np.array([])
        dice = dice[np.isfinite(dice)]
        rows.append({
            "class": str(cls),
            "cases": int(len(g)),
            "reference holds the class": int(len(present)),
            "reference empty": int(empty.isin(["both", "reference"]).sum()),
            "both empty (Dice 1 by policy)": int((empty == "both").sum()),
            "false-positive cases (reference empty, prediction not)": int((empty == "reference").sum()),
            "missed cases (prediction empty, reference not)": int((empty == "prediction").sum()),
            "mean Dice, reference present": f"{dice.mean():.3f} (n={dice.size})" if dice.size else "n/a",
        })
    return pd.DataFrame(rows)
