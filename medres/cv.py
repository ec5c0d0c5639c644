"""Cross-validation by patient: stratified group folds, an editable split file, a leakage audit.

Every scan of a patient lands in the same fold, so no patient is ever on both sides of a split
(plain ``KFold`` over scans puts about half the patients there, docs/reference.md §4). Folds are drawn
with scikit-learn's ``StratifiedGroupKFold`` (shuffle, ``random_state=seed``) over the scans, grouped
by ``patient_id`` and stratified by the *patient's* label: a patient whose scans carry different labels
(a normal baseline and a follow-up with a nodule) is stratified on the highest label in vocabulary
order, so put the abnormal class last in ``data.labels``. Rows with ``split=test`` are held out of every
fold (``split_test``). Ids are compared as text: ``00123`` and ``123`` are two patients.

Two more designs (``cv.strategy``, `make_cv_folds`): **leave-group-out** (`make_group_folds`): fold k
holds out every patient of the k-th value (in text order) of a manifest column such as ``site``, so each
fold is an external validation on an unseen group; a patient under two values is an error. **Temporal**
(`make_temporal_folds`): expanding windows on a year or ISO-date column the user provides; a patient
belongs to the period of their *first* scan (their entry into the cohort), so all their scans stay on one
side of every cutoff; patients before the first cutoff have fold ``-1`` (always training, never held out)
and fold k trains only on patients of earlier periods (`fold_split` with ``expanding=True``).

With the configuration's ``tasks:`` (``medres.config.tasks``) patient folds are stratified on every
task jointly instead: each patient gets one row of indicators, a finding positive if any of their scans
is (binary and multi-label columns), their class (multi-class, the highest index like the single head)
and the quantile bin of their mean (regression), and the patients are dealt to folds by iterative
stratification (Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011; the ``iterative-stratification``
package), so each finding's prevalence is about equal in every fold. Patients never split, as above.

``folds.csv`` (``patient_id,fold``) is the split file: written with every run, editable, and validated
when read back (``read_folds``). ``audit_folds`` checks a manifest against it before any training.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from medres.errors import DataError, DataErrors

if TYPE_CHECKING:
    from medres.config import Config
    from medres.config.tasks import AnyTask
    from medres.data.records import Case

__all__ = [
    "split_test", "make_folds", "make_group_folds", "make_temporal_folds", "make_cv_folds", "time_keys",
    "folds_table", "write_folds", "read_folds", "fold_split", "audit_folds", "inner_validation_split",
    "FoldData", "fold_data", "TRAIN_ONLY", "task_strata",
]

_UNLABELLED = -1
#: The ``fold`` of a patient who is in every fold's training set and never held out (temporal: before
#: the first cutoff).
TRAIN_ONLY = -1


def _rows(df: pd.DataFrame, mask: Iterable[bool] | None = None) -> list[int]:
    """1-based manifest data rows (index label + 1 for the integer index read_manifest gives)."""
    index = df.index if mask is None else df.index[np.asarray(mask, dtype=bool)]
    if pd.api.types.is_integer_dtype(index):
        return [int(i) + 1 for i in index]
    positions = np.arange(len(df)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    return [int(p) + 1 for p in positions]


def _ids(df: pd.DataFrame, col: str) -> pd.Series:
    """The id column as text, refusing numbers (which merge 00123 and 123) and blanks."""
    if col not in df.columns:
        raise DataError(f"the manifest has no {col!r} column", hint=f"add a {col} column (text ids)")
    ids = df[col]
    if pd.api.types.is_numeric_dtype(ids):
        raise DataError(f"column {col!r} was read as numbers, which merges ids such as '00123' and '123'",
                        hint="read the manifest with medres.data.read_manifest (dtype=str, "
                             "keep_default_na=False)")
    ids = ids.astype(str)
    blank = (ids.str.strip() == "") | df[col].isna().to_numpy()
    if blank.any():
        raise DataError(f"{int(blank.sum())} row(s) have no {col}: rows {_rows(df, blank)[:10]}",
                        hint=f"every scan needs its {col}")
    return ids


def split_test(df: pd.DataFrame, *, split_col: str = "split") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(development rows, test rows): rows with ``split == "test"`` are held out of every fold."""
    if split_col not in df.columns:
        return df, df.iloc[:0]
    split = df[split_col].astype(str).str.strip().str.lower()
    bad = ~split.isin(["", "train", "test", "nan"])
    if bad.any():
        raise DataError(f"unknown {split_col} value(s) {sorted(set(df[split_col][bad]))[:5]} in rows "
                        f"{_rows(df, bad)[:10]}", hint="use 'train', 'test' or leave it empty")
    test = (split == "test").to_numpy()
    return df[~test], df[test]


