"""Are two run folders' predictions the same? The largest absolute difference of every fold's ``p_*`` and
``logit_*`` columns, case by case, for the held-out, inner-validation and test tables.

Used to show a refactor leaves a job's results unchanged: train the same config at the same seeds from
two checkouts (e.g. ``git worktree add /tmp/old <commit>``, then ``PYTHONPATH=/tmp/old python -m
medres.train --config ...`` in one folder and the current checkout in another) and compare:

    python benchmarks/compare_runs.py OLD/runs/ct_chest NEW/runs/ct_chest [--tolerance 1e-6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TABLES = ("predictions.parquet", "inner_val_predictions.parquet", "test_predictions.parquet")


def compare(a: Path, b: Path) -> float:
    worst = 0.0
    for fold in sorted(p.name for p in a.glob("fold_*")):
        for table in TABLES:
            fa, fb = a / fold / table, b / fold / table
            if not (fa.exists() and fb.exists()):
                continue
            da = pd.read_parquet(fa).set_index("case_id").sort_index()
            db = pd.read_parquet(fb).set_index("case_id").sort_index()
            if list(da.index) != list(db.index):
                print(f"{fold} {table}: the cases differ")
                return float("inf")
            cols = [c for c in da.columns if c.startswith(("p_", "logit_"))]
            missing = [c for c in cols if c not in db.columns]
            if missing:
                print(f"{fold} {table}: columns only in the first run: {missing}")
                return float("inf")
            d = float(np.nanmax(np.abs(da[cols].to_numpy(float) - db[cols].to_numpy(float))))
            same = None
            if "y_pred" in da and "y_pred" in db:
                same = bool((da["y_pred"].astype(str) == db["y_pred"].astype(str)).all())
            other = sorted(set(da.columns) ^ set(db.columns))
            print(f"{fold} {table}: {len(da)} cases, max |difference| {d:.3g} over {len(cols)} columns, "
                  f"y_pred equal: {same}" + (f"; columns in one run only: {other}" if other else ""))
            worst = max(worst, d)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--tolerance", type=float, default=1e-6)
    args = ap.parse_args()
    worst = compare(args.first, args.second)
    print(f"largest difference: {worst:.3g} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
