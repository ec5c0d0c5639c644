"""A prediction as a DICOM Structured Report (highdicom ``Comprehensive3DSR``, TID 1500 Measurement Report).

What a viewer and a PACS query can use: per class the finding with its calibrated probability and the
operating point's decision (present / absent), per segment of the DICOM SEG medres wrote the volume in
mL measured from the predicted mask (referencing that segment and the source series), the algorithm's
name, version and model hash, and the source series and the SEG as evidence. It belongs to the source
study (patient and study modules copied from the source, as the SEG's).

With ``tasks:`` (:func:`task_findings`) each task adds its findings, one measurement group each with the
task as its finding category: for the binary or multiclass task the single head's finding
(:func:`single_label_finding`: the positive class of a binary task, named by its column when its cells are
0/1, or each class of a multiclass task, with its calibrated probability and present / absent as the class
called at the operating point, ``y_pred``); per multilabel column the label as the finding, its calibrated
probability and, where the model holds an operating point for it, the decision present / absent
(probability >= threshold; for a fold ensemble the mean of the folds' thresholds, as for the single-label
class); per regression task its value in the task's unit (UCUM) with the prediction interval as the lower
and upper measurement uncertainty (TID 310: value - low, high - value), its nominal level in the group's
tracking identifier.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.errors import DataError

if TYPE_CHECKING:
    from medres.config.tasks import TaskLayout

__all__ = ["write_prediction_sr", "mask_volumes_ml", "PROBABILITY", "LabelFinding", "ClassFinding",
           "ValueFinding", "task_findings", "single_label_finding", "private_code", "ucum_unit"]

# DICOM has no code for "the calibrated probability a classifier gives a class": a private scheme, named
PROBABILITY = ("CALPROB", "99MEDRES", "Calibrated probability")
_SCHEME = "99MEDRES"


@dataclass(frozen=True)
class LabelFinding:
    """A multilabel column of one case: its calibrated probability and the operating point's threshold
    (None: the model holds none, so no decision is reported)."""

    task: str
    label: str
    probability: float
    threshold: float | None = None

    @property
    def present(self) -> bool | None:
        return None if self.threshold is None else bool(self.probability >= self.threshold)


@dataclass(frozen=True)
class ClassFinding:
    """A class of a binary or multiclass task of one case: its calibrated probability and whether it is
    the class called at the operating point (None: no class was called, so no decision is reported)."""

    task: str
    label: str
    probability: float
    present: bool | None = None


@dataclass(frozen=True)
class ValueFinding:
    """A regression task's value of one case in ``unit``, with its prediction interval ``[low, high]``
    (None or non-finite: no interval) of nominal coverage ``level``."""

    task: str
    column: str
    value: float
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    level: float | None = None


def private_code(name: str) -> tuple[str, str, str]:
    """``(value, scheme, meaning)`` of a medres name in the private scheme: the name itself when it fits
    a code value (16 characters), else its first 7 characters and a digest of the whole (no two names
    share a code)."""
    name = str(name)
    value = name if len(name) <= 16 else f"{name[:7]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return value, _SCHEME, name[:64]


def ucum_unit(unit: str | None) -> Any:
    """The UCUM code of a task's unit: pydicom's UCUM code whose code, meaning or name the unit is
    (``mm``, ``ratio``, ``%``, ...), ``1`` without a unit, else the unit as a UCUM annotation
    (``{bpm}``: a count of what the annotation says)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if unit is None or not str(unit).strip():
        return codes.UCUM.NoUnits
    text = str(unit).strip()
    aliases = {"ml": "mL", "l": "L", "hu": "[hnsf'U]", "years": "a", "year": "a", "bpm": "/min"}
    want = aliases.get(text.lower(), text)
    more = {"mL": "milliliter", "L": "liter", "g": "gram", "kg": "kilogram"}  # UCUM codes pydicom lacks
    if want in more:
        return hd.sr.CodedConcept(value=want, scheme_designator="UCUM", meaning=more[want])
    for name in codes.UCUM.dir():
        code = getattr(codes.UCUM, name)
        if want == code.value or want.lower() in (code.meaning.lower(), name.lower()):
            return code
    annotation = re.sub(r"[^!-z|~]", "_", text)[:62]  # printable ASCII without '{' and '}'
    return hd.sr.CodedConcept(value=f"{{{annotation}}}", scheme_designator="UCUM", meaning=text[:64])


