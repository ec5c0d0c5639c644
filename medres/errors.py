"""The errors a user sees when their input is wrong.

Every problem with a user's data or configuration is raised as one of these, carrying where the
problem is (manifest row, file path or config field), what is wrong and what to do about it. No
reader's raw exception reaches a user, and no message names a patient.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from os import PathLike

__all__ = ["MedresError", "DataError", "ConfigError", "DataErrors", "did_you_mean"]

#: how close a valid name must be to a misspelt one to be suggested (``difflib`` ratio)
SUGGESTION_CUTOFF = 0.6


class MedresError(Exception):
    """Base class of medres's user-facing errors."""


class DataError(MedresError, ValueError):
    """A problem with a scan, mask or manifest row.

    Attributes:
        reason: what is wrong, in one sentence.
        path: the file or folder concerned (as given, never its contents).
        row: the manifest row (1-based data row, header excluded) or None.
        hint: what the user can do about it.
        case_id: the manifest's case id, when known (never a DICOM patient field).
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | PathLike[str] | None = None,
        row: int | None = None,
        hint: str = "",
        case_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.row = row
        self.hint = hint
        self.case_id = case_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.case_id is not None:
            where.append(f"case {self.case_id!r}")
        if self.path is not None:
            where.append(self.path)
        msg = (", ".join(where) + ": " if where else "") + self.reason
        if self.hint:
            msg += f" (hint: {self.hint})"
        return msg

    def located(self, *, row: int | None = None, case_id: str | None = None,
                path: str | PathLike[str] | None = None) -> DataError:
        """A copy of this error with the manifest row / case / path filled in where missing."""
        return type(self)(
            self.reason,
            path=self.path if self.path is not None else path,
            row=self.row if self.row is not None else row,
            hint=self.hint,
            case_id=self.case_id if self.case_id is not None else case_id,
        )

    def __reduce__(self):  # picklable across DataLoader workers
        return (_rebuild_data_error, (type(self), self.reason, self.path, self.row, self.hint, self.case_id))


def _rebuild_data_error(cls, reason, path, row, hint, case_id):  # noqa: ANN001, ANN202
    return cls(reason, path=path, row=row, hint=hint, case_id=case_id)


class DataErrors(DataError):
    """Several data problems found together (e.g. a whole manifest validated at once)."""

    def __init__(self, errors: Iterable[DataError], *, path: str | PathLike[str] | None = None) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) found:\n{lines}", path=path,
                         hint="Fix every listed row, then run again.")

    def located(self, *, row: int | None = None, case_id: str | None = None,
                path: str | PathLike[str] | None = None) -> DataErrors:
        """Each listed problem located where it lacks a row/case/path (the list keeps its own path)."""
        return DataErrors([e.located(row=row, case_id=case_id, path=path) for e in self.errors],
                          path=self.path if self.path is not None else path)

    def _message(self) -> str:
        # the overall hint on a line of its own: appended to the last listed problem, which carries its
        # own hint, it read as "(hint: ...) (hint: ...)"
        where = f"{self.path}: " if self.path is not None else ""
        return f"{where}{self.reason}" + (f"\n{self.hint}" if self.hint else "")

    def __reduce__(self):
        return (DataErrors, (self.errors, self.path))


class ConfigError(MedresError, ValueError):
    """A problem with a configuration file, a --set override or a model/option name.

    Attributes:
        reason: what is wrong.
        field: the dotted path of the setting concerned (e.g. ``train.epochs``) or None.
        hint: what to do (often: the closest valid names).
    """

    def __init__(self, reason: str, *, field: str | None = None, hint: str = "",
                 path: str | PathLike[str] | None = None) -> None:
        self.reason = reason
        self.field = field
        self.hint = hint
        self.path = None if path is None else str(path)
        where = ", ".join(x for x in (self.path, self.field) if x)
        msg = (f"{where}: " if where else "") + reason
        if hint:
            msg += f" (hint: {hint})"
        super().__init__(msg)

    def __reduce__(self):
        return (_rebuild_config_error, (self.reason, self.field, self.hint, self.path))


def _rebuild_config_error(reason, field, hint, path):  # noqa: ANN001, ANN202
    return ConfigError(reason, field=field, hint=hint, path=path)


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``word``, best first; empty when none is close. A choice equal
    to ``word`` but for case and surrounding spaces comes first; then ``difflib`` matches with the
    cut-off :data:`SUGGESTION_CUTOFF`."""
    choices = list(choices)
    folded = [c for c in choices if c.strip().casefold() == word.strip().casefold()]
    close = difflib.get_close_matches(word, choices, n=n, cutoff=SUGGESTION_CUTOFF)
    return (folded + [c for c in close if c not in folded])[:n]
