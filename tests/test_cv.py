"""medres.cv: patient-level folds never leak, stay stratified, and planted leakage fails the audit."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from medres.cv import (
    audit_folds,
    fold_split,
    inner_validation_split,
    make_folds,
    read_folds,
    split_test,
    write_folds,
)
from medres.errors import DataError

LABELS = ["normal", "nodule"]


def cohort(n_patients: int = 60, seed: int = 0, n_test: int = 6) -> pd.DataFrame:
    """A manifest as read_manifest gives it (all text): 1-3 scans per patient, about a third with
    nodules, some patients with a normal baseline and a nodule follow-up, ids '00123' and '123' both."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pid = f"{p:05d}" if p % 2 else str(p)  # '00001', '2', '00003', ... and below '00123' vs '123'
        if p == 7:
            pid = "00123"
        if p == 8:
            pid = "123"
        n_scans = int(rng.integers(1, 4))
        positive = p % 3 == 0
        for s in range(n_scans):
            label = "nodule" if positive and (s > 0 or n_scans == 1 or p % 2) else "normal"
            rows.append({"case_id": f"c{p}_{s}", "patient_id": pid, "label": label,
                         "study_uid": f"1.2.3.{p}.{s // 2}", "image": f"img/{p}_{s}.nii.gz",
                         "split": "test" if p >= n_patients - n_test else "train"})
    return pd.DataFrame(rows).astype(str)


def test_plain_kfold_leaks_but_our_folds_do_not():
    df = cohort()
    dev, test = split_test(df)
    leaked = set()
    for tr, te in KFold(5, shuffle=True, random_state=0).split(dev):
        leaked |= set(dev.patient_id.iloc[tr]) & set(dev.patient_id.iloc[te])
    assert len(leaked) >= 5  # the failure this module exists to prevent (docs/reference.md §4)

    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    assert list(folds.columns) == ["patient_id", "fold"]
    assert sorted(folds.patient_id) == sorted(set(dev.patient_id)) and folds.patient_id.is_unique
    assert set(folds.fold) == set(range(5))
    assert folds.attrs["test_patients"] == sorted(set(test.patient_id))
    for k in range(5):
        train, held = fold_split(df, folds, k)
        assert not set(train.patient_id) & set(held.patient_id)
        assert not set(test.patient_id) & (set(train.patient_id) | set(held.patient_id))
        assert len(train) + len(held) == len(dev)
    audit_folds(df, folds)  # no leakage: passes silently


def test_stratified_by_patient_and_deterministic():
    df = cohort(n_patients=100, n_test=0)
    folds = make_folds(df, n_folds=5, seed=3, labels=LABELS)
    positive = df.groupby("patient_id").label.agg(lambda s: "nodule" in set(s))
    share = positive.mean()
    for k in range(5):
        in_fold = folds.patient_id[folds.fold == k]
        assert abs(positive[in_fold].mean() - share) <= 0.1
        assert 15 <= len(in_fold) <= 25
    # the manifest's row order does not matter; the seed does
    shuffled = df.sample(frac=1, random_state=1)
    assert make_folds(shuffled, n_folds=5, seed=3, labels=LABELS).equals(folds)
    assert not make_folds(df, n_folds=5, seed=4, labels=LABELS).equals(folds)


def test_mixed_label_patient_is_stratified_on_its_highest_label():
    # 5 patients with only normal scans, 5 with a normal baseline and a nodule follow-up
    rows = [{"patient_id": f"p{i}", "label": lab} for i in range(10)
            for lab in (["normal"] if i < 5 else ["normal", "nodule"])]
    folds = make_folds(pd.DataFrame(rows), n_folds=5, seed=0, labels=LABELS)
    mixed = folds.patient_id.isin([f"p{i}" for i in range(5, 10)])
    assert folds[mixed].fold.value_counts().to_dict() == {k: 1 for k in range(5)}
    # without a vocabulary, text labels rank alphabetically ('nodule' < 'normal'): every patient then
    # counts as 'normal' and the 5 normal-only patients are no longer spread one per fold for sure
    counts = [make_folds(pd.DataFrame(rows), n_folds=5, seed=s)[lambda f: ~f.patient_id.isin(
        [f"p{i}" for i in range(5, 10)])].fold.nunique() for s in range(10)]
    assert min(counts) < 5


