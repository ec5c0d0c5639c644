"""The cohort table per fold and the split audit: counts only, never a patient identifier."""

from __future__ import annotations

import pandas as pd

from medres.report.subgroups import add_age_band

__all__ = ["cohort_table", "split_audit", "SPACING_COLUMNS"]

SPACING_COLUMNS = ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm")


def _n_pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.0f}%)" if n else "0"


def _median_iqr(x: pd.Series) -> str:
    x = x.dropna()
    if x.empty:
        return "n/a"
    q1, med, q3 = x.quantile([0.25, 0.5, 0.75])
    return f"{med:.0f} [{q1:.0f}-{q3:.0f}]"


def _median_range(x: pd.Series) -> str:
    x = pd.to_numeric(x, errors="coerce").dropna()
    if x.empty:
        return "n/a"
    return f"{x.median():.2f} [{x.min():.2f}-{x.max():.2f}]"


def _column(df: pd.DataFrame, labels: list[str]) -> dict[str, str]:
    n = len(df)
    col = {"patients": str(df["patient_id"].nunique()), "scans": str(n)}
    for i, name in enumerate(labels):
        col[f"label {name}, scans n (%)"] = _n_pct(int((df["y_true"] == i).sum()), n)
    if "age_years" in df.columns:
        col["age (years), median [IQR]"] = _median_iqr(df["age_years"])
        col["age missing, n"] = str(int(df["age_years"].isna().sum()))
    for name in ("sex", "site", "scanner"):
        if name in df.columns:
            values = df[name].astype(str).replace({"": "missing", "nan": "missing", "None": "missing"})
            for level, k in values.value_counts().sort_index().items():
                col[f"{name}: {level}, n (%)"] = _n_pct(int(k), n)
    if all(c in df.columns for c in SPACING_COLUMNS):
        inplane = pd.concat([df[SPACING_COLUMNS[0]], df[SPACING_COLUMNS[1]]])
        col["in-plane spacing (mm), median [range]"] = _median_range(inplane)
        col["slice spacing (mm), median [range]"] = _median_range(df[SPACING_COLUMNS[2]])
    return col


def cohort_table(predictions: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Characteristics of the held-out cases of every fold and of all folds together.

    Rows: patients, scans, scans per label, age median [IQR], sex, site and scanner counts, voxel
    spacing (when ``spacing_*_mm`` columns are present). Columns: ``fold 0`` .. ``fold K-1``, ``all``.
    """
    df = add_age_band(predictions)
    cols = {f"fold {int(f)}": _column(df[df["fold"] == f], labels) for f in sorted(df["fold"].unique())}
    cols["all"] = _column(df, labels)
    table = pd.DataFrame(cols).reindex(list(cols["all"]))
    for row in table.index:  # a level absent from a fold
        table.loc[row] = table.loc[row].fillna("0 (0%)" if row.endswith("n (%)") else "0")
    table.index.name = "characteristic"
    return table


def split_audit(
    predictions: pd.DataFrame, folds: pd.DataFrame, inner_val: pd.DataFrame, test: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Checks that no patient's scans cross a split; returns rows (check, passed, detail) with counts.

    A failed check is reported, not raised, so the report shows it; the details name how many
    patients are affected, never which.
    """
    rows = []
    per_patient = predictions.groupby("patient_id")["fold"].nunique()
    k = int((per_patient > 1).sum())
    rows.append(
        (
            "no patient in two held-out folds",
            k == 0,
            f"{k} of {len(per_patient)} patients have held-out scans in more than one fold",
        )
    )
    if len(folds):
        fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int)))
        mapped = predictions["patient_id"].map(fold_of)
        missing = int(mapped.isna().sum())
        wrong = int(((mapped != predictions["fold"]) & mapped.notna()).sum())
        detail = (
            f"{wrong} scans predicted in another fold than folds.csv says; "
            f"{missing} scans of patients absent from folds.csv"
        )
        if missing == len(predictions) and missing:
            n_pred = predictions["patient_id"].nunique()
            detail += (
                f": folds.csv lists {len(fold_of)} patients, none of the {n_pred} "
                "predicted, so it belongs to another cohort (a later training written into this run folder "
                "replaces it); restore the run's own folds.csv or retrain"
            )
        rows.append(("folds.csv agrees with the predictions", missing == 0 and wrong == 0, detail))
    else:
        rows.append(("folds.csv agrees with the predictions", False, "folds.csv is missing"))
    overlap = 0
    for f in predictions["fold"].unique():
        held = set(predictions.loc[predictions["fold"] == f, "patient_id"])
        overlap += len(held & set(inner_val.loc[inner_val["fold"] == f, "patient_id"]))
    rows.append(
        (
            "thresholds chosen on patients outside the held-out fold",
            overlap == 0,
            f"{overlap} patients are both in a fold's inner validation and its held-out set; "
            f"{inner_val['patient_id'].nunique()} inner-validation patients in all",
        )
    )
    dup = int(predictions["case_id"].duplicated().sum())
    rows.append(("every case held out exactly once", dup == 0, f"{dup} cases predicted more than once"))
    if test is not None and len(test):
        shared = len(set(test["patient_id"]) & set(predictions["patient_id"]))
        rows.append(
            (
                "test patients outside cross-validation",
                shared == 0,
                f"{shared} test patients also appear in the cross-validation folds",
            )
        )
    return pd.DataFrame(rows, columns=["check", "passed", "detail"])
