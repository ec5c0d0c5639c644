"""The bundle's files agree with each other and with independent references, and hold no patient ids."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice
from sklearn.metrics import roc_auc_score

from medres.report import build_bundle, load_run
from tests.report.synthetic_run import patient_id, write_synthetic_run


@pytest.fixture(scope="module")
def summary(bundle_dir):
    return json.loads((bundle_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def records(summary):
    return pd.DataFrame(summary["records"])


def test_bundle_files(bundle_dir):
    for name in ("report.html", "summary.json", "predictions.csv", "seg_cases.csv", "cohort.csv"):
        assert (bundle_dir / name).stat().st_size > 0, name


def test_pooled_auroc_agrees_across_files(bundle_dir, records):
    pooled = records[
        (records.scope == "pooled")
        & (records.metric == "auroc")
        & ~records.ci_method.str.contains("DeLong")
    ]
    value = pooled["value"].item()
    preds = pd.read_csv(bundle_dir / "predictions.csv")
    assert value == pytest.approx(roc_auc_score(preds.y_true == 1, preds.p_nodule), abs=1e-12)
    html = (bundle_dir / "report.html").read_text()
    shown = re.search(r'id="pooled-auroc">([0-9.]+)<', html).group(1)
    assert shown == f"{value:.3f}"
    assert f"{value:.3f} [{pooled['ci_low'].item():.3f}, {pooled['ci_high'].item():.3f}]" in html


def test_operating_point_agrees_with_predictions_csv(bundle_dir, records, summary):
    preds = pd.read_csv(bundle_dir / "predictions.csv")
    thr = {r["fold"]: r["threshold"] for r in summary["operating_points"]}
    np.testing.assert_allclose(preds.threshold, preds.fold.map(thr))
    np.testing.assert_array_equal(preds.y_pred_op, (preds.p_nodule >= preds.threshold).astype(float))
    y = preds.y_true == 1
    sens = records[(records.scope == "pooled") & (records.metric == "sensitivity")]["value"].item()
    assert sens == pytest.approx((preds.y_pred_op[y] == 1).mean())


def test_segmentation_cases_against_monai(bundle_dir, synthetic_run, records):
    seg = pd.read_csv(bundle_dir / "seg_cases.csv")
    run = load_run(synthetic_run)
    row = run.predictions[run.predictions.y_true == 1].iloc[0]
    pred = np.asarray(nib.load(synthetic_run / row.seg_path).dataobj)
    ref = np.asarray(nib.load(row["mask"]).dataobj)
    expected = compute_dice(
        torch.as_tensor(pred > 0)[None, None].float(), torch.as_tensor(ref > 0)[None, None].float()
    ).item()

    got = seg.set_index("case_id").loc[row.case_id, "dice"]
    assert got == pytest.approx(expected, abs=1e-6)
    pooled = records[
        (records.scope == "pooled") & (records.metric == "dice") & (records["class"] == "nodule")
    ]
    assert pooled["value"].item() == pytest.approx(seg.dice.mean())
    assert pooled["n"].item() == seg.dice.notna().sum()


def test_no_patient_identifier_or_path_in_the_bundle(bundle_dir, synthetic_run):
    ids = [patient_id(i) for i in range(36)]  # 30 in cross-validation, 6 in the test split
    data_root = str(synthetic_run.parent.parent / "data")
    for name in ("report.html", "summary.json", "predictions.csv", "seg_cases.csv", "cohort.csv"):
        text = (bundle_dir / name).read_text()
        assert not any(pid in text for pid in ids), name
        assert data_root not in text, f"{name} holds a source file path"
    preds = pd.read_csv(bundle_dir / "predictions.csv")
    assert "patient_id" not in preds.columns and "image" not in preds.columns
    # pseudonymous keys keep the clustering: one key per patient
    run = load_run(synthetic_run)
    assert preds.patient_key.nunique() == run.predictions.patient_id.nunique()
    assert preds.groupby("patient_key").case_id.apply(lambda c: c.str[:7].nunique()).eq(1).all()


def test_report_is_self_contained(bundle_dir):
    html = (bundle_dir / "report.html").read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "url(" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for heading in (
        "Cohort",
        "Split audit",
        "Operating points",
        "Subgroups",
        "Segmentation",
        "Worst cases",
        "CLAIM 2024 and TRIPOD+AI",
        "Provenance",
    ):
        assert heading in html, heading
    assert "configuration sha256" in html and "medres git commit" in html


def test_case_ids_that_hold_patient_ids_are_replaced_by_keys(tmp_path):
    run_dir = write_synthetic_run(
        tmp_path, with_seg=False, case_ids_with_patient_id=True, bootstrap_resamples=100
    )
    run = load_run(run_dir)
    out = tmp_path / "bundle"
    build_bundle(run, out)
    for name in ("report.html", "summary.json", "predictions.csv", "cohort.csv"):
        text = (out / name).read_text()
        assert "SECRETPAT" not in text, name
    preds = pd.read_csv(out / "predictions.csv")
    assert "case_id" not in preds.columns and preds.case_key.str.match(r"case-\d{4}$").all()
    keys = pd.read_csv(out / "private" / "case_keys.csv")
    assert set(keys.case_id) == set(run.predictions.case_id)
    assert "case-0001" in keys.case_key.tolist()
    assert "private/case_keys.csv" in (out / "report.html").read_text()


def test_infinite_values_are_told_apart_from_undefined_ones_in_summary_json():
    import json
    import math

    from medres.report.bundle import _json_record

    rows = [{"metric": "lr_positive", "value": math.inf, "note": "infinite: no false positives"},
            {"metric": "lr_positive", "value": math.nan, "note": "undefined: no case called positive (0/0)"},
            {"metric": "lr_negative", "value": 0.25, "note": ""}]
    back = json.loads(json.dumps([_json_record(r) for r in rows], allow_nan=False))
    assert [(r["value"], r["value_nonfinite"]) for r in back] == [(None, "inf"), (None, "nan"), (0.25, None)]
    assert float(back[0]["value_nonfinite"]) == math.inf


def test_summary_json_records_say_which_values_are_not_finite(summary):
    for r in summary["records"]:
        assert (r["value"] is None) == (r["value_nonfinite"] is not None)