def test_ids_stay_text():
    df = cohort()
    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    assert {"00123", "123"} <= set(folds.patient_id)
    # ... through folds.csv too
    with pytest.MonkeyPatch.context() as mp, __import__("tempfile").TemporaryDirectory() as d:
        mp.chdir(d)
        back = read_folds(write_folds(folds, "folds.csv"))
    assert {"00123", "123"} <= set(back.patient_id)
    assert dict(zip(back.patient_id, back.fold)) == dict(zip(folds.patient_id, folds.fold))
    numeric = df.assign(patient_id=pd.to_numeric(df.patient_id))
    with pytest.raises(DataError, match="read as numbers"):
        make_folds(numeric)


def test_too_few_patients_or_a_rare_class():
    df = pd.DataFrame({"patient_id": ["a", "b", "c"], "label": ["normal", "nodule", "normal"]})
    with pytest.raises(DataError, match="3 patients cannot fill 5 folds") as e:
        make_folds(df, n_folds=5)
    assert "cv.folds" in e.value.hint
    df = cohort(n_patients=30, n_test=0)
    df.loc[df.patient_id.isin(["0", "00003", "6"]), "label"] = "normal"  # leave few nodule patients
    df.loc[df.label == "nodule", "label"] = "normal"
    df.loc[df.patient_id.isin(["00009", "12"]), "label"] = "nodule"
    with pytest.raises(DataError, match=r"'nodule': 2 patient\(s\); cv.folds=5"):
        make_folds(df, n_folds=5, labels=LABELS)
    # a few unlabelled patients (segmentation-only scans) are their own stratum, not an error
    few = cohort(n_patients=30, n_test=0)
    few.loc[few.patient_id.isin(["0", "00001"]), "label"] = ""
    folds = make_folds(few, n_folds=5, labels=LABELS)
    assert len(folds) == 30
    with pytest.raises(DataError, match="unknown split value"):
        make_folds(df.assign(split="validation"))


def test_edited_folds_file_with_a_patient_in_two_folds(tmp_path):
    df = cohort()
    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    path = write_folds(folds, tmp_path / "folds.csv")
    text = path.read_text()
    victim = folds.patient_id[folds.fold == 0].iloc[0]
    path.write_text(text + f"{victim},3\n")  # the same patient added to fold 3 by hand
    with pytest.raises(DataError) as e:
        read_folds(path)
    assert f"patient '{victim}' is in folds [0, 3]" in str(e.value) and e.value.path == str(path)
    with pytest.raises(DataError, match=f"patient '{victim}' is in folds \\[0, 3\\]"):
        audit_folds(df, pd.concat([folds, pd.DataFrame({"patient_id": [victim], "fold": [3]})]))
    path.write_text("patient_id,fold\na,0\nb,x\nc,2\n")
    with pytest.raises(DataError, match="row 2.*fold 'x' is not a whole number"):
        read_folds(path)
    path.write_text("patient_id,fold\na,0\nb,2\n")
    with pytest.raises(DataError, match=r"folds must be 0..2, each non-empty; found \[0, 2\]"):
        read_folds(path)


def test_study_shared_by_two_patients_fails_the_audit():
    df = cohort()
    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    a, b = (folds.patient_id[folds.fold == k].iloc[0] for k in (0, 1))
    planted = df.copy()
    row_b = planted.index[planted.patient_id == b][0]
    study = planted.loc[planted.patient_id == a, "study_uid"].iloc[0]
    planted.loc[row_b, "study_uid"] = study  # one study filed under two patient ids
    with pytest.raises(DataError) as e:
        audit_folds(planted, folds)
    message = str(e.value)
    assert f"study '{study}' appears in patients {', '.join(repr(p) for p in sorted([a, b]))}" in message
    rows = re.search(r"patients [^(]*\(rows \[([\d, ]+)\]", message).group(1)
    rows_a = {i + 1 for i in planted.index[(planted.patient_id == a) & (planted.study_uid == study)]}
    assert {int(r) for r in rows.split(",")} == rows_a | {row_b + 1}  # the manifest rows are named
    assert "study" in message and "fold 0, fold 1" in message


