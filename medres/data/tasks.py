"""The targets of the configuration's tasks, read from the manifest's cells (``medres.config.tasks``).

Cells are text (``read_manifest``). Binary and multi-label columns hold ``0``/``1`` (``0.0``/``1.0`` as
CheXpert writes them), ``-1`` for uncertain (read as the task's ``uncertain`` policy says: unknown,
1 or 0) and blank for unknown; a binary task with ``classes`` holds those two names. Multi-class
columns hold class names, regression columns finite numbers. An unknown target leaves the case out of
that task's loss and metrics only. Every bad cell is a ``DataError`` naming the manifest row (data rows
count from 1, as in ``medres.data.manifest``), the column, the task and what to write instead; all of
them are reported at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medres.config.tasks import (
    AnyTask,
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    RegressionTask,
    uncertain_policy,
)
from medres.errors import ConfigError, DataError, DataErrors, did_you_mean

__all__ = ["TaskTargets", "TaskTable", "parse_task_targets", "manifest_rows"]

_MAX_ERRORS = 50  # cells listed in one error; the count says how many more
_DATE = re.compile(r"\d{4}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


@dataclass(frozen=True)
class TaskTargets:
    """One task's targets, one row per manifest row.

    Attributes:
        task: the task's configuration.
        columns: the manifest columns read, in order (one, except for multi-label tasks).
        values: ``float64`` of shape (rows, len(columns)): 0/1 (binary, multi-label; after the
            ``uncertain`` policy), the class index (multi-class) or the number (regression); NaN = unknown.
        uncertain: bool, same shape: the cell held ``-1`` (whatever the policy made of it).
    """

    task: AnyTask
    columns: tuple[str, ...]
    values: np.ndarray
    uncertain: np.ndarray

    @property
    def known(self) -> np.ndarray:
        """bool (rows, columns): the cell gives a target."""
        return ~np.isnan(self.values)

    def counts(self) -> pd.DataFrame:
        """Per column: ``known``, ``unknown`` (blank or ignored uncertain), ``uncertain`` (``-1`` cells),
        ``positive`` (binary and multi-label; NaN otherwise)."""
        known = self.known.sum(axis=0)
        positive = (np.nansum(self.values, axis=0) if isinstance(self.task, (BinaryTask, MultilabelTask))
                    else np.full(len(self.columns), np.nan))
        return pd.DataFrame({
            "task": self.task.name, "type": self.task.type, "column": list(self.columns),
            "known": known.astype(int), "unknown": (len(self.values) - known).astype(int),
            "uncertain": self.uncertain.sum(axis=0).astype(int), "positive": positive,
        })


@dataclass(frozen=True)
class TaskTable:
    """Every task's targets for one manifest; ``case_ids`` and ``rows`` (1-based manifest rows) align with
    the arrays' rows."""

    case_ids: tuple[str, ...]
    rows: tuple[int, ...]
    tasks: dict[str, TaskTargets] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TaskTargets:
        return self.tasks[name]

    def counts(self) -> pd.DataFrame:
        """Known / unknown / uncertain / positive cells per task and column (for the report)."""
        frames = [t.counts() for t in self.tasks.values()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["task", "type", "column", "known", "unknown", "uncertain", "positive"])


