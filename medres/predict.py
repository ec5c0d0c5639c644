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
with ``tasks:`` also each task's columns (``medres.inference.tasks``: ``p_<c>``, ``y_<c>``, ``logit_<c>``
per label; ``pred_<t>`` in the target's units with its conformal interval ``pred_<t>_lo`` / ``_hi``; for
``--run`` each fold's ``p_<c>_fold<k>`` / ``pred_<t>_fold<k>``, the interval's half-width the mean of
the folds') and
``seg/<name>.nii.gz``, each mask in its source scan's geometry (it overlays the original), and for a
DICOM source also ``seg/<name>.dcm``, a DICOM SEG referencing the source series (for PACS viewers);
``<name>`` is ``medres.layout.case_file_stem(case_id)`` (a readable prefix and a hash of the exact id).
A problem with the input is reported as one message and exit code 2, with no traceback.

Under ``torchrun --nproc_per_node=N -m medres.predict ...`` (several GPUs, or several machines sharing
``--output``) each rank loads the model once and predicts every N-th case (rank r: cases r, r+N, ...),
writing its masks and SEGs under their usual names and its rows to a part file; rank 0 then merges the
parts into ``predictions.csv`` in the input's order, the same table one process writes. When a rank fails,
every rank stops, rank 0 names the failed rank, and no ``predictions.csv`` is written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from medres.data.readers.inputs import discover_inputs
from medres.errors import ConfigError, DataError, MedresError

__all__ = ["main", "input_records"]

log = logging.getLogger("medres.predict")

#: how long a rank that has predicted its share waits for the slowest one (under torchrun)
_GROUP_TIMEOUT = timedelta(hours=24)

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

    df = read_manifest(path, link_roots=config.data.link_roots, key_file=config.data.index.key_file)
    tasks = getattr(config, "tasks", None)
    if tasks is not None and "label" in df.columns and not any("label" in t.target_columns() for t in tasks):
        df = df.drop(columns="label")  # no task reads it (as in training), so data.labels need not name it
    return manifest_to_records(df, config.data)


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
    if _rank_prefix() and os.environ.get("RANK") != "0":  # under torchrun rank 0 alone logs progress
        logging.getLogger("medres").setLevel(logging.WARNING)
    from medres.logs import route_library_logs

    route_library_logs()  # highdicom's, MLflow's and alembic's INFO lines stay off the terminal
    try:
        return _run(args)
    except MedresError as e:
        if not isinstance(e, _Reported):
            _print_error(e)
        return 2


def _print_error(e: BaseException) -> None:
    print(f"medres.predict: error: {_rank_prefix()}{e}", file=sys.stderr, flush=True)


def _rank_prefix() -> str:
    """``"rank R of N: "`` under torchrun (several processes), else ``""``."""
    size = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '?')} of {size}: " if size.strip() not in ("", "0", "1") else ""


class _Reported(MedresError):
    """A failure at a step every rank takes together, already printed (by the failed rank and rank 0)."""


@contextlib.contextmanager
def _all_ranks(info: Any, step: str) -> Iterator[None]:
    """Run ``step`` on every rank, then agree on how it went: when it failed on any rank, every rank stops
    here (none waits for one that gave up). Each failed rank prints its error and rank 0 which rank failed,
    all before any rank exits (torchrun stops the others once one has)."""
    if not info.enabled:
        yield
        return
    from medres.distributed import all_gather_objects, barrier

    error: Exception | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    said = None if error is None else f"{type(error).__name__}: {error}" if isinstance(error, MedresError) \
        else f"{type(error).__name__} (its traceback is in that rank's output)"
    failed = [(r, text) for r, text in enumerate(all_gather_objects(said)) if text is not None]
    if not failed:
        return
    if isinstance(error, MedresError):
        _print_error(error)
    if info.is_main and error is None:
        r, text = failed[0]
        more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        print(f"medres.predict: error: rank {r} of {info.world_size}{more} failed while {step}: {text}; "
              "predictions.csv was not written", file=sys.stderr, flush=True)
    barrier()
    if error is not None and not isinstance(error, MedresError):
        raise error  # a bug, not the input: its traceback
    raise _Reported(f"rank {failed[0][0]} failed while {step}")


def _rank_device(device: str, info: Any) -> str:
    """Each rank's device under torchrun: ``auto``/``cuda`` become the machine's GPU number ``LOCAL_RANK``
    (modulo the GPUs there: more processes than GPUs share them)."""
    import torch

    if info.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return device


def _part_names(info: Any) -> list[str]:
    """Each rank's part of the table under torchrun (rank 0 merges and removes them); [] for one process."""
    n = info.world_size
    return [f"predictions.part{r}of{n}.parquet" for r in range(n)] if info.enabled else []


