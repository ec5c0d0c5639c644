"""One case of a manifest as a typed, read-only record.

:class:`Case` is what ``medres.data.pipeline.datasets.manifest_to_records`` returns and what training and
inference read. It is also a read-only mapping (``case["case_id"]``, ``case.get("row")``) over
:meth:`Case.as_item`, the one dict form of a case that MONAI's dictionary transforms and the datasets use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "RECORD_KEYS", "as_cases"]

#: The keys of a record that are not subgroup columns (UIDs are identifiers, never copied to predictions).
RECORD_KEYS = ("case_id", "patient_id", "image", "mask", "label", "row", "fold", "study_uid", "series_uid")
_OPTIONAL = ("row", "fold", "study_uid", "series_uid")  # in the item only where the case has them


class _Extras(Mapping[str, Any]):
    """A read-only, picklable mapping of a case's other manifest columns (in the manifest's order)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<{len(self._data)} extra column(s)>"  # values may be patient data: never shown

    def __getstate__(self) -> dict[str, Any]:
        return self._data

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data = state


@dataclass(frozen=True, eq=True)
class Case(Mapping[str, Any]):
    """One scan of a manifest.

    Attributes:
        case_id: the manifest's case id (text).
        patient_id: the patient's id (text; "" when unknown). Folds are split by it.
        image: a path, or a tuple of paths (one channel each) when ``data.image_columns`` names several.
        mask: the reference mask's path, or None.
        label: index into ``data.labels``; -1 when unknown.
        row: the 1-based manifest data row (None for a case not from a manifest).
        fold, study_uid, series_uid: the manifest's cells as text (None where the manifest has no such
            column).
        extras: every other column (subgroups: site, scanner, sex, ...), read-only, in the manifest's order.
    """

    case_id: str
    image: str | tuple[str, ...]
    patient_id: str = field(default="", repr=False)
    mask: str | None = None
    label: int = -1
    row: int | None = None
    fold: str | None = None
    study_uid: str | None = field(default=None, repr=False)
    series_uid: str | None = field(default=None, repr=False)
    extras: Mapping[str, Any] = field(default_factory=_Extras, repr=False)

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, (str, os.PathLike)):
            object.__setattr__(self, "image", tuple(image))
        if not isinstance(self.extras, _Extras):
            object.__setattr__(self, "extras", _Extras(self.extras))

    @property
    def images(self) -> list[str]:
        """The image path(s) as a list, one per channel."""
        return [self.image] if isinstance(self.image, (str, os.PathLike)) else list(self.image)

    def as_item(self) -> dict[str, Any]:
        """The case as a fresh dict: what MONAI's dict transforms and ``CaseDataset`` read. Keys:
        ``case_id, patient_id, image`` (a path, or a list of paths), ``mask, label``, then ``row``,
        ``fold``, ``study_uid``, ``series_uid`` where the case has them, then the extra columns."""
        item: dict[str, Any] = {"case_id": self.case_id, "patient_id": self.patient_id,
                                "image": self.image if isinstance(self.image, (str, os.PathLike))
                                else list(self.image),
                                "mask": self.mask, "label": self.label}
        item.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        item.update(self.extras)
        return item

    @classmethod
    def from_mapping(cls, record: Mapping[str, Any]) -> Case:
        """A Case from a dict record (``case_id`` and ``image`` at least); keys other than
        :data:`RECORD_KEYS` become ``extras``, unchanged. A Case is returned as it is."""
        if isinstance(record, Case):
            return record
        label = record.get("label", -1)
        image = record["image"]
        return cls(case_id=str(record["case_id"]), patient_id=str(record.get("patient_id", "") or ""),
                   image=image if isinstance(image, (str, os.PathLike)) else tuple(image),
                   mask=record.get("mask") or None, label=int(-1 if label is None else label),
                   row=record.get("row"), fold=record.get("fold"), study_uid=record.get("study_uid"),
                   series_uid=record.get("series_uid"),
                   extras={k: v for k, v in record.items() if k not in RECORD_KEYS})

    # the read-only mapping over as_item(), for code that reads records as dicts
    def __getitem__(self, key: str) -> Any:
        return self.as_item()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_item())

    def __len__(self) -> int:
        return len(self.as_item())


def as_cases(records: Iterable[Case | Mapping[str, Any]]) -> list[Case]:
    """Cases from Cases or dict records (see :meth:`Case.from_mapping`)."""
    return [Case.from_mapping(r) for r in records]
