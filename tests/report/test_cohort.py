"""The cohort table and the split audit: counts right, failures shown, no patient id in either."""

from __future__ import annotations

import pandas as pd

from medres.report import cohort_table, load_run, split_audit
from tests.report.synthetic_run import patient_id


def test_cohort_table_counts(synthetic_run):
    run = load_run(synthetic_run)
    table = cohort_table(run.predictions, run.labels)
    preds = run.predictions
    assert list(table.columns) == ["fold 0", "fold 1", "fold 2", "all"]
    for f in range(3):
        part = preds[preds.fold == f]
        col = table[f"fold {f}"]
        assert col["patients"] == str(part.patient_id.nunique())
        assert col["scans"] == str(len(part))
        k = int((part.site == "north").sum())
        assert col["site: north, n (%)"].startswith(f"{k} (")
    ages = pd.to_numeric(preds.age)
    assert table.loc["age (years), median [IQR]", "all"].startswith(f"{ages.median():.0f} [")
    assert table.loc["scans", "all"] == str(len(preds))
    assert not any(patient_id(i) in table.to_csv() for i in range(30))


def test_split_audit_passes_on_a_clean_run_and_fails_on_leakage(synthetic_run):
    run = load_run(synthetic_run)
    audit = split_audit(run.predictions, run.folds, run.inner_val)
    assert audit.passed.all(), audit
    leaked = run.predictions.copy()
    # one patient's second scan is held out in another fold
    idx = leaked.index[leaked.case_id == "case000_1"]
    leaked.loc[idx, "fold"] = (leaked.loc[idx, "fold"] + 1) % 3
    inner = pd.concat([run.inner_val, leaked[leaked.fold == 0].head(1)])
    audit = split_audit(leaked, run.folds, inner).set_index("check")
    assert not audit.loc["no patient in two held-out folds", "passed"]
    assert audit.loc["no patient in two held-out folds", "detail"].startswith("1 of 30 patients")
    assert not audit.loc["folds.csv agrees with the predictions", "passed"]
    assert not audit.loc["thresholds chosen on patients outside the held-out fold", "passed"]
    assert patient_id(0) not in audit.to_csv()