def test_patient_in_training_and_test_fails_the_audit():
    df = cohort()
    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    multi = df[df.split == "train"].patient_id.value_counts()
    pid = multi.index[multi >= 2][0]
    planted = df.copy()
    row = planted.index[planted.patient_id == pid][-1]
    planted.loc[row, "split"] = "test"  # one scan of a training patient moved to the test set
    with pytest.raises(DataError, match=f"patient '{pid}' appears in both test, training folds"):
        audit_folds(planted, folds)
    test_pid = folds.attrs["test_patients"][0]
    with pytest.raises(DataError, match=f"patient '{test_pid}' is in the test set and in fold 2"):
        audit_folds(df, pd.concat([folds, pd.DataFrame({"patient_id": [test_pid], "fold": [2]})]))
    planted = df.copy()
    planted.loc[planted.index[planted.patient_id == "123"], "image"] = planted.image.iloc[0]
    with pytest.raises(DataError, match="one image file is listed under several patients"):
        audit_folds(planted, folds)


def test_inner_validation_split_grouped_and_stratified():
    df = cohort(n_patients=100, n_test=0)
    folds = make_folds(df, n_folds=5, seed=0, labels=LABELS)
    train, _ = fold_split(df, folds, 0)
    tr_ids, val_ids = inner_validation_split(train, fraction=0.2, seed=0, labels=LABELS)
    assert not set(tr_ids) & set(val_ids)
    assert set(tr_ids) | set(val_ids) == set(train.patient_id)
    assert 0.15 <= len(val_ids) / train.patient_id.nunique() <= 0.25
    positive = train.groupby("patient_id").label.agg(lambda s: "nodule" in set(s))
    assert abs(positive[val_ids].mean() - positive.mean()) <= 0.1
    assert inner_validation_split(train, fraction=0.2, seed=0, labels=LABELS) == (tr_ids, val_ids)
    with pytest.raises(DataError, match="validation subset"):
        inner_validation_split(train.iloc[:3], fraction=0.2, seed=0)


def test_inner_validation_split_too_few_per_class_falls_back_to_grouped_split():
    # 4 patients, 2 per class, 3 splits asked for: stratification is impossible (scikit-learn raises);
    # medres warns and still returns a grouped split.
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(4)],
                       "patient_id": ["p1", "p2", "p3", "p4"],
                       "label": ["normal", "nodule", "normal", "nodule"]})
    with pytest.warns(UserWarning, match="without stratification"):
        tr_ids, val_ids = inner_validation_split(df, fraction=0.34, seed=0, labels=LABELS)
    assert val_ids and tr_ids and not set(tr_ids) & set(val_ids)
    assert set(tr_ids) | set(val_ids) == {"p1", "p2", "p3", "p4"}


# --- leave-group-out and temporal folds -------------------------------------------------------------------

def sited(n_per_site: int = 6) -> pd.DataFrame:
    """Three sites of patients (two scans for every third patient), two test patients from a fourth."""
    rows = []
    for s, site in enumerate(["north", "south", "east"]):
        for i in range(n_per_site):
            pid = f"{site}{i}"
            for scan in range(2 if i % 3 == 0 else 1):
                rows.append({"case_id": f"{pid}_{scan}", "patient_id": pid, "site": site,
                             "label": LABELS[i % 2], "year": str(2017 + (i + s) % 5), "split": "train"})
    for i in range(2):
        rows.append({"case_id": f"west{i}_0", "patient_id": f"west{i}", "site": "west",
                     "label": LABELS[i % 2], "year": "2022", "split": "test"})
    return pd.DataFrame(rows).astype(str)


def test_make_cv_folds_by_patient_is_make_folds_byte_for_byte(tmp_path):
    from medres.config import Config
    from medres.cv import make_cv_folds

    df = cohort()
    cfg = Config()
    cfg.data.labels = list(LABELS)
    a = write_folds(make_cv_folds(df, cfg), tmp_path / "a.csv").read_bytes()
    b = write_folds(make_folds(df, n_folds=5, seed=0, labels=LABELS), tmp_path / "b.csv").read_bytes()
    assert a == b


