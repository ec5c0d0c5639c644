"""What may leave a run folder: pseudonymous patient keys, safe case names, allow-listed columns."""

from __future__ import annotations

import pandas as pd

from medres.report.cohort import SPACING_COLUMNS

__all__ = ["KNOWN_SUBGROUPS", "pseudonymise", "case_labels", "export_predictions"]

KNOWN_SUBGROUPS = ("site", "scanner", "sex", "age", "age_band")


def pseudonymise(ids: pd.Series, prefix: str = "patient-") -> pd.Series:
    """Replace ids by ``patient-0001``, ``patient-0002``, ... in order of first appearance."""
    codes, _ = pd.factorize(ids)
    return pd.Series([f"{prefix}{c + 1:04d}" for c in codes], index=ids.index)


def case_labels(predictions: pd.DataFrame) -> tuple[dict[str, str], bool]:
    """How the report names cases: by case id, unless a case id contains (or is) its patient id.

    Returns ``{case_id: label}`` and whether the case ids are shown. When a case id would reveal
    a patient id (e.g. ``P0001_S1`` for patient ``P0001``) every case is named ``case-0001`` ... instead.
    """
    cids = predictions["case_id"].astype(str)
    pids = predictions["patient_id"].astype(str)
    unsafe = any(p and p in c for c, p in zip(cids, pids)) or bool(set(cids) & set(pids))
    if not unsafe:
        return dict(zip(cids, cids)), True
    return dict(zip(cids, pseudonymise(cids, "case-"))), False


def export_predictions(
    df: pd.DataFrame, config_subgroups: list[str], keys: pd.Series, labels: dict[str, str], ids_shown: bool
) -> pd.DataFrame:
    """An allow-listed copy for sharing: no patient ids, no file paths, no unknown free-text columns
    except those the configuration names as subgroups; case ids replaced by keys when unsafe."""
    keep = ["fold", "y_true"] + [c for c in df.columns if c.startswith("p_")]
    keep += ["y_pred", "y_pred_argmax", "threshold", "y_pred_op", "conformal_set"]
    keep += [c for c in (*KNOWN_SUBGROUPS, *config_subgroups, *SPACING_COLUMNS) if c in df.columns]
    out = df[[c for c in dict.fromkeys(keep) if c in df.columns]].copy()
    out.insert(0, "case_id" if ids_shown else "case_key", df["case_id"].map(labels).to_numpy())
    out.insert(1, "patient_key", keys.to_numpy())
    return out