def _label_rank(labels: pd.Series, vocabulary: Sequence[str] | None) -> np.ndarray:
    """Integer rank of each row's label (-1 unlabelled): vocabulary index, else number, else sorted text."""
    text = labels.astype(str).str.strip()
    empty = text.isin(["", "nan", "None", "-1"]) | labels.isna().to_numpy()
    if vocabulary is not None:
        index = {name: i for i, name in enumerate(vocabulary)}
        unknown = ~empty & ~text.isin(list(index))
        if unknown.any():
            raise DataError(f"label(s) {sorted(set(text[unknown]))[:5]} are not in the vocabulary "
                            f"{list(vocabulary)}", hint="fix the rows or data.labels")
        return np.array([_UNLABELLED if e else index[t] for t, e in zip(text, empty)], dtype=int)
    numbers = pd.to_numeric(text.where(~empty), errors="coerce")
    if numbers[~empty].notna().all():
        return np.where(empty, _UNLABELLED, numbers.fillna(_UNLABELLED)).astype(int)
    order = {name: i for i, name in enumerate(sorted(set(text[~empty])))}
    return np.array([_UNLABELLED if e else order[t] for t, e in zip(text, empty)], dtype=int)


def _patient_strata(df: pd.DataFrame, label_col: str, group_col: str,
                    labels: Sequence[str] | None) -> tuple[pd.Series, pd.Series]:
    """(patient ids per row, each row's stratum = its patient's highest label)."""
    ids = _ids(df, group_col)
    if label_col not in df.columns:
        rank = np.full(len(df), _UNLABELLED)
    else:
        rank = _label_rank(df[label_col], labels)
    per_patient = pd.Series(rank, index=df.index).groupby(ids.to_numpy()).transform("max")
    return ids, per_patient


def make_folds(df: pd.DataFrame, *, n_folds: int = 5, seed: int = 0, label_col: str = "label",
               group_col: str = "patient_id", labels: Sequence[str] | None = None,
               split_col: str = "split", tasks: Sequence[AnyTask] | None = None) -> pd.DataFrame:
    """Assign every development patient to one of ``n_folds`` folds.

    Args:
        df: the manifest (one row per scan, ids as text).
        labels: the class vocabulary (``data.labels``) giving the label order for mixed-label patients;
            without it labels are ranked as numbers, or else alphabetically.
        tasks: the configuration's tasks (``cfg.tasks``): stratify on all of them jointly
            (:func:`task_strata`, iterative stratification) instead of on ``label_col``.

    Returns:
        ``folds.csv``'s table: ``patient_id`` (text), ``fold`` (int, 0..n_folds-1), sorted by patient.
        Test patients (``split=test``) are not in it; they are in ``result.attrs["test_patients"]``
        and ``split_test(df)``.

    Raises:
        DataError: fewer patients than folds, or a class (a task's finding or class) with fewer
        patients than folds.
    """
    dev, test = split_test(df, split_col=split_col)
    test_ids = sorted(set(_ids(test, group_col))) if len(test) else []
    if len(dev) == 0:
        raise DataError("no development rows: every row has split=test", hint="mark some rows split=train")
    if tasks is not None:
        out = _task_folds(dev, tasks, n_splits=n_folds, seed=seed, group_col=group_col)
        out.attrs["test_patients"] = test_ids
        return out
    dev = dev.assign(**{"_pid": _ids(dev, group_col)}).sort_values("_pid", kind="stable")
    ids, strata = _patient_strata(dev, label_col, group_col, labels)
    patients = pd.DataFrame({"patient_id": ids.to_numpy(), "stratum": strata.to_numpy()}).drop_duplicates()
    if len(patients) < n_folds:
        raise DataError(f"{len(patients)} patients cannot fill {n_folds} folds",
                        hint="lower cv.folds or add patients")
    counts = patients["stratum"].value_counts()
    short = counts[(counts < n_folds) & (counts.index >= 0)]  # a few unlabelled patients are fine
    if len(short):
        names = {s: (labels[s] if labels is not None and s >= 0 else ("unlabelled" if s < 0 else s))
                 for s in short.index}
        detail = ", ".join(f"{names[s]!r}: {int(n)} patient(s)" for s, n in short.items())
        raise DataError(f"a class has fewer patients than folds ({detail}; cv.folds={n_folds}), so some "
                        "folds would hold none of it", hint="lower cv.folds or add patients of that class")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(dev), -1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(dev)), strata.to_numpy(), ids.to_numpy()))
    for k, (_, held) in enumerate(splits):
        fold[held] = k
    out = (pd.DataFrame({"patient_id": ids.to_numpy(), "fold": fold}).drop_duplicates("patient_id")
           .sort_values("patient_id", kind="stable").reset_index(drop=True))
    out.attrs["test_patients"] = test_ids
    return out


