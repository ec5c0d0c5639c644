"""A prediction as a DICOM Structured Report (highdicom ``Comprehensive3DSR``, TID 1500 Measurement Report).

What a viewer and a PACS query can use: per class the finding with its calibrated probability and the
operating point's decision (present / absent), per segment of the DICOM SEG medres wrote the volume in
mL measured from the predicted mask (referencing that segment and the source series), the algorithm's
name, version and model hash, and the source series and the SEG as evidence. It belongs to the source
study (patient and study modules copied from the source, as the SEG's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.errors import DataError

__all__ = ["write_prediction_sr", "mask_volumes_ml", "PROBABILITY"]

# DICOM has no code for "the calibrated probability a classifier gives a class": a private scheme, named
PROBABILITY = ("CALPROB", "99MEDRES", "Calibrated probability")


def mask_volumes_ml(labels: np.ndarray, affine: np.ndarray, n_labels: int) -> dict[int, float]:
    """``{label: volume in mL}`` for labels 1..n_labels-1 of a label map with a voxel-to-mm affine."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    counts = np.bincount(np.asarray(labels).astype(np.int64).ravel(), minlength=n_labels)
    return {k: float(counts[k]) * voxel_mm3 / 1000.0 for k in range(1, n_labels)}


def write_prediction_sr(seg: Dataset, source_datasets: Sequence[Dataset], probabilities: Mapping[str, float],
                        decision: str | None, volumes_ml: Mapping[int, float], out_path: str | Path, *,
                        algorithm_version: str, model_hash: str, algorithm_name: str = "medres",
                        series_number: int = 9902) -> Path:
    """Write the TID 1500 SR of one case.

    Args:
        seg: the case's DICOM SEG (as written by :func:`medres.data.dicom_objects.seg_write.write_dicom_seg`).
        source_datasets: the source series' headers (the SEG's source).
        probabilities: ``{class name: calibrated probability}`` of the classes reported.
        decision: the class called at the operating point (``y_pred``), or None.
        volumes_ml: ``{segment number: mL}`` of the predicted mask.
        out_path: the ``.dcm`` to write (atomically).
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
