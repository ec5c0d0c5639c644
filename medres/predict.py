"""``python -m medres.predict``: a trained model on new scans -> class probabilities (CSV) and masks (NIfTI).

    python -m medres.predict --run runs/ct_chest --input scans/ --output predictions/ \\
        [--folds 0 1 2 3 4] [--tta] [--device cpu]
    python -m medres.predict --checkpoint runs/ct_chest/fold_0/checkpoint_best.pt --input ... --output ...
    python -m medres.predict --model exported/ --input ... --output ...

The model is one of:

- ``--run``: the run's fold ensemble (every fold with a checkpoint, or ``--folds``). Each window is
  passed through all fold models while in memory; ``p_<class>`` is the mean of the folds' calibrated
  class probabilities, the mask the argmax of the mean of their softmax maps, and each fold's
  probabilities are written beside them as ``p_<class>_fold<k>``;
- ``--checkpoint``: one fold's model (with its fitted calibration);
- ``--model``: a folder written by ``python -m medres.export`` (no run folder needed).

``--input`` is one of:

- a scan: a NIfTI file, a DICOM file, or a DICOM series folder;
- a manifest CSV (as for training: ``case_id``, ``patient_id``, ``image``/``image_*``; ``label``
  optional, giving ``y_true``);
- a folder of scans: each NIfTI/DICOM/PNG/JPEG file in it is a case, or, when it holds only folders,
  each sub-folder is a DICOM series.

The scans go through the checkpoint's own evaluation pipeline (orientation, spacing, windows) and
MONAI sliding-window inference. Written to ``--output``: ``predictions.csv`` (the predictions-table
columns of DESIGN.md: ``case_id, patient_id, fold, y_true, p_<class>..., y_pred, y_pred_argmax``,
subgroup columns, ``image``, ``mask``, ``seg_path``; ``y_pred`` is the class called at the model's
operating point (chosen on inner validation, as the report's), ``y_pred_argmax`` the most probable class;
``y_true`` and ``fold`` are -1 where unknown) and
``seg/<name>.nii.gz``, each mask in its source scan's geometry (it overlays the original), and for a
DICOM source also ``seg/<name>.dcm``, a DICOM SEG referencing the source series (for PACS viewers);
``<name>`` is ``medres.layout.case_file_stem(case_id)`` (a readable prefix and a hash of the exact id).
A problem with the input is reported as one message and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medres.data.readers.inputs import discover_inputs
from medres.errors import ConfigError, DataError, MedresError

__all__ = ["main", "input_records"]

log = logging.getLogger("medres.predict")

# suffixes a case id is read without (DICOM files in a folder form one series)
_SCAN_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima")


def _case_id(path: Path) -> str:
    name = path.name
    for s in _SCAN_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def _scan_records(paths: list[Path]) -> list[dict[str, Any]]:
    ids = [_case_id(p) for p in paths]
    return [{"case_id": cid if ids.count(cid) == 1 else p.name, "patient_id": "", "image": str(p),
             "mask": None, "label": -1} for cid, p in zip(ids, paths)]


def input_records(path: str | Path, config: Any) -> list[dict[str, Any]]:
    """The cases named by ``--input`` as records (see :func:`medres.inference.predictor.predict_cases`)."""
    path = Path(path)
    if not path.exists():
        raise DataError("does not exist", path=path, hint="pass a scan, a DICOM series folder, a folder of "
                                                          "scans or a manifest CSV")
    if path.is_file() and path.suffix.lower() == ".csv":
        return _manifest_records(path, config)
    if path.is_file():
        return _scan_records([path])
    return _scan_records(discover_inputs(path)[0])  # skipped entries are logged with their reason


def _manifest_records(path: Path, config: Any) -> list[dict[str, Any]]:
    """Records of a manifest; ``label`` may be absent or empty (``y_true`` -1), else from ``data.labels``."""
    from medres.data.manifest import read_manifest
    from medres.data.pipeline.datasets import manifest_to_records

    return manifest_to_records(read_manifest(path, link_roots=config.data.link_roots,
                                             key_file=config.data.index.key_file), config.data)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medres.predict", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run folder (runs/NAME): the ensemble of its fold models")
    which.add_argument("--checkpoint", help="one medres checkpoint (e.g. fold_0/checkpoint_best.pt)")
    which.add_argument("--model", help="a folder written by python -m medres.export")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="with --run: the folds to ensemble "
                                                                      "(default: all with a checkpoint)")
    p.add_argument("--input", required=True, help="a scan, a DICOM series folder, a folder of scans or a "
                                                  "manifest CSV")
    p.add_argument("--output", required=True, help="folder for predictions.csv and seg/ (one mask per case)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (1 + spatial_dims passes)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: config)")
    p.add_argument("--aggregate", choices=("max", "mean"), default=None,
                   help="window -> case probability: max (most abnormal window; default) or mean")
    p.add_argument("--no-masks", action="store_true", help="write probabilities only")
    from medres.data.pacs.push import add_push_arguments

    add_push_arguments(p)  # --push URL / --push-dimse HOST:PORT: the SEG and SR of each DICOM input
    p.add_argument("--sr", action="store_true", help="also write a DICOM SR (TID 1500) beside each DICOM "
                                                     "input's SEG, seg/<name>.sr.dcm (--push writes it too)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medres.logs import route_library_logs

    route_library_logs()  # highdicom's, MLflow's and alembic's INFO lines stay off the terminal
    try:
        return _run(args)
    except MedresError as e:
        print(f"medres.predict: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from medres.data.dicom_objects.seg_write import (
        write_prediction_segs,  # DICOM sources: also seg/<name>.dcm
    )
    from medres.files import claim_outputs
    from medres.inference.predictor import Predictor, write_table

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available", hint="use --device cpu")
    _check_output(args)
    if args.sr and args.no_masks:
        raise ConfigError("--sr describes the predicted masks (it references the DICOM SEG), but --no-masks "
                          "writes none", hint="leave out --no-masks")
    if args.push or args.push_dimse:  # the server's address, credentials and --no-masks, before predicting
        from medres.data.pacs.push import check_push_arguments

        check_push_arguments(args)
    predictor = _predictor(args, Predictor)
    records = input_records(args.input, predictor.config)
    if not records:
        raise DataError("lists no cases", path=args.input)
    out = Path(args.output)
    _check_output(args, records)
    with claim_outputs(out, _written_names(args, records), what="--output folder"):
        seg_dir = None if args.no_masks else out / "seg"
        df = predictor.predict_records(records, seg_dir=seg_dir, seg_relative_to=out)
        ckpt = _model_file(args)
        write_prediction_segs(df, seg_dir, predictor.config.data.mask_labels, checkpoint=ckpt,
                              relative_to=out)
        table = write_table(df, out / "predictions.csv")
        log.info("%d case(s) -> %s%s", len(df), table, "" if args.no_masks else f"; masks in {out / 'seg'}")
        log.info("%s", predictor.decision_rule())
        if args.push or args.push_dimse:
            from medres.data.pacs.push import push_predictions

            push_predictions(args, df, out, list(predictor.config.data.labels),
                             predictor.config.data.mask_labels, ckpt)
        elif args.sr:
            from medres.data.pacs.push import write_prediction_srs

            write_prediction_srs(df, out, list(predictor.config.data.labels),
                                 predictor.config.data.mask_labels, ckpt)
    return 0


def _written_names(args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> list[str]:
    """Every file predict may write in ``--output`` for these records (a DICOM source's SEG and, with a
    push, its SR and push.csv included): none may be a file medres did not write there."""
    from medres.layout import case_file_stems

    names = ["predictions.csv"]
    push = bool(args.push or args.push_dimse)
    if not args.no_masks:
        for stem in case_file_stems(records).values():
            names += [f"seg/{stem}.nii.gz", f"seg/{stem}.dcm"] + ([f"seg/{stem}.sr.dcm"] if push or args.sr
                                                                   else [])
    return names + (["push.csv"] if push else [])


def _check_output(args: argparse.Namespace, records: Sequence[dict[str, Any]] = ()) -> None:
    """``--output`` against what predict reads (:func:`medres.files.check_output`): it never is, holds
    or lies inside the run or export folder (or the run a fold's checkpoint lies in), the checkpoint,
    the input scan, folder or manifest; it never is
    or holds a manifest's folder (it may lie inside it); and, once the records are known and the
    output exists, it holds none of their scans."""
    from medres.files import check_output

    given = Path(args.input)
    manifest = given.is_file() and given.suffix.lower() == ".csv"
    from medres.runfolder import RunFolder

    ckpt_run = RunFolder.of_checkpoint(args.checkpoint) if args.checkpoint else None
    inputs = {"run folder": args.run, "checkpoint": args.checkpoint, "export folder": args.model,
              "run holding the checkpoint": ckpt_run.root if ckpt_run else None,
              "input manifest" if manifest else "input": given,
              "manifest's folder (data root)": given.parent if manifest else None}
    scans: dict[str, Any] = {}
    for r in records:
        images = r["image"] if isinstance(r["image"], (list, tuple)) else [r["image"]]
        scans.update({f"image {k + 1} of case {r['case_id']!r}": p for k, p in enumerate(images)})
        scans[f"mask of case {r['case_id']!r}"] = r.get("mask")
    check_output(args.output, inputs=inputs if not records else {}, what="--output folder",
                 may_lie_inside={"manifest's folder (data root)"}, scans=scans)


def _model_file(args: argparse.Namespace) -> Path:
    """The file whose SHA-256 fingerprints the model: the checkpoint, the export's export.json, or for
    a run's ensemble its first fold's checkpoint."""
    if args.checkpoint is not None:
        return Path(args.checkpoint)
    if args.model is not None:
        return Path(args.model) / "export.json"
    from medres.runfolder import RunFolder

    run = RunFolder(args.run)
    return run.predicting_checkpoint((args.folds or run.trained_folds())[0])


def _predictor(args: argparse.Namespace, predictor_cls: Any) -> Any:
    """The Predictor of ``--run`` (fold ensemble), ``--checkpoint`` or ``--model`` (an export)."""
    opts = {"device": args.device, "tta": args.tta or None, "overlap": args.overlap,
            "cls_aggregate": args.aggregate}
    if args.folds is not None and args.run is None:
        raise ConfigError("--folds needs --run", hint="pass --run runs/NAME --folds 0 1 ...")
    if args.run is not None:
        return predictor_cls.from_run(args.run, args.folds, **opts)
    if args.model is not None:
        if not Path(args.model).is_dir():
            raise DataError("export folder not found", path=args.model,
                            hint="pass a folder written by python -m medres.export")
        return predictor_cls.from_export(args.model, **opts)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise DataError("checkpoint not found", path=ckpt, hint="pass a fold's checkpoint_best.pt")
    return predictor_cls.from_checkpoint(ckpt, **opts)


if __name__ == "__main__":
    sys.exit(main())
