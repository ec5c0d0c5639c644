"""Predictions back to the PACS: ``python -m medres.predict ... --push URL`` (STOW-RS) or
``--push-dimse HOST:PORT`` (C-STORE).

For each DICOM input, the DICOM SEG that predict writes (``seg/<name>.dcm``) and a DICOM SR
(``seg/<name>.sr.dcm``, :mod:`medres.data.dicom_objects.sr`) are sent. Before each object is sent, the
server is
asked whether it already holds that SOPInstanceUID (QIDO-RS or C-FIND at instance level), so a push
that failed part way is rerun without duplicating what arrived. The outcome of every object is written
to ``push.csv`` beside ``predictions.csv`` (file, kind, status, reason: no patient field).
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medres.errors import ConfigError, DataError, MedresError

if TYPE_CHECKING:  # predict imports this module for its options: --help stays free of pydicom/numpy
    from pydicom.dataset import Dataset

__all__ = ["PushResult", "push_objects", "add_push_arguments", "check_push_arguments", "push_predictions",
           "write_prediction_srs"]

log = logging.getLogger("medres.data.pacs")


class Target(Protocol):
    name: str

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool: ...
    def store(self, datasets: Sequence[Dataset], where: str = "") -> None: ...


@dataclass
class PushResult:
    file: str  # relative to the prediction folder
    kind: str  # SEG / SR
    status: str  # "stored", "already on the server", "failed"
    reason: str = ""


def push_objects(paths: Sequence[Path], target: Target, *, relative_to: Path) -> list[PushResult]:
    """Send each DICOM file in ``paths`` unless the server holds its SOPInstanceUID already."""
    import pydicom

    results = []
    for path in paths:
        rel = str(path.relative_to(relative_to)) if path.is_relative_to(relative_to) else path.name
        ds = pydicom.dcmread(path)
        kind = str(ds.get("Modality", "") or "?")
        where = f"{kind} {rel}"
        try:
            uids = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            if target.has_instance(*uids):
                results.append(PushResult(rel, kind, "already on the server"))
                continue
            target.store([ds], where=where)
            results.append(PushResult(rel, kind, "stored"))
        except DataError as err:
            log.warning("push of %s to %s failed: %s", where, target.name, err.reason)
            results.append(PushResult(rel, kind, "failed", err.reason))
    return results


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    """predict's ``--push`` / ``--push-dimse`` options (credentials never on the command line)."""
    g = p.add_argument_group("push to a PACS (the DICOM SEG and SR of each DICOM input)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--push", metavar="URL", help="a DICOMweb root: STOW-RS (credentials: --credentials "
                                                  "FILE, $MEDRES_PACS_USER/$MEDRES_PACS_PASSWORD, "
                                                  "$MEDRES_PACS_TOKEN, ~/.netrc)")
    one.add_argument("--push-dimse", metavar="HOST:PORT", help="a DIMSE storage SCP: C-STORE")
    g.add_argument("--called-aet", default="ANY-SCP", help="with --push-dimse: the PACS's AE title")
    g.add_argument("--calling-aet", default="MEDRES", help="with --push-dimse: medres's AE title")
    g.add_argument("--credentials", metavar="FILE", help="with --push: user=/password= or token= (mode 0600)")
    g.add_argument("--ca-bundle", metavar="PEM", help="with --push: the CAs of the server's certificate")
    g.add_argument("--insecure", action="store_true", help="with --push: do not verify TLS (warned)")


def _target(args: argparse.Namespace) -> Target:
    if args.push:
        from medres.data.pacs.auth import read_credentials
        from medres.data.pacs.dicomweb import DicomWeb

        return DicomWeb(args.push, read_credentials(args.credentials), ca_bundle=args.ca_bundle,
                        insecure=args.insecure)
    from medres.data.pacs.dimse import Dimse

    return Dimse(args.push_dimse, called_aet=args.called_aet, calling_aet=args.calling_aet)


def _case_srs(table: Any, seg_dir: Path, labels: Sequence[str],
              mask_labels: Sequence[str] | Mapping[int, str], model_hash: str, relative_to: Path, *,
              layout: Any = None, calibrations: Sequence[Mapping | None] = ()
              ) -> list[Path]:
    """The SEG and a TID 1500 SR of each case that has a SEG, in table order: the single head's finding
    of ``labels``, or with a ``tasks:`` configuration's ``layout`` (``TaskLayout``) each task's findings
    instead, the labels' decisions at the members' ``calibrations``' operating points."""
    import nibabel as nib
    import numpy as np
    import pydicom

    from medres import __version__
    from medres.data.dicom_objects.sr import (
        mask_volumes_ml,
        single_label_finding,
        task_findings,
        write_prediction_sr,
    )
    from medres.data.readers.source_series import series_in_folder, source_series
    from medres.layout import case_file_stems

    if isinstance(mask_labels, Mapping):
        mask_labels = [str(mask_labels[k]) for k in sorted(mask_labels, key=int)]
    records = [r for r in table.to_dict("records") if isinstance(r.get("seg_path"), str) and r["seg_path"]]
    tasks = layout is not None and not layout.single_head  # the binary / multiclass class is a task's finding
    stems = case_file_stems(records)
    objects: list[Path] = []
    for rec in records:
        seg_path = seg_dir / f"{stems[str(rec['case_id'])]}.dcm"
        if not seg_path.is_file():
            continue  # not a DICOM source
        source = Path(str(rec["image"]))
        grid = series_in_folder(source) if source.is_dir() else source_series([source], where=source)
        nifti = Path(rec["seg_path"])
        nifti = nifti if nifti.is_absolute() else relative_to / nifti
        mask = nib.load(nifti)
        volumes = mask_volumes_ml(np.asarray(mask.dataobj), mask.affine, len(mask_labels))
        probs, decision = ({}, None) if tasks else single_label_finding(rec, labels)
        sr_path = seg_path.with_name(f"{seg_path.stem}.sr.dcm")
        write_prediction_sr(pydicom.dcmread(seg_path), grid.datasets, probs, decision, volumes, sr_path,
                            algorithm_version=__version__, model_hash=model_hash,
                            findings=task_findings(rec, layout, calibrations))
        objects += [seg_path, sr_path]
    return objects