def test_group_folds_hold_out_one_site_each():
    from medres.cv import make_group_folds

    df = sited()
    folds = make_group_folds(df, group_col="site")
    assert folds.attrs["groups"] == ["east", "north", "south"]  # fold k = the k-th site in text order
    assert folds.attrs["test_patients"] == ["west0", "west1"]
    expected = {pid: ["east", "north", "south"].index(site)
                for pid, site in zip(df.patient_id, df.site) if site != "west"}
    assert dict(zip(folds.patient_id, folds.fold)) == expected
    audit_folds(df, folds)
    for k, site in enumerate(folds.attrs["groups"]):
        train, held = fold_split(df, folds, k)
        assert set(held.site) == {site} and site not in set(train.site) and "west" not in set(train.site)
        assert len(held) == (df.site == site).sum()
        tr_ids, val_ids = inner_validation_split(train, fraction=0.25, seed=k, labels=LABELS)
        assert set(val_ids) <= set(train.patient_id) and not set(val_ids) & set(held.patient_id)


def test_group_folds_refuse_a_patient_in_two_sites_naming_the_rows():
    from medres.cv import make_group_folds

    df = sited()
    moved = df.index[df.patient_id == "north0"][1]  # north0's second scan filed under south
    df.loc[moved, "site"] = "south"
    with pytest.raises(DataError) as e:
        make_group_folds(df, group_col="site")
    rows = sorted(int(i) + 1 for i in df.index[df.patient_id == "north0"])
    assert f"rows {rows} are one patient's scans under 2 different site values" in str(e.value)
    assert "north0" not in str(e.value)  # rows, not the patient id
    df.loc[moved, "site"] = " "
    with pytest.raises(DataError, match=rf"1 development row\(s\) have no site: rows \[{moved + 1}\]"):
        make_group_folds(df, group_col="site")
    with pytest.raises(DataError, match="no 'scanner' column, which cv.group_column names"):
        make_group_folds(df, group_col="scanner")
    with pytest.raises(DataError, match="hold 1 site value"):
        make_group_folds(sited()[lambda d: d.site.isin(["north", "west"])], group_col="site")


def temporal_manifest() -> pd.DataFrame:
    rows = [("a", "2017"), ("b", "2018-06-30"), ("c", "2019"), ("c", "2020-02-01"),  # c crosses 2020
            ("d", "2019-12-31"), ("e", "2020"), ("f", "2021-03"), ("g", "2018"), ("g", "2017-01-05")]
    df = pd.DataFrame([{"case_id": f"{p}{i}", "patient_id": p, "label": LABELS[i % 2], "year": y}
                       for i, (p, y) in enumerate(rows)])
    return df.assign(split=["train"] * len(df))


def test_temporal_folds_expanding_window_by_first_scan(tmp_path):
    from medres.cv import TRAIN_ONLY, make_temporal_folds

    df = temporal_manifest()
    folds = make_temporal_folds(df, time_col="year", cutoffs=[2019, "2020-01-01"])
    assert dict(zip(folds.patient_id, folds.fold)) == {"a": TRAIN_ONLY, "b": TRAIN_ONLY, "g": TRAIN_ONLY,
                                                       "c": 0, "d": 0, "e": 1, "f": 1}
    assert folds.attrs["straddling_patients"] == 1  # c: first scanned 2019, again in 2020; stays in fold 0
    audit_folds(df, folds)
    train, held = fold_split(df, folds, 0, expanding=True)
    assert set(train.patient_id) == {"a", "b", "g"} and set(held.patient_id) == {"c", "d"}
    train, held = fold_split(df, folds, 1, expanding=True)
    assert set(train.patient_id) == {"a", "b", "g", "c", "d"} and set(held.patient_id) == {"e", "f"}
    # folds.csv keeps the training-only patients as fold -1 and reads back the same
    back = read_folds(write_folds(folds, tmp_path / "folds.csv"))
    assert dict(zip(back.patient_id, back.fold)) == dict(zip(folds.patient_id, folds.fold))
    one = make_temporal_folds(df, time_col="year", cutoffs=[2020])  # a single cutoff: one fold
    assert sorted(one.patient_id[one.fold == 0]) == ["e", "f"]