def _development(df: pd.DataFrame, group_col: str, split_col: str) -> tuple[pd.DataFrame, list[str]]:
    """(development rows, sorted test patient ids); DataError when every row is a test row."""
    dev, test = split_test(df, split_col=split_col)
    test_ids = sorted(set(_ids(test, group_col))) if len(test) else []
    if len(dev) == 0:
        raise DataError("no development rows: every row has split=test", hint="mark some rows split=train")
    return dev, test_ids


def _blank(values: pd.Series) -> np.ndarray:
    text = values.astype(str).str.strip()
    return (text.isin(["", "nan", "None", "NaT"]) | values.isna()).to_numpy()


def _column(df: pd.DataFrame, col: str, setting: str) -> None:
    if col not in df.columns:
        raise DataError(f"the manifest has no {col!r} column, which {setting} names",
                        hint=f"add the column, or set {setting} to one of {list(df.columns)}")


def make_group_folds(df: pd.DataFrame, *, group_col: str = "site", patient_col: str = "patient_id",
                     split_col: str = "split") -> pd.DataFrame:
    """Leave-one-group-out folds: fold k holds out every patient whose rows carry the k-th value (in text
    order) of ``group_col``; there are as many folds as values among the development rows.

    Returns:
        ``folds.csv``'s table (``patient_id``, ``fold``) sorted by patient, with ``attrs["groups"]`` the
        group value of each fold and ``attrs["test_patients"]`` as `make_folds` gives it.

    Raises:
        DataError: no such column; development rows without a value (naming the rows); a patient whose
        rows carry two values (naming the rows; such a patient would be trained on and held out at
        once); fewer than 2 groups.
    """
    _column(df, group_col, "cv.group_column")
    dev, test_ids = _development(df, patient_col, split_col)
    ids = _ids(dev, patient_col)
    blank = _blank(dev[group_col])
    if blank.any():
        raise DataError(f"{int(blank.sum())} development row(s) have no {group_col}: rows "
                        f"{_rows(dev, blank)[:10]}",
                        hint=f"leave-group-out needs every development scan's {group_col} (or mark the "
                             "row split=test)")
    groups = dev[group_col].astype(str).str.strip()
    frame = pd.DataFrame({"pid": ids.to_numpy(), "g": groups.to_numpy(), "row": _rows(dev)})
    spread = frame.groupby("pid", sort=True)["g"].nunique()
    problems = [DataError(f"rows {sorted(frame.loc[frame['pid'] == pid, 'row'])} are one patient's scans "
                          f"under {int(spread[pid])} different {group_col} values: that patient would be "
                          "trained on and held out at once",
                          hint=f"give each patient one {group_col} (or fix the patient_id)")
                for pid in spread.index[spread > 1]]
    if problems:
        raise problems[0] if len(problems) == 1 else DataErrors(problems)
    names = sorted(set(groups))
    if len(names) < 2:
        raise DataError(f"the development rows hold {len(names)} {group_col} value(s): leave-group-out needs "
                        "at least 2", hint="use cv.strategy patient, or another cv.group_column")
    fold_of = {g: k for k, g in enumerate(names)}
    out = (pd.DataFrame({"patient_id": ids.to_numpy(), "fold": groups.map(fold_of).to_numpy(dtype=int)})
           .drop_duplicates("patient_id").sort_values("patient_id", kind="stable").reset_index(drop=True))
    out.attrs["groups"] = names
    out.attrs["test_patients"] = test_ids
    return out


