"""Segmentation records: ``n_pos`` counts the scans whose reference mask holds the class."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from medres.report import load_run


def test_n_pos_counts_scans_with_a_non_empty_reference(bundle_dir, synthetic_run):
    records = pd.DataFrame(json.loads((bundle_dir / "summary.json").read_text())["records"])
    preds = load_run(synthetic_run).predictions
    # independent count: read every held-out reference mask with nibabel
    has_nodule = preds.set_index("case_id")["mask"].map(lambda p: bool(np.asarray(nib.load(p).dataobj).any()))
    seg = records[(records["head"] == "segmentation") & records["scope"].isin(["fold", "pooled"])]
    assert len(seg) and has_nodule.sum() > 0
    for (scope, fold, cls), grp in seg.groupby(["scope", "fold", "class"]):
        cases = preds if scope == "pooled" else preds[preds["fold"] == int(fold)]
        expected = int(has_nodule.loc[cases["case_id"]].sum())
        assert (grp["n_pos"] == expected).all(), (scope, fold, cls)
    pooled = seg[(seg["scope"] == "pooled") & (seg["metric"] == "dice") & (seg["class"] == "nodule")]
    assert pooled["n_pos"].item() == has_nodule.sum() < pooled["n"].item()