def manifest_rows(df: pd.DataFrame) -> list[int]:
    """1-based manifest data rows of ``df``'s rows: the index label + 1 for the integer index
    ``read_manifest`` gives (so a filtered frame keeps its rows), else the position + 1."""
    if pd.api.types.is_integer_dtype(df.index):
        return [int(i) + 1 for i in df.index]
    return list(range(1, len(df) + 1))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_task_targets(df: pd.DataFrame, tasks: Sequence[AnyTask], *,
                       path: str | None = None) -> TaskTable:
    """Read every task's targets from the manifest ``df`` (every column text, as ``read_manifest``
    gives it).

    Args:
        df: the manifest.
        tasks: the configuration's tasks (``cfg.tasks``; ``effective_tasks(cfg)``).
        path: the manifest file named in errors (default: ``df.attrs["manifest"]``).

    Raises:
        DataError / DataErrors: a task's column is missing; a cell of a 0/1 column that is not 0, 1, -1
            or blank; a class name not in ``classes``; a regression cell that is not a number or not
            finite. Each names the row, the column and the task.
        ConfigError: ``uncertain: ones`` / ``zeros`` with nothing to map: a column named in an
            ``uncertain`` mapping, or every column of a task given one policy, holds no ``-1``.
    """
    path = path if path is not None else df.attrs.get("manifest")
    rows = manifest_rows(df)
    cases = df["case_id"].astype(str).tolist() if "case_id" in df.columns else [None] * len(df)
    missing = [DataError(f"task {t.name!r} reads column {c!r}, which the manifest lacks", path=path,
                         hint="".join(f"did you mean {m!r}? " for m in did_you_mean(c, df.columns))
                         + f"add the column, or fix tasks.{i} in the configuration")
               for i, t in enumerate(tasks) for c in t.target_columns() if c not in df.columns]
    if missing:
        raise missing[0] if len(missing) == 1 else DataErrors(missing, path=path)
    problems: list[DataError] = []
    bad = 0
    out: dict[str, TaskTargets] = {}
    for task in tasks:
        columns = task.target_columns()
        values = np.full((len(df), len(columns)), np.nan)
        uncertain = np.zeros((len(df), len(columns)), dtype=bool)
        for j, col in enumerate(columns):
            cells = df[col].fillna("").astype(str).str.strip().to_numpy()
            read = {text: _cell(task, text) for text in pd.unique(cells) if text}  # few distinct cells
            wrong = [text for text, (_, why, _) in read.items() if why]
            for k in np.flatnonzero(pd.Series(cells).isin(wrong).to_numpy()):
                bad += 1
                if len(problems) < _MAX_ERRORS:
                    _, why, hint = read[cells[k]]
                    problems.append(DataError(f"task {task.name!r}, column {col!r}: {why}", path=path,
                                              row=rows[k], case_id=cases[k], hint=hint))
            if isinstance(task, (BinaryTask, MultilabelTask)):
                uncertain[:, j] = [bool(t) and read[t][0] == -1.0 for t in cells]
                mapped = {"ignore": math.nan, "ones": 1.0, "zeros": 0.0}[uncertain_policy(task, col)]
                read = {t: (mapped, "", "") if v == -1.0 else (v, w, h) for t, (v, w, h) in read.items()}
            values[:, j] = [read[t][0] if t else math.nan for t in cells]
        out[task.name] = TaskTargets(task=task, columns=tuple(columns), values=values, uncertain=uncertain)
    if problems:
        if bad > len(problems):
            problems.append(DataError(f"... and {bad - len(problems)} more bad cell(s)", path=path,
                                      hint="fix the cells listed, then check again"))
        raise problems[0] if len(problems) == 1 else DataErrors(problems, path=path)
    for i, task in enumerate(tasks):
        _check_uncertain(i, task, out[task.name])
    return TaskTable(case_ids=tuple(str(c) for c in cases), rows=tuple(rows), tasks=out)


def _shown(text: str, close: bool = False) -> str:
    """The cell as quoted text when it cannot be a name or a date (a number, a short code such as ``yes``
    or ``n/a``, a near miss of a class name); else only its length: a wrong column can hold anything."""
    if close or len(text) <= 4 or (_number(text) is not None and not _DATE.search(text)):
        return repr(text[:40])
    return f"a text of {len(text)} characters (not shown)"


def _cell(task: AnyTask, text: str) -> tuple[float, str, str]:
    """(value, what is wrong or "", what to do) for one non-blank cell."""
    if isinstance(task, RegressionTask):
        number = _number(text)
        if number is None:
            return math.nan, f"{_shown(text)} is not a number", (
                "write a number with a '.' for decimals (no units, no thousands separator), or leave the "
                "cell blank when unknown")
        if not math.isfinite(number):
            return math.nan, f"{_shown(text)} is not a finite number", "leave the cell blank when unknown"
        return number, "", ""
    classes = getattr(task, "classes", None)
    if isinstance(task, MulticlassTask) or classes is not None:
        if text in classes:
            return float(classes.index(text)), "", ""
        close = did_you_mean(text, classes)
        return math.nan, f"{_shown(text, bool(close))} is not one of the classes {list(classes)}", (
            f"did you mean {close[0]!r}? " if close else "") + "leave the cell blank when unknown"
    number = _number(text)
    if number not in (0.0, 1.0, -1.0):
        return math.nan, f"{_shown(text)} is not 0, 1, -1 (uncertain) or blank (unknown)", (
            "write 1 for present, 0 for absent, -1 for uncertain, or leave the cell blank when unknown")
    return float(number), "", ""


def _check_uncertain(i: int, task: AnyTask, targets: TaskTargets) -> None:
    """ConfigError where ``uncertain`` maps -1 cells that do not exist: probably a mistaken setting."""
    policy = getattr(task, "uncertain", "ignore")
    has = targets.uncertain.any(axis=0)
    if isinstance(policy, dict):
        for col, rule in policy.items():
            if rule != "ignore" and not has[targets.columns.index(col)]:
                raise ConfigError(f"task {task.name!r}: uncertain maps -1 cells of column {col!r} to "
                                  f"{rule}, but the column holds no -1", field=f"tasks.{i}.uncertain.{col}",
                                  hint="remove the entry (or check that the manifest marks uncertain "
                                       "findings with -1)")
    elif policy != "ignore" and not has.any():
        which = f"column {targets.columns[0]!r} holds no -1" if len(targets.columns) == 1 else \
            f"none of its columns {list(targets.columns)} holds a -1"
        raise ConfigError(f"task {task.name!r}: uncertain: {policy} maps -1 cells, but {which}",
                          field=f"tasks.{i}.uncertain",
                          hint="set uncertain: ignore (or check that the manifest marks uncertain findings "
                               "with -1)")