def time_keys(values: pd.Series | Sequence[Any]) -> pd.Series:
    """Each value as a point in time: a 4-digit year is its 1 January, anything else an ISO 8601 date
    (``2019-05-03``, ``2019-05``, with or without a time; a time zone is dropped); NaT where neither."""
    text = pd.Series(values).astype(str).str.strip()
    year = text.str.fullmatch(r"\d{4}")
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    out[year] = pd.to_datetime(text[year] + "-01-01", format="%Y-%m-%d")
    rest = ~year & ~text.isin(["", "nan", "None", "NaT"])
    if rest.any():
        parsed = pd.to_datetime(text[rest], format="ISO8601", errors="coerce", utc=True)
        out[rest] = parsed.dt.tz_localize(None)
    return out


def make_temporal_folds(df: pd.DataFrame, *, time_col: str, cutoffs: Sequence[int | str],
                        patient_col: str = "patient_id", split_col: str = "split") -> pd.DataFrame:
    """Expanding-window temporal folds on ``time_col`` (a year or ISO date per scan, user-provided).

    A patient's time is their first scan's: they belong to one period, so no patient is on both sides of
    a cutoff (their later scans go with them; ``attrs["straddling_patients"]`` counts such patients).
    With cutoffs c_0 < ... < c_{K-1}, fold k holds out the patients first scanned in [c_k, c_{k+1}) (the
    last fold: from c_{K-1} on) and trains on every patient first scanned before c_k (`fold_split` with
    ``expanding=True``); patients before c_0 have fold ``TRAIN_ONLY`` (-1). The values themselves are
    never shown: errors name rows.

    Raises:
        DataError: no such column; rows whose value is neither a year nor an ISO date (naming the rows);
        no patient before the first cutoff; a period with no patient.
    """
    _column(df, time_col, "cv.time_column")
    dev, test_ids = _development(df, patient_col, split_col)
    ids = _ids(dev, patient_col)
    when = time_keys(dev[time_col]).set_axis(dev.index)
    bad = when.isna().to_numpy()
    if bad.any():
        raise DataError(f"{int(bad.sum())} development row(s) have a {time_col} that is neither a year "
                        f"(2019) nor an ISO date (2019-05-03): rows {_rows(dev, bad)[:10]}",
                        hint=f"give every development scan its {time_col} (or mark the row split=test)")
    cut = time_keys([str(c) for c in cutoffs]).to_numpy()
    if np.isnat(cut).any() or len(cut) == 0 or (np.diff(cut) <= np.timedelta64(0)).any():
        raise DataError(f"cv.temporal_cutoffs {list(cutoffs)} must be increasing years or ISO dates")
    per = pd.DataFrame({"pid": ids.to_numpy(), "t": when.to_numpy()}).groupby("pid", sort=True)["t"]
    first, last = per.min(), per.max()
    period = np.searchsorted(cut, first.to_numpy(), side="right") - 1
    straddling = int((np.searchsorted(cut, last.to_numpy(), side="right") - 1 != period).sum())
    counts = np.bincount(period + 1, minlength=len(cut) + 1)
    if counts[0] == 0:
        raise DataError(f"no development patient is first scanned before the first cutoff "
                        f"({cutoffs[0]}): the first fold would have nothing to train on",
                        hint="move the first of cv.temporal_cutoffs later")
    empty = [k for k in range(len(cut)) if counts[k + 1] == 0]
    if empty:
        k = empty[0]
        until = f" and before {cutoffs[k + 1]}" if k + 1 < len(cut) else ""
        raise DataError(f"no development patient is first scanned from {cutoffs[k]}{until}: fold {k} would "
                        "hold out nobody", hint="remove that cutoff from cv.temporal_cutoffs")
    out = pd.DataFrame({"patient_id": first.index.astype(str), "fold": period.astype(int)})
    out = out.sort_values("patient_id", kind="stable").reset_index(drop=True)
    out.attrs["straddling_patients"] = straddling
    out.attrs["test_patients"] = test_ids
    return out


