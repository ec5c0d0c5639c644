"""Long-format metric records: the DESIGN.md columns, intervals and notes carried through."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medres.metrics import (
    RECORD_COLUMNS,
    binary_segmentation_metrics,
    delong_roc_ci,
    metrics_at_threshold,
    patient_bootstrap_ci,
    summarise_segmentation,
    to_records,
)


def test_records_have_the_contract_columns_and_carry_intervals():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + 0.2 * rng.normal(size=80), 0, 1)
    groups = np.arange(80) // 2
    boot = patient_bootstrap_ci("auroc", y, p, groups, n_resamples=200)
    rows = to_records({"auroc": boot, "auroc_delong": delong_roc_ci(y, p), "brier": 0.2,
                       "youden": metrics_at_threshold(y, p, 2.0)},
                      scope="oof", subgroup="site=A", fold=3, class_name="nodule", n=80, n_pos=int(y.sum()),
                      notes={"brier": "scikit-learn form"})
    assert all(tuple(r) == RECORD_COLUMNS for r in rows)
    assert RECORD_COLUMNS[:12] == ("scope", "subgroup", "fold", "head", "class", "metric", "value", "ci_low",
                                   "ci_high", "ci_method", "n", "n_pos")
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["auroc"]["ci_low"] == boot.ci_low and "patient bootstrap percentile" in \
        by_metric["auroc"]["ci_method"]
    assert by_metric["auroc_delong"]["ci_method"] == "DeLong"
    assert by_metric["brier"]["note"] == "scikit-learn form" and math.isnan(by_metric["brier"]["ci_low"])
    assert by_metric["youden_ppv"]["note"] == "no case called positive at this threshold"
    assert {r["fold"] for r in rows} == {"3"} and {r["class"] for r in rows} == {"nodule"}


def test_segmentation_summary_record_counts_valid_cases():
    ref = np.zeros((9, 9), bool)
    ref[2:6, 2:6] = True
    results = [binary_segmentation_metrics(ref, ref), binary_segmentation_metrics(np.zeros_like(ref), ref)]
    rows = to_records({"hd95": summarise_segmentation(results)["hd95"]}, scope="oof", head="segmentation")
    assert rows[0]["n"] == 1 and rows[0]["value"] == pytest.approx(0.0)
    assert rows[0]["note"] == "mean of 1 valid of 2 cases"