def _mean_threshold(calibrations: Sequence[Mapping[str, Any] | None], task: str, label: str) -> float | None:
    """The members' operating point for one multilabel column (the mean of theirs; None when one has none)."""
    thr = []
    for cal in calibrations:
        entry = ((((cal or {}).get("tasks") or {}).get(task) or {}).get("columns") or {}).get(label) or {}
        t = entry.get("threshold", (entry.get("operating_point") or {}).get("threshold"))
        if t is None or not math.isfinite(float(t)):
            return None
        thr.append(float(t))
    return float(np.mean(thr)) if thr else None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def single_label_finding(row: Mapping[str, Any], classes: Sequence[str]
                         ) -> tuple[dict[str, float], str | None]:
    """The single-label finding of one predictions row as the SR reports it: ``{class: p_<class>}`` of the
    classes in the row (a binary task: its positive class, the last, alone) and the class called at the
    operating point (``y_pred``, an index into ``classes``; None when it is -1 or missing)."""
    classes = [str(c) for c in classes]
    probs = {c: float(row[f"p_{c}"]) for c in classes if f"p_{c}" in row}
    if len(classes) == 2:  # a binary task: the finding is the positive class
        probs = {classes[-1]: probs[classes[-1]]} if classes[-1] in probs else probs
    y_pred = int(row.get("y_pred", -1)) if str(row.get("y_pred", "")).lstrip("-").isdigit() else -1
    return probs, classes[y_pred] if 0 <= y_pred < len(classes) else None


def task_findings(row: Mapping[str, Any], layout: TaskLayout | None,
                  calibrations: Sequence[Mapping[str, Any] | None] = ()
                  ) -> list[LabelFinding | ClassFinding | ValueFinding]:
    """The findings of one predictions row for each task of a ``tasks:`` configuration's ``layout``
    (:func:`medres.config.tasks.task_layout`; none without ``tasks:``, whose single head the SR reports
    as before): the binary / multiclass task's classes (``p_<class>``, ``y_pred``; a 0/1 task's positive
    class named by its column), each multilabel column (``p_<c>``, its threshold from the members'
    ``calibration["tasks"]``), each regression task (``pred_<t>``, ``pred_<t>_lo`` / ``_hi``).

    Raises:
        DataError: the row lacks a task's prediction column (a table predicted with another configuration).
    """
    out: list[LabelFinding | ClassFinding | ValueFinding] = []
    if layout is None or layout.single_head:
        return out
    for slot in layout:
        task = slot.task
        if slot.type == "regression":
            names = {task.column: f"pred_{task.name}"}
        else:  # a single-label task's classes or a multilabel task's columns
            names = {c: f"p_{c}" for c in slot.classes}
        missing = [n for n in names.values() if _finite(row.get(n)) is None]
        if missing:
            raise DataError(f"task {task.name!r}: a case's predictions have no finite {missing[0]} for the "
                            "DICOM SR", hint="predict again with this model's configuration")
        if slot.single_label:
            probs, decision = single_label_finding(row, slot.classes)
            named = task.column if slot.type == "binary" and task.classes is None else None  # 0/1 cells
            out += [ClassFinding(task.name, named or c, p, None if decision is None else decision == c)
                    for c, p in probs.items()]
        elif slot.type == "multilabel":
            out += [LabelFinding(task.name, c, float(row[n]), _mean_threshold(calibrations, task.name, c))
                    for c, n in names.items()]
        else:
            t = task.name
            out.append(ValueFinding(t, task.column, float(row[f"pred_{t}"]), task.unit,
                                    _finite(row.get(f"pred_{t}_lo")), _finite(row.get(f"pred_{t}_hi")),
                                    float(task.interval)))
    return out