def make_cv_folds(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The folds ``cfg.cv.strategy`` asks for: `make_folds` (``patient``), `make_group_folds`
    (``leave_group_out``) or `make_temporal_folds` (``temporal``)."""
    cv = cfg.cv
    if cv.strategy == "leave_group_out":
        return make_group_folds(df, group_col=cv.group_column)
    if cv.strategy == "temporal":
        return make_temporal_folds(df, time_col=str(cv.time_column), cutoffs=cv.temporal_cutoffs)
    return make_folds(df, n_folds=cv.folds, seed=cv.seed, labels=cfg.data.labels, tasks=cfg.tasks)


def task_strata(df: pd.DataFrame, tasks: Sequence[AnyTask], *, n_folds: int,
                group_col: str = "patient_id", strict: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """One row per patient (sorted by id) of 0/1 stratification indicators over ``tasks``, and the
    rows' patient ids.

    Columns: ``<task>:<column>`` = any of the patient's scans positive (binary, multi-label; unknown
    counts as negative); ``<task>:<class>`` = the patient's class (multi-class: the highest class index
    among their scans); ``<task>:bin<k>`` = the quantile bin of the patient's mean (regression:
    ``min(10, known patients // (2 n_folds))`` equal bins by rank, none below 2). Cells are read by
    ``medres.data.tasks.parse_task_targets`` (its DataErrors name the row and column).

    Raises:
        DataError: a finding or class with fewer patients than ``n_folds`` (some folds would hold none);
        with ``strict=False`` a UserWarning instead.
    """
    from medres.data.tasks import parse_task_targets

    ids = _ids(df, group_col).to_numpy()
    table = parse_task_targets(df, tasks)
    patients = np.array(sorted(set(ids)), dtype=object)
    columns: dict[str, np.ndarray] = {}
    short: list[str] = []
    for task in tasks:
        targets = table[task.name]
        frame = pd.DataFrame(targets.values, columns=list(targets.columns)).groupby(ids, sort=True)
        if task.type in ("binary", "multilabel"):
            name_of = ({c: f"{task.name}:{c}" for c in targets.columns} if task.type == "multilabel"
                       else {targets.columns[0]: task.name})
            for col, flag in (frame.max() == 1).reindex(patients).items():
                columns[name_of[col]] = flag.to_numpy(dtype=bool)
        elif task.type == "multiclass":
            cls = frame.max().reindex(patients).iloc[:, 0].to_numpy()
            for k, name in enumerate(task.classes):
                columns[f"{task.name}:{name}"] = cls == k
        else:
            mean = frame.mean().reindex(patients).iloc[:, 0]
            known = mean.notna().to_numpy()
            q = min(10, int(known.sum()) // (2 * n_folds))
            if q >= 2:
                # by rank, so that tied values (a few distinct numbers) still fill q equal bins
                bins = pd.qcut(mean[known].rank(method="first"), q, labels=False).to_numpy()
                for k in range(q):
                    flag = np.zeros(len(patients), dtype=bool)
                    flag[known] = bins == k
                    columns[f"{task.name}:bin{k}"] = flag
            continue
        kind = "positive" if task.type != "multiclass" else "of class"
        short += [f"{name!r}: {int(columns[name].sum())} patient(s) {kind}" for name in columns
                  if name.split(":")[0] == task.name and columns[name].sum() < n_folds]
    if short and strict:
        raise DataError(f"a task's finding or class has fewer patients than folds ({'; '.join(short)}; "
                        f"cv.folds={n_folds}), so some folds would hold none of it",
                        hint="lower cv.folds, add patients, or leave the column out of the task")
    if short:
        warnings.warn(f"inner validation: {'; '.join(short)} in this training fold (fewer than {n_folds}), "
                      "so the validation subset may miss it", UserWarning, stacklevel=3)
    out = pd.DataFrame(columns, index=pd.Index(patients, name="patient_id"))
    return out, [str(p) for p in patients]


_TASK_FOLD_DRAWS = 10


def _unevenness(labels: np.ndarray, fold: np.ndarray, n_splits: int) -> float:
    """The largest gap between a fold's share of a stratum and the whole's, plus the largest relative
    gap between a fold's size and n / n_splits."""
    sizes = np.bincount(fold, minlength=n_splits)
    if labels.shape[1] == 0 or (sizes == 0).any():
        return float(np.abs(sizes - len(fold) / n_splits).max() / len(fold)) + (sizes == 0).any()
    shares = np.stack([labels[fold == k].mean(axis=0) for k in range(n_splits)])
    gap = np.abs(shares - labels.mean(axis=0)).max()
    return float(gap + np.abs(sizes - len(fold) / n_splits).max() / len(fold))


def _task_folds(df: pd.DataFrame, tasks: Sequence[AnyTask], *, n_splits: int, seed: int,
                group_col: str, strict: bool = True) -> pd.DataFrame:
    """Patients dealt to ``n_splits`` folds by iterative stratification on :func:`task_strata`."""
    from iterstrat.ml_stratifiers import IterativeStratification

    strata, patients = task_strata(df, tasks, n_folds=n_splits, group_col=group_col, strict=strict)
    if len(patients) < n_splits:
        raise DataError(f"{len(patients)} patients cannot fill {n_splits} folds",
                        hint="lower cv.folds or add patients")
    # each patient is placed by its rarest label, so frequent ones balance only by chance: of a few
    # seeded draws (ties broken at random, independent of row order) keep the most even one
    labels = strata.to_numpy(dtype=bool)
    rng = np.random.RandomState(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(_TASK_FOLD_DRAWS):
        order = rng.permutation(len(patients))
        fold = np.empty(len(patients), dtype=int)
        fold[order] = IterativeStratification(labels=labels[order], r=np.full(n_splits, 1 / n_splits),
                                              random_state=rng)
        score = _unevenness(labels, fold, n_splits)
        if best is None or score < best[0]:
            best = (score, fold)
    out = pd.DataFrame({"patient_id": patients, "fold": best[1]})
    out.attrs["strata"] = list(strata.columns)
    return out


def folds_table(folds: pd.DataFrame | dict[str, int]) -> pd.DataFrame:
    """Normalize a fold assignment (table or ``{patient_id: fold}``) to ``patient_id`` text, ``fold`` int."""
    if isinstance(folds, dict):
        folds = pd.DataFrame({"patient_id": list(folds), "fold": list(folds.values())})
    out = pd.DataFrame({"patient_id": folds["patient_id"].astype(str).to_numpy(),
                        "fold": folds["fold"].astype(int).to_numpy()})
    return out.sort_values(["fold", "patient_id"], kind="stable").reset_index(drop=True)


def write_folds(folds: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``folds.csv`` (``patient_id,fold``, sorted by fold then patient)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folds_table(folds).to_csv(path, index=False)
    return path


def read_folds(path: str | os.PathLike[str], *, n_folds: int | None = None) -> pd.DataFrame:
    """Read and validate an (edited) ``folds.csv``: ids as text, one fold per patient, folds 0..k-1
    (and ``-1``: a patient in every fold's training set, never held out).

    Raises:
        DataError: naming the file, the rows and the patient ids concerned.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError("folds file not found", path=path, hint="check cv.folds_file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable CSV ({e.__class__.__name__})", path=path) from None
    raw.columns = [c.strip() for c in raw.columns]
    if not {"patient_id", "fold"} <= set(raw.columns):
        raise DataError(f"columns must include patient_id and fold; found {list(raw.columns)}", path=path)
    problems: list[DataError] = []
    ids = raw["patient_id"]
    for i in np.flatnonzero(ids.str.strip() == ""):
        problems.append(DataError("empty patient_id", path=path, row=int(i) + 1))
    fold_num = pd.to_numeric(raw["fold"].str.strip(), errors="coerce")
    for i in np.flatnonzero(fold_num.isna() | (fold_num < TRAIN_ONLY) | (fold_num % 1 != 0)):
        problems.append(DataError(f"fold {raw['fold'].iloc[i]!r} is not a whole number >= 0 (or -1: "
                                  "training only, never held out)", path=path, row=int(i) + 1))
    if problems:
        raise DataErrors(problems, path=path)
    table = pd.DataFrame({"patient_id": ids.to_numpy(), "fold": fold_num.astype(int).to_numpy()})
    dup = table.duplicated("patient_id", keep=False)
    for pid, group in table[dup].groupby("patient_id"):
        rows = [int(i) + 1 for i in group.index]
        if group["fold"].nunique() > 1:
            reason = (f"patient {pid!r} is in folds {sorted(set(group['fold']))} (rows {rows}): its scans "
                      "would be on both sides of a split")
        else:
            reason = f"patient {pid!r} is listed twice (rows {rows})"
        problems.append(DataError(reason, path=path, hint="give each patient exactly one fold"))
    present = sorted(set(table["fold"]) - {TRAIN_ONLY})
    k = n_folds if n_folds is not None else (max(present) + 1 if present else 0)
    if present != list(range(k)):
        problems.append(DataError(f"folds must be 0..{k - 1}, each non-empty; found {present}", path=path,
                                  hint="renumber the folds or set cv.folds to match"))
    if problems:
        raise problems[0] if len(problems) == 1 else DataErrors(problems, path=path)
    return folds_table(table)


def fold_split(df: pd.DataFrame, folds: pd.DataFrame, fold: int, *, group_col: str = "patient_id",
               split_col: str = "split", expanding: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of one fold; test rows are in neither.

    Training rows are every other fold's; with ``expanding`` (temporal folds) only the earlier folds'
    and fold ``TRAIN_ONLY``'s, so a model never trains on a later period than the one it is tested on.
    """
    dev, _ = split_test(df, split_col=split_col)
    of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int)))
    row_fold = _ids(dev, group_col).map(of)
    if row_fold.isna().any():
        raise DataError(f"{int(row_fold.isna().sum())} row(s) have a patient not in folds.csv: rows "
                        f"{_rows(dev, row_fold.isna())[:10]}", hint="re-draw the folds or add the patients")
    held = (row_fold == fold).to_numpy()
    train = (row_fold < fold).to_numpy() if expanding else ~held
    return dev[train], dev[held]