def _merge_parts(out: Path, parts: Sequence[str], n_cases: int) -> Any:
    """The ranks' parts as one table in the cases' order (case i was row i // N of rank i % N's part),
    with the columns in the order one process gives them (first appearance, case by case)."""
    import pandas as pd

    n = len(parts)
    rows_by_rank: list[list[dict[str, Any]]] = []
    for r, name in enumerate(parts):
        expected = len(range(r, n_cases, n))
        if expected == 0:
            rows_by_rank.append([])
            continue
        path = out / name
        if not path.is_file():
            raise DataError(f"rank {r}'s part of the predictions is missing", path=path,
                            hint="on several machines --output must be one folder all of them share "
                                 "(a network file system); run the prediction again")
        table = pd.read_parquet(path)
        if len(table) != expected:
            raise DataError(f"rank {r}'s part holds {len(table)} rows, not {expected}", path=path,
                            hint="run the prediction again")
        # a column some rows lack is empty (NA) there: keep it out of those rows, as one process does
        sparse = {c for c in table.columns if table[c].isna().any() and not table[c].isna().all()}
        rows_by_rank.append([{k: v for k, v in row.items() if k not in sparse or pd.notna(v)}
                             for row in table.to_dict("records")])
    return pd.DataFrame([rows_by_rank[i % n][i // n] for i in range(n_cases)])


def _run(args: argparse.Namespace) -> int:
    from medres.distributed import barrier, cleanup_distributed, init_distributed

    # only small Python objects cross ranks (each rank's outcome): gloo, on GPU machines too
    info = init_distributed(backend="gloo", timeout=_GROUP_TIMEOUT)
    try:
        code = _predict(args, info)
        barrier()  # no rank leaves the group while another still uses it (gloo aborts the process)
        return code
    finally:
        cleanup_distributed()


def _predict(args: argparse.Namespace, info: Any) -> int:
    import torch

    from medres.data.dicom_objects.seg_write import (
        write_prediction_segs,  # DICOM sources: also seg/<name>.dcm
    )
    from medres.files import claim_outputs
    from medres.inference.predictor import Predictor, write_table

    with _all_ranks(info, "loading the model and the cases"):
        if str(args.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: no CUDA device is available", hint="use --device cpu")
        _check_output(args)
        if args.sr and args.no_masks:
            raise ConfigError("--sr describes the predicted masks (it references the DICOM SEG), but "
                              "--no-masks writes none", hint="leave out --no-masks")
        if args.push or args.push_dimse:  # the server's address, credentials, --no-masks: before predicting
            from medres.data.pacs.push import check_push_arguments

            check_push_arguments(args)
        device = _rank_device(args.device, info)
        predictor = _predictor(argparse.Namespace(**{**vars(args), "device": device}), Predictor)
        records = input_records(args.input, predictor.config)
        if not records:
            raise DataError("lists no cases", path=args.input)
        _check_output(args, records)
        ckpt = _model_file(args)
    out = Path(args.output)
    parts = _part_names(info)
    with contextlib.ExitStack() as claimed:
        with _all_ranks(info, "claiming --output"):  # rank 0 lists every file before any rank writes one
            if info.is_main:
                claimed.enter_context(claim_outputs(out, _written_names(args, records) + parts,
                                                    what="--output folder"))
        seg_dir = None if args.no_masks else out / "seg"
        try:
            with _all_ranks(info, "predicting its cases"):
                mine = records[info.rank::info.world_size]  # all of them for one process
                df = predictor.predict_records(mine, seg_dir=seg_dir, seg_relative_to=out) if mine else None
                write_prediction_segs(df, seg_dir, predictor.config.data.mask_labels, checkpoint=ckpt,
                                      relative_to=out)
                if parts and mine:
                    write_table(df, out / parts[info.rank])
            if not info.is_main:
                return 0
            if parts:
                df = _merge_parts(out, parts, len(records))
        finally:
            if info.is_main:  # every rank has written its part, or failed: none is left as if a result
                for name in parts:
                    (out / name).unlink(missing_ok=True)
        table = write_table(df, out / "predictions.csv")
        log.info("%d case(s) -> %s%s", len(df), table, "" if args.no_masks else f"; masks in {out / 'seg'}")
        log.info("%s", predictor.decision_rule())
        if args.push or args.push_dimse:
            from medres.data.pacs.push import push_predictions

            push_predictions(args, df, out, list(predictor.config.data.labels),
                             predictor.config.data.mask_labels, ckpt, **_sr_tasks(predictor))
        elif args.sr:
            from medres.data.pacs.push import write_prediction_srs

            write_prediction_srs(df, out, list(predictor.config.data.labels),
                                 predictor.config.data.mask_labels, ckpt, **_sr_tasks(predictor))
    return 0


def _sr_tasks(predictor: Any) -> dict[str, Any]:
    """The SR's ``tasks`` findings: the configuration's task layout (None without ``tasks:``) and the
    members' calibration maps (their operating points per label)."""
    cals = predictor.calibration
    return {"layout": predictor.task_layout,
            "calibrations": list(cals) if isinstance(cals, (list, tuple)) else [cals]}


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