def mask_volumes_ml(labels: np.ndarray, affine: np.ndarray, n_labels: int) -> dict[int, float]:
    """``{label: volume in mL}`` for labels 1..n_labels-1 of a label map with a voxel-to-mm affine."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    counts = np.bincount(np.asarray(labels).astype(np.int64).ravel(), minlength=n_labels)
    return {k: float(counts[k]) * voxel_mm3 / 1000.0 for k in range(1, n_labels)}


def write_prediction_sr(seg: Dataset, source_datasets: Sequence[Dataset], probabilities: Mapping[str, float],
                        decision: str | None, volumes_ml: Mapping[int, float], out_path: str | Path, *,
                        algorithm_version: str, model_hash: str, algorithm_name: str = "medres",
                        series_number: int = 9902,
                        findings: Sequence[LabelFinding | ClassFinding | ValueFinding] = ()) -> Path:
    """Write the TID 1500 SR of one case.

    Args:
        seg: the case's DICOM SEG (as written by :func:`medres.data.dicom_objects.seg_write.write_dicom_seg`).
        source_datasets: the source series' headers (the SEG's source).
        probabilities: ``{class name: calibrated probability}`` of the classes reported.
        decision: the class called at the operating point (``y_pred``), or None.
        volumes_ml: ``{segment number: mL}`` of the predicted mask.
        out_path: the ``.dcm`` to write (atomically).
        findings: with ``tasks:``, each task's findings (:func:`task_findings`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out_path = Path(out_path)
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=str(algorithm_version),
                                              parameters=[f"model_sha256={model_hash}"])
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=algorithm_name,
                                                       manufacturer_name="medres", model_name=algorithm_name)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    source = source_datasets[0]
    groups: list = []
    prob_code = hd.sr.CodedConcept(*PROBABILITY)
    for name, p in probabilities.items():
        finding = hd.sr.CodedConcept(value=str(name)[:16], scheme_designator="99MEDRES",
                                     meaning=str(name)[:64])
        evaluations = []
        if decision is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=finding, value=codes.SCT.Present if decision == name else codes.SCT.Absent))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                         identifier=f"{name} (whole scan)"[:64]),
            finding_type=finding, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=prob_code, value=float(p), unit=codes.UCUM.NoUnits,
                                            algorithm_id=algorithm)],
            qualitative_evaluations=evaluations or None))
    groups += _task_groups(findings, algorithm)
    ml = hd.sr.CodedConcept(value="mL", scheme_designator="UCUM", meaning="milliliter")
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        kind = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0])
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"segment {number} {item.SegmentLabel}"[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(source.SeriesInstanceUID))),
            finding_type=kind, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=float(volumes_ml.get(number, 0.0)),
                                            unit=ml, algorithm_id=algorithm)]))
    try:
        with quiet_pydicom():
            procedure = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
                         "PT": codes.LN.PETUnspecifiedBodyRegion, "NM": codes.LN.NMUnspecifiedBodyRegion
                         }.get(str(source.get("Modality", "")), codes.SCT.ImagingProcedure)
            report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=procedure,
                                             imaging_measurements=groups)
            sr = hd.sr.Comprehensive3DSR(
                evidence=[*source_datasets, seg], content=report, series_instance_uid=hd.UID(),
                series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
                manufacturer="medres", is_complete=True, series_description=f"{algorithm_name} report"[:64])
    except Exception as exc:  # highdicom raises ValueError/TypeError on header problems of the source
        raise DataError(f"the DICOM SR could not be built ({safe_message(exc)})", path=out_path,
                        hint="check the source series' headers") from None
    scheme = Dataset()  # the private coding scheme of the probability and class codes, declared
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = "99MEDRES", "medres codes"
    scheme.CodingSchemeResponsibleOrganization = "medres"
    sr.CodingSchemeIdentificationSequence = [scheme]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    sr.save_as(tmp, enforce_file_format=True)
    tmp.replace(out_path)
    return out_path


def _task_groups(findings: Sequence[LabelFinding | ClassFinding | ValueFinding], algorithm: Any) -> list:
    """One TID 1501 measurement group per reported class of a binary / multiclass task, per multilabel
    column and per regression task (module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups = []
    prob_code = hd.sr.CodedConcept(*PROBABILITY)
    for f in findings:
        category = hd.sr.CodedConcept(*private_code(f.task))
        if isinstance(f, (LabelFinding, ClassFinding)):
            finding = hd.sr.CodedConcept(*private_code(f.label))
            evaluations = None if f.present is None else [hd.sr.QualitativeEvaluation(
                name=finding, value=codes.SCT.Present if f.present else codes.SCT.Absent)]
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                             identifier=f"{f.task}: {f.label}"[:64]),
                finding_type=finding, finding_category=category, algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(name=prob_code, value=float(f.probability),
                                                unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
                qualitative_evaluations=evaluations))
            continue
        target = hd.sr.CodedConcept(*private_code(f.column))
        bounded = f.low is not None and f.high is not None and math.isfinite(f.low) and math.isfinite(f.high)
        properties = hd.sr.MeasurementProperties(
            lower_measurement_uncertainty=max(0.0, float(f.value - f.low)),
            upper_measurement_uncertainty=max(0.0, float(f.high - f.value))) if bounded else None
        level = f" ({f.level:.0%} interval)" if bounded and f.level is not None else ""
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{f.task}{level}"[:64]),
            finding_type=target, finding_category=category, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=target, value=float(f.value), unit=ucum_unit(f.unit),
                                            algorithm_id=algorithm, properties=properties)]))
    return groups