def _shared(df: pd.DataFrame, key: str, by: pd.Series, what: str, owner: str,
            hint: str) -> list[DataError]:
    """One error per value of ``df[key]`` that maps to more than one value of ``by``."""
    out = []
    values = df[key].astype(str).str.strip()
    ok = values != ""
    frame = pd.DataFrame({"v": values[ok].to_numpy(), "by": by[ok].astype(str).to_numpy(),
                          "row": _rows(df, ok)})
    for v, group in frame.groupby("v", sort=True):
        owners = sorted(set(group["by"]))
        if len(owners) > 1:
            listed = ", ".join(repr(o) if owner == "patients " else o for o in owners)
            out.append(DataError(f"{what} {v!r} appears in {owner}{listed} (rows {sorted(group['row'])})",
                                 hint=hint))
    return out


def audit_folds(df: pd.DataFrame, folds: pd.DataFrame, *, group_col: str = "patient_id",
                study_col: str = "study_uid", split_col: str = "split") -> None:
    """Fail on leakage between folds, or between the folds and the test set.

    Checks: each patient has one fold; no patient has rows both in the test set and in the folds; every
    development patient has a fold; a study (``study_col``, when present) belongs to one patient, one
    fold, and not to both a fold and the test set; one image file is not listed under two patients.

    Raises:
        DataError (or DataErrors for several): naming the patient / study ids and the manifest rows.
    """
    problems: list[DataError] = []
    table = pd.DataFrame({"patient_id": folds["patient_id"].astype(str).to_numpy(),
                          "fold": folds["fold"].astype(int).to_numpy()})
    for pid, group in table[table.duplicated("patient_id", keep=False)].groupby("patient_id"):
        if group["fold"].nunique() > 1:
            problems.append(DataError(f"patient {pid!r} is in folds {sorted(set(group['fold']))}: its scans "
                                      "are on both sides of a split", hint="give each patient one fold"))
    of = dict(zip(table["patient_id"], table["fold"]))
    ids = _ids(df, group_col)
    dev_mask = ~df.index.isin(split_test(df, split_col=split_col)[1].index)
    # where each row sits: its fold number, or "test"
    where = pd.Series(np.where(dev_mask, ids.map(lambda p: str(of.get(p, "none"))), "test"), index=df.index)
    missing = dev_mask & (where == "none").to_numpy()
    if missing.any():
        problems.append(DataError(f"patients {sorted(set(ids[missing]))[:10]} have no fold (rows "
                                  f"{_rows(df, missing)[:10]})", hint="re-draw folds.csv or add them to it"))
    problems += _shared(df, group_col, where.map(lambda w: "test" if w == "test" else "training folds"),
                        "patient", "both ", "a patient's scans all go to the test set or all to the folds")
    tested = set(ids[~dev_mask])
    for pid in sorted(tested & set(of)):
        problems.append(DataError(f"patient {pid!r} is in the test set and in fold {of[pid]} of folds.csv",
                                  hint="remove the test patient from folds.csv"))
    if study_col in df.columns:
        problems += _shared(df, study_col, ids, "study", "patients ",
                            "a study belongs to one patient: fix the patient ids (or the study_uid)")
        problems += _shared(df, study_col, where.map(lambda w: "test" if w == "test" else f"fold {w}"),
                            "study", "", "all scans of a study must sit in one fold (or all in the test set)")
    if "image" in df.columns:
        for e in _shared(df, "image", ids, "image", "patients ", "one file, one patient"):
            rows = e.reason[e.reason.index("(rows"):]  # the path itself is not shown
            problems.append(DataError(f"one image file is listed under several patients {rows}",
                                      hint=e.hint))
    if problems:
        raise problems[0] if len(problems) == 1 else DataErrors(problems)