def test_temporal_folds_errors_name_rows_not_dates():
    from medres.cv import make_temporal_folds

    df = temporal_manifest()
    df.loc[3, "year"] = "02/01/2020"
    with pytest.raises(DataError) as e:
        make_temporal_folds(df, time_col="year", cutoffs=[2019])
    assert "neither a year (2019) nor an ISO date (2019-05-03): rows [4]" in str(e.value)
    assert "02/01/2020" not in str(e.value)
    df = temporal_manifest()
    with pytest.raises(DataError, match="before the first cutoff"):
        make_temporal_folds(df, time_col="year", cutoffs=[2016])
    with pytest.raises(DataError, match="from 2022: fold 1 would hold out nobody"):
        make_temporal_folds(df, time_col="year", cutoffs=[2019, 2022])


# --- stratified on the configuration's tasks -----------------------------------------------------------

def test_folds_without_tasks_are_those_of_before():
    """The folds drawn before tasks existed, recorded from that code: same seed, same folds.csv."""
    before = {0: "110213002324211343034032440103440242143404021313321202",
              7: "431211300413333424043403122122100402231434102004120143"}
    for seed, folds in before.items():
        table = make_folds(cohort(), n_folds=5, seed=seed, labels=LABELS)
        assert "".join(map(str, table["fold"])) == folds
        assert table.equals(make_folds(cohort(), n_folds=5, seed=seed, labels=LABELS, tasks=None))