def check_push_arguments(args: argparse.Namespace) -> None:
    """Refuse a push that cannot work before anything is predicted: ``--no-masks`` (no SEG), a bad URL,
    address or AE title, an unreadable or open credentials file."""
    if args.no_masks:
        raise ConfigError("--push sends the predicted masks (DICOM SEG), but --no-masks writes none",
                          hint="leave out --no-masks")
    _target(args)


def push_predictions(args: argparse.Namespace, table: Any, out: Path, labels: Sequence[str],
                     mask_labels: Sequence[str] | Mapping[int, str], model_file: Path, *,
                     layout: Any = None, calibrations: Sequence[Mapping | None] = ()
                     ) -> list[PushResult]:
    """predict's hook: write each DICOM case's SR beside its SEG, push both, write ``push.csv``.

    Raises:
        DataError: some object did not arrive (listed in ``push.csv``; rerun to send only those).
    """
    from medres.data.dicom_objects.seg_write import file_sha256

    check_push_arguments(args)
    target = _target(args)
    objects = _case_srs(table, out / "seg", labels, mask_labels, file_sha256(model_file), out, layout=layout,
                        calibrations=calibrations)
    if not objects:
        log.warning("--push: no input is a DICOM series, so there is no DICOM SEG or SR to send")
    return _push_and_record(objects, target, out)


def write_prediction_srs(table: Any, out: Path, labels: Sequence[str],
                         mask_labels: Sequence[str] | Mapping[int, str], model_file: Path, *,
                         layout: Any = None, calibrations: Sequence[Mapping | None] = ()
                         ) -> list[Path]:
    """predict ``--sr``: write each DICOM case's SR beside its SEG (``seg/<name>.sr.dcm``) without pushing."""
    from medres.data.dicom_objects.seg_write import file_sha256

    objects = _case_srs(table, out / "seg", labels, mask_labels, file_sha256(model_file), out, layout=layout,
                        calibrations=calibrations)
    srs = [p for p in objects if p.name.endswith(".sr.dcm")]
    log.info("%d DICOM SR(s) beside the SEGs in %s", len(srs), out / "seg")
    if not srs:
        log.warning("--sr: no input is a DICOM series, so there is no DICOM SEG to report on")
    return srs


def _push_and_record(objects: Sequence[Path], target: Target, out: Path) -> list[PushResult]:
    results = push_objects(objects, target, relative_to=out)
    with open(out / "push.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "kind", "status", "reason"])
        writer.writerows([[r.file, r.kind, r.status, r.reason] for r in results])
    failed = [r for r in results if r.status == "failed"]
    log.info("pushed to %s: %d stored, %d already there, %d failed (push.csv)", target.name,
             sum(r.status == "stored" for r in results), sum(r.status.startswith("already") for r in results),
             len(failed))
    if failed:
        reasons = "; ".join(sorted({r.reason for r in failed}))
        raise DataError(f"{len(failed)} of {len(results)} object(s) did not arrive ({reasons}); each is "
                        f"listed in {out / 'push.csv'}", path=target.name,
                        hint=f"fix the cause named there and rerun: python -m medres.data.pacs.push "
                             f"--predictions {out} with the same --push/--push-dimse (what arrived is not "
                             "sent again)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medres.data.pacs.push --predictions DIR --push URL``: (re)send the SEG and SR files a
    ``medres.predict`` run wrote into ``DIR/seg/``, skipping what the server holds already."""
    import sys

    p = argparse.ArgumentParser(prog="python -m medres.data.pacs.push", description=main.__doc__)
    p.add_argument("--predictions", required=True, help="the --output folder of python -m medres.predict")
    add_push_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not (args.push or args.push_dimse):
            raise ConfigError("say where to push", hint="--push URL (DICOMweb) or --push-dimse HOST:PORT")
        out = Path(args.predictions)
        objects = sorted((out / "seg").glob("*.dcm"))
        if not objects:
            raise DataError("holds no DICOM SEG or SR (seg/*.dcm)", path=out,
                            hint="pass the --output folder of a predict run with --push on DICOM inputs")
        from medres.files import claim_outputs

        target = _target(args)
        with claim_outputs(out, ["push.csv"], what="--predictions folder"):  # a push.csv of its own only
            _push_and_record(objects, target, out)
    except MedresError as err:
        print(f"medres push: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