def inner_validation_split(train_df: pd.DataFrame, *, fraction: float, seed: int, label_col: str = "label",
                           group_col: str = "patient_id", labels: Sequence[str] | None = None,
                           tasks: Sequence[AnyTask] | None = None) -> tuple[list[str], list[str]]:
    """(training patient ids, validation patient ids) inside one training fold, grouped and stratified.

    Uses the first split of ``StratifiedGroupKFold(n_splits=round(1/fraction), shuffle=True,
    random_state=seed)``: unlike ``GroupShuffleSplit`` it keeps the class balance, which early stopping
    and threshold choice on a small validation set need. Each class needs ``n_splits`` patients to
    appear in the validation set for sure; with fewer a UserWarning says so. With ``tasks`` the first of
    ``n_splits`` folds stratified on the tasks jointly (as `make_folds`) is the validation subset.
    """
    n_splits = max(2, round(1 / fraction))
    if tasks is not None:
        if _ids(train_df, group_col).nunique() < n_splits:
            raise DataError(f"{_ids(train_df, group_col).nunique()} training patients cannot give a "
                            f"{fraction:.0%} validation subset",
                            hint="raise cv.val_fraction, lower cv.folds or add patients")
        split = _task_folds(train_df, tasks, n_splits=n_splits, seed=seed, group_col=group_col, strict=False)
        held = (split["fold"] == 0).to_numpy()
        return sorted(split["patient_id"][~held]), sorted(split["patient_id"][held])
    ids, strata = _patient_strata(train_df, label_col, group_col, labels)
    n_patients = ids.nunique()
    if n_patients < n_splits:
        raise DataError(f"{n_patients} training patients cannot give a {fraction:.0%} validation subset",
                        hint="raise cv.val_fraction, lower cv.folds or add patients")
    order = np.argsort(ids.to_numpy(), kind="stable")  # independent of the manifest's row order
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        try:
            train_idx, val_idx = next(splitter.split(np.zeros(len(ids)), strata.to_numpy()[order],
                                                     ids.to_numpy()[order]))
        except ValueError:  # every class has fewer patients than n_splits: stratifying is impossible
            warnings.warn(f"inner validation: every class has fewer than {n_splits} patients in this "
                          "training fold; the validation subset is drawn by patient without stratification",
                          UserWarning, stacklevel=2)
            shuffle = GroupShuffleSplit(n_splits=1, test_size=1 / n_splits, random_state=seed)
            train_idx, val_idx = next(shuffle.split(np.zeros(len(ids)), groups=ids.to_numpy()[order]))
    per_class = pd.Series(strata.to_numpy()).groupby(ids.to_numpy()).max().value_counts()
    if (per_class < n_splits).any():
        warnings.warn(f"inner validation: a class has fewer than {n_splits} patients in this training fold, "
                      "so the validation subset may miss it", UserWarning, stacklevel=2)
    sorted_ids = ids.to_numpy()[order]
    return sorted(set(sorted_ids[train_idx])), sorted(set(sorted_ids[val_idx]))