def task_cohort(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-3 scans, three co-occurring findings of 6-40% prevalence (some cells blank, one
    finding on one scan only) and a cardiothoracic ratio per scan."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        rare = rng.random() < 0.06
        effusion = rng.random() < (0.5 if rare else 0.15)
        cardio = rng.random() < 0.4
        ratio = 0.45 + 0.05 * cardio + 0.04 * rng.standard_normal()
        for s in range(int(rng.integers(1, 4))):
            rows.append({"case_id": f"c{p}_{s}", "patient_id": f"p{p:04d}",
                         "rare": str(int(rare and s == 0)),
                         "effusion": "" if rng.random() < 0.1 else str(int(effusion)),
                         "cardio": str(int(cardio)), "ctr": f"{ratio + 0.005 * s:.4f}",
                         "split": "test" if p % 25 == 0 else "train"})
    return pd.DataFrame(rows).astype(str)


TASKS = [{"name": "findings", "type": "multilabel", "columns": ["rare", "effusion", "cardio"]},
         {"name": "ratio", "type": "regression", "column": "ctr"}]


def configured(tasks: list[dict]) -> list:
    from medres.config import load_config

    return load_config({"tasks": tasks}).tasks


def per_patient(df: pd.DataFrame) -> pd.DataFrame:
    """Independent of medres: any-positive findings and mean ratio per patient, with pandas alone."""
    dev = df[df["split"] != "test"]
    numbers = dev[["rare", "effusion", "cardio", "ctr"]].replace("", np.nan).astype(float)
    return numbers.groupby(dev["patient_id"].to_numpy()).agg(
        {"rare": "max", "effusion": "max", "cardio": "max", "ctr": "mean"}).fillna({"effusion": 0})


def spread(patients: pd.DataFrame, fold: pd.Series) -> pd.Series:
    """Per finding, the largest |fold prevalence - overall prevalence|."""
    cols = ["rare", "effusion", "cardio"]
    return (patients[cols].groupby(fold).mean() - patients[cols].mean()).abs().max()


def test_folds_on_tasks_keep_every_finding_prevalence_and_the_ratio_distribution():
    df = task_cohort()
    patients = per_patient(df)
    folds = make_folds(df, n_folds=5, seed=0, tasks=configured(TASKS))
    fold = folds.set_index("patient_id")["fold"].reindex(patients.index)
    assert fold.notna().all() and set(folds["patient_id"]) == set(patients.index)
    assert sorted(folds.attrs["test_patients"]) == sorted(set(df["patient_id"][df["split"] == "test"]))
    sizes = fold.value_counts()
    assert (abs(sizes - len(patients) / 5) <= 0.05 * len(patients) / 5).all(), sizes
    stratified = spread(patients, fold)
    assert (stratified <= 2 / sizes.min()).all(), stratified  # within two patients of each fold
    # random patient folds, many seeds: stratification beats their median spread for every finding
    ids = patients.index.to_numpy()
    random = pd.DataFrame([spread(patients, pd.Series(k, index=ids)) for k in (
        np.argsort(np.random.default_rng(s).permutation(len(ids))) % 5 for s in range(20))])
    assert (stratified < random.median()).all(), (stratified, random.median())
    # the ratio: each fold's quartiles close to the whole's
    q = patients["ctr"].quantile([0.25, 0.5, 0.75])
    by_fold = patients["ctr"].groupby(fold).quantile([0.25, 0.5, 0.75]).unstack()
    assert (by_fold - q.to_numpy()).abs().max().max() < 0.01


def test_folds_on_tasks_are_deterministic_patient_level_and_pass_the_audit():
    df = task_cohort(120)
    tasks = configured(TASKS)
    a = make_folds(df, n_folds=4, seed=3, tasks=tasks)
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert a.equals(make_folds(shuffled, n_folds=4, seed=3, tasks=tasks))
    assert not a["fold"].equals(make_folds(df, n_folds=4, seed=4, tasks=tasks)["fold"])
    assert a["patient_id"].is_unique and sorted(set(a["fold"])) == [0, 1, 2, 3]
    audit_folds(df, a)


def test_make_cv_folds_passes_the_tasks():
    from medres.config import load_config
    from medres.cv import make_cv_folds

    df = task_cohort(100)
    cfg = load_config({"tasks": TASKS, "cv": {"folds": 3, "seed": 2}})
    assert make_cv_folds(df, cfg).equals(make_folds(df, n_folds=3, seed=2, tasks=cfg.tasks))


def test_a_finding_rarer_than_the_folds_is_refused_by_name():
    df = task_cohort(60)
    with pytest.raises(DataError, match=r"'findings:rare': \d patient\(s\) positive.*cv.folds=10"):
        make_folds(df, n_folds=10, seed=0, tasks=configured(TASKS))


def test_a_multiclass_task_stratifies_its_classes_beside_a_finding():
    df = task_cohort(200)
    df["grade"] = np.where(df["cardio"] == "1", "high", np.where(df["effusion"] == "1", "mid", "low"))
    tasks = configured([{"name": "grading", "type": "multiclass", "column": "grade",
                         "classes": ["low", "mid", "high"]},
                        {"name": "eff", "type": "multilabel", "columns": ["effusion"]}])
    folds = make_folds(df, n_folds=5, seed=0, tasks=tasks)  # one single-label task per configuration
    assert folds.attrs["strata"] == ["grading:low", "grading:mid", "grading:high", "eff:effusion"]
    dev = df[df["split"] != "test"]
    grade = dev.groupby("patient_id")["grade"].agg(lambda g: max(g, key=["low", "mid", "high"].index))
    fold = folds.set_index("patient_id")["fold"].reindex(grade.index)
    share = pd.crosstab(fold, grade, normalize="index")
    assert (share - grade.value_counts(normalize=True)).abs().max().max() <= 0.03


def test_inner_validation_on_tasks_is_patient_level_and_stratified():
    df = task_cohort(200)
    dev = df[df["split"] != "test"]
    train, val = inner_validation_split(dev, fraction=0.2, seed=0, tasks=configured(TASKS))
    assert not set(train) & set(val) and set(train) | set(val) == set(dev["patient_id"])
    assert abs(len(val) - 0.2 * (len(train) + len(val))) <= 1
    patients = per_patient(df)
    in_val = pd.Series(patients.index.isin(val), index=patients.index)
    assert (spread(patients, in_val) <= 0.03).all()


def test_a_regression_of_few_distinct_values_is_still_balanced():
    rows = [{"case_id": f"c{i}", "patient_id": f"p{i:02d}", "count": str(i % 2 * 2), "same": "1.5"}
            for i in range(40)]
    df = pd.DataFrame(rows)
    tasks = configured([{"name": "n", "type": "regression", "column": "count"},
                        {"name": "s", "type": "regression", "column": "same"}])
    folds = make_folds(df, n_folds=4, seed=0, tasks=tasks)
    count = df.set_index("patient_id").loc[folds["patient_id"], "count"]
    per_fold = pd.crosstab(folds["fold"].to_numpy(), count.to_numpy())
    assert (per_fold.to_numpy() >= 4).all() and (per_fold.to_numpy() <= 6).all(), per_fold