@dataclass
class FoldData:
    """The cases (``manifest_to_records``) of one fold's disjoint patient sets, and the test set."""

    fold: int
    train: list[Case]
    inner_val: list[Case]
    heldout: list[Case]
    test: list[Case]


def fold_data(cfg: Config, df: pd.DataFrame, folds: pd.DataFrame, k: int, test: pd.DataFrame) -> FoldData:
    """Fold ``k`` of the manifest ``df``: its training patients split again into training and inner
    validation (``cv.val_fraction``, seed ``cv.seed + k``), its held-out patients, and the test rows.
    The inner validation is drawn from the training patients only: with leave-group-out folds from the
    training groups, with temporal folds from the earlier periods."""
    from medres.data.pipeline.datasets import manifest_to_records

    train_df, held_df = fold_split(df, folds, k, expanding=cfg.cv.strategy == "temporal")
    tr_ids, val_ids = inner_validation_split(train_df, fraction=cfg.cv.val_fraction, seed=cfg.cv.seed + k,
                                             labels=cfg.data.labels, tasks=cfg.tasks)
    in_val = train_df["patient_id"].astype(str).isin(set(map(str, val_ids))).to_numpy()

    def records(frame: pd.DataFrame) -> list[Case]:
        return manifest_to_records(frame, cfg.data) if len(frame) else []

    return FoldData(fold=k, train=records(train_df[~in_val]), inner_val=records(train_df[in_val]),
                    heldout=records(held_df), test=records(test))
