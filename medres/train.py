"""``python -m medres.train``: cross-validated training of the configured model, then the evaluation.

    python -m medres.train --config ct_chest.yaml [--set train.epochs=5 ...] [--fold k]
                           [--resume] [--force] [--quiet] [--output DIR]
                           [--learning-curve 0.25 0.5 0.75 1.0]
    torchrun --nproc_per_node=2 -m medres.train --config ...        # DistributedDataParallel

SIGTERM / SIGINT save a resumable checkpoint and exit with 143 / 130; ``--resume`` continues exactly.
From Python: ``run(config) -> Run`` (run folder, per-fold metrics and predictions as DataFrames);
``learning_curve(config, fractions)``: the same folds trained on nested fractions of each fold's training
patients, one sub-run per fraction, and the table and figure of out-of-fold AUROC and Dice against them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medres.errors import ConfigError, MedresError
from medres.runfolder import HELDOUT, INNER_VAL, TEST, FoldFolder, RunFolder

if TYPE_CHECKING:  # the rest is imported where it is used, so that --help answers at once
    import pandas as pd
    import torch

    from medres.config import Config
    from medres.cv import FoldData
    from medres.training.loop import LoopState

__all__ = ["Run", "run", "learning_curve", "nested_patient_subset", "main"]

log = logging.getLogger("medres.train")
#: how OpenMP threads wait, as chosen by :func:`main` (medres.training.threads)
OPENMP_WAITS = "not chosen"


class _StopFlag:
    """Remembers the first SIGTERM / SIGINT; the loop stops at the next optimizer step and saves."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> int | None:
        return self.signum

    def install(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.signum = signum
            log.warning("received signal %d: stopping after the current training step (a validation or "
                        "prediction under way finishes first), with a checkpoint to --resume from", signum)

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)


@dataclass
class Run:
    """What a run produced, for notebooks: the folder, and per fold its metrics and predictions."""

    run_dir: Path
    config: Config
    metrics: dict[int, pd.DataFrame] = field(default_factory=dict)  # fold -> metrics.csv
    predictions: dict[int, pd.DataFrame] = field(default_factory=dict)  # fold -> predictions.parquet
    states: dict[int, LoopState] = field(default_factory=dict)
    report: Path | None = None

    @property
    def oof(self) -> pd.DataFrame:
        """All folds' out-of-fold predictions in one table."""
        import pandas as pd

        frames = [df for _, df in sorted(self.predictions.items())]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run(config: Config | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        folds: Sequence[int] | None = None, resume: bool = False, force: bool = False, quiet: bool = False,
        evaluate: bool = True, predict: bool = True,
        should_stop: Callable[[], int | None] | None = None, train_fraction: float | None = None) -> Run:
    """Train the configured folds (all by default), predict each fold's held-out cases with its best
    model, and evaluate the run once every fold has its predictions; return a :class:`Run`.

    ``config`` is a ``Config`` or a YAML path (``overrides`` are ``--set`` strings for a path).
    ``predict=False`` only trains (a later ``resume=True`` run finds the folds finished and predicts).
    ``train_fraction``: each fold trains on `nested_patient_subset` of its training patients (the inner
    validation and the held-out patients unchanged); the subset goes to ``fold_k/train_patients.csv``.
    Layout (DESIGN.md): ``runs/<name>/config.yaml``, ``folds.csv`` and ``fold_k/{checkpoint_last.pt,
    checkpoint_best.pt, metrics.csv, predictions.parquet, inner_val_predictions.parquet, ...}``.
    """
    import pandas as pd
    import torch

    from medres.config import Config, load_config
    from medres.cv import audit_folds, fold_data, make_cv_folds, read_folds, split_test
    from medres.data.cohort import load_cohort
    from medres.logs import route_library_logs
    from medres.training.distributed import barrier, cleanup_distributed, init_distributed
    from medres.training.fold import FoldJob, train_fold
    from medres.training.precision import resolve_compute_settings
    from medres.training.run_guard import claim_run, folds_sha256

    should_stop = should_stop or (lambda: None)
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    dist_info = init_distributed()
    is_main = dist_info.is_main
    _setup_logging(quiet=quiet, is_main=is_main)
    claim = end_lock = None  # this process's locks on the run folder (released when it returns)
    try:
        compute = resolve_compute_settings(cfg.train, spatial_dims=cfg.model.spatial_dims,
                                           local_rank=dist_info.local_rank)
        progress = is_main and not quiet  # bar or log lines: medres.progress decides

        # -- the cohort (rank 0 first: it may write the demo cohort) and the run folder
        run_dir = Path(cfg.output.dir) / cfg.output.name
        folder = RunFolder(run_dir)
        from medres.training.optim import with_scaled_lr

        if is_main:
            cfg, df = load_cohort(cfg)
            cfg = with_scaled_lr(cfg, world_size=dist_info.world_size)  # optim.lr for the actual batch
            _check_outputs(cfg, run_dir, df)  # the run (and cache) folder never is, holds or sits in an input
        barrier()
        if not is_main:
            cfg, df = load_cohort(cfg)
            cfg = with_scaled_lr(cfg, world_size=dist_info.world_size)

        # -- the folds, by patient
        dev, test = split_test(df)
        by_patient = cfg.cv.strategy == "patient"  # other designs take the number of folds from the data
        if cfg.cv.folds_file is not None:
            fold_table = read_folds(cfg.cv.folds_file, n_folds=cfg.cv.folds if by_patient else None)
        elif resume and folder.folds_csv.exists():
            fold_table = read_folds(folder.folds_csv, n_folds=cfg.cv.folds if by_patient else None)
        else:
            fold_table = make_cv_folds(df, cfg)
        audit_folds(df, fold_table)
        if not by_patient:  # leave_group_out / temporal: a fold per group or cutoff, kept in config.yaml
            n_folds = int(fold_table["fold"].max()) + 1
            cfg = cfg.model_copy(update={"cv": cfg.cv.model_copy(update={"folds": n_folds})})
            if cfg.cv.strategy == "temporal" and fold_table.attrs.get("straddling_patients") and is_main:
                log.info("%d patient(s) have scans on both sides of a cutoff: each stays with the period of "
                         "their first scan", fold_table.attrs["straddling_patients"])
        wanted = list(range(cfg.cv.folds)) if folds is None else list(folds)
        bad = [k for k in wanted if not 0 <= k < cfg.cv.folds]
        if bad:
            raise ConfigError(f"fold {bad[0]} does not exist (cv.folds={cfg.cv.folds})", field="cv.folds",
                              hint=f"use --fold 0..{cfg.cv.folds - 1}")

        # -- the run folder: every refusal decided before anything is written, each fold locked while this
        # process trains it, config.yaml and folds.csv written once (or verified) under the run's lock
        folds_hash = folds_sha256(fold_table)
        if is_main:
            claim = claim_run(run_dir, cfg, fold_table, wanted, resume=resume, force=force)
            route_library_logs(folder.log, medres_too=True)  # library chatter: not the terminal
            log.info("%s; %d CPU threads (OpenMP waits: %s)%s", compute.describe(), torch.get_num_threads(),
                     os.environ.get("OMP_WAIT_POLICY", "spin") + ("" if OPENMP_WAITS in ("spin", "passive")
                                                                   else f", {OPENMP_WAITS}"),
                     f"; {dist_info.world_size} processes (DDP)" if dist_info.enabled else "")
            log.info("run folder: %s (%d scans, %d folds%s)", run_dir.resolve(), len(df), cfg.cv.folds,
                     f", {len(test)} test scans held out" if len(test) else "")
        barrier()

        # -- each fold: train, then predict its held-out cases
        result = Run(run_dir=run_dir, config=cfg)
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else (
            run_dir / ".cache" if cfg.data.cache in ("disk", "mmap") else None)
        job = FoldJob(compute=compute, dist_info=dist_info, resume=resume, force=force, progress=progress,
                      should_stop=should_stop, cache_dir=cache_dir, folds_hash=folds_hash)
        for k in wanted:
            fold_dir = folder.fold(k).dir
            data = fold_data(cfg, df, fold_table, k, test)
            if train_fraction is not None:
                from dataclasses import replace

                data = replace(data, train=nested_patient_subset(data.train, train_fraction,
                                                                 seed=(cfg.cv.seed, k)))
            log.info("fold_%d of %d: %d training, %d inner-validation, %d held-out scans", k, cfg.cv.folds,
                     len(data.train), len(data.inner_val), len(data.heldout))
            result.states[k] = train_fold(cfg, data, fold_dir, job)
            if is_main:
                if train_fraction is not None:  # which training patients this fraction used
                    _write_train_patients(fold_dir, data.train)
                if predict:
                    _predict_fold(cfg, data, fold_dir, run_dir, compute.device)
                result.metrics[k] = pd.read_csv(folder.fold(k).metrics_csv)
                if folder.fold(k).predictions.exists():
                    result.predictions[k] = pd.read_parquet(folder.fold(k).predictions)
            barrier()

        # -- the evaluation, once every fold has its predictions (one fold job at a time: the run's lock)
        if claim is not None:
            end_lock = claim.shared().acquire(wait_s=3600.0)  # another job may be evaluating
        missing = [k for k in range(cfg.cv.folds)
                   if not folder.fold(k).predictions.exists()]
        if is_main and predict and not missing and len(test):  # the test split by the ensemble
            from medres.data.pipeline.datasets import manifest_to_records
            from medres.inference.ensemble import write_test_ensemble

            write_test_ensemble(run_dir, manifest_to_records(test, cfg.data), cfg, device=compute.device)
        if is_main and evaluate and predict and not missing:
            from medres.evaluation import evaluate_run

            result.report = evaluate_run(run_dir)
            log.info("report: %s", Path(result.report).resolve())
        elif is_main and missing:
            log.info("folds still to train before the evaluation: %s", missing)
        return result
    finally:
        for held in (end_lock, claim):
            if held is not None:
                held.release()
        if claim is not None:
            route_library_logs()  # closes train.log
        cleanup_distributed()


def nested_patient_subset(records: list[dict], fraction: float, *, seed: int | tuple[int, ...] = 0
                          ) -> list[dict]:
    """The records of ``fraction`` of the patients in ``records``, stratified by each patient's label.

    Within each label (a patient's highest label index) the patients are put in one seeded random order
    and the first ``max(1, round(fraction * n))`` kept; the order depends only on the seed and the
    patients, so for one seed a smaller fraction's patients are always among a larger one's (nested)."""
    import numpy as np

    if not 0 < fraction <= 1:
        raise ConfigError(f"training fraction {fraction} is not in (0, 1]", field="--learning-curve",
                          hint="give fractions such as 0.25 0.5 0.75 1.0")
    label: dict[str, int] = {}
    for r in records:
        pid = str(r["patient_id"])
        label[pid] = max(label.get(pid, -1), int(r.get("label", -1)))
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    keep: set[str] = set()
    for stratum in sorted(set(label.values())):
        patients = sorted(p for p, v in label.items() if v == stratum)
        order = [patients[i] for i in rng.permutation(len(patients))]
        keep.update(order[:max(1, round(fraction * len(order)))])
    return [r for r in records if str(r["patient_id"]) in keep]


def learning_curve(config: Config | str | os.PathLike[str], fractions: Sequence[float], *,
                   overrides: Sequence[str] = (), resume: bool = False, force: bool = False,
                   quiet: bool = False, should_stop: Callable[[], int | None] | None = None) -> Path:
    """Train the configured run once per fraction on the same folds and write the learning curve.

    Each fraction is a sub-run ``runs/<name>/learning_curve/frac_<f>/`` whose folds train on
    `nested_patient_subset` of their training patients (nested across fractions, stratified by label,
    seeded by ``cv.seed`` and the fold); its inner validation and held-out patients are those of the full
    run, and the folds are drawn once (the first sub-run's ``folds.csv`` is every later one's
    ``cv.folds_file``). Each sub-run is evaluated as usual; ``learning_curve/learning_curve.csv`` and
    ``learning_curve.png`` hold the pooled out-of-fold AUROC and Dice with their intervals against the
    fraction. Returns the CSV's path."""
    from medres.config import Config, load_config
    from medres.report.learning_curve import write_learning_curve

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    fracs = sorted({float(f) for f in fractions})
    bad = [f for f in fracs if not 0 < f <= 1]
    if not fracs or bad:
        raise ConfigError(f"learning-curve fractions {bad or list(fractions)} must be in (0, 1]",
                          field="--learning-curve", hint="e.g. --learning-curve 0.25 0.5 0.75 1.0")
    root = Path(cfg.output.dir) / cfg.output.name / "learning_curve"
    sub_runs: dict[float, Path] = {}
    patients: dict[float, int] = {}
    folds_file = cfg.cv.folds_file
    for f in fracs:
        sub = cfg.model_copy(update={
            "output": cfg.output.model_copy(update={"dir": str(root), "name": f"frac_{f:g}"}),
            "cv": cfg.cv.model_copy(update={"folds_file": folds_file})})
        log.info("learning curve: fraction %g of each fold's training patients -> %s", f,
                 root / f"frac_{f:g}")
        result = run(sub, resume=resume, force=force, quiet=quiet, should_stop=should_stop, train_fraction=f)
        sub_runs[f] = result.run_dir
        folds_file = str(RunFolder(result.run_dir).folds_csv.resolve())  # the same folds for every fraction
        patients[f] = sum(len(_read_ids(RunFolder(result.run_dir).fold(k).train_patients))
                          for k in range(result.config.cv.folds))
    return write_learning_curve(root, sub_runs, patients, level=cfg.evaluate.ci_level)


def _write_train_patients(fold_dir: Path, records: list[dict]) -> None:
    from medres.files import atomic_write

    text = "patient_id\n" + "".join(f"{p}\n" for p in sorted({str(r["patient_id"]) for r in records}))
    atomic_write(FoldFolder(fold_dir).train_patients, lambda t: t.write_text(text, encoding="utf-8"))


def _read_ids(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return lines[1:]


def _check_outputs(cfg: Config, run_dir: Path, df: pd.DataFrame) -> None:
    """The run folder (and ``data.cache_dir``) against what training reads: the config file, the
    manifest, the folds file and an image folder (never be, hold or lie inside them); the data root and
    the manifest's folder (never be or hold them; a project folder may keep ``runs/`` beside its
    manifest); and, when the run folder already exists, every image and mask of the manifest."""
    from medres.files import check_output

    manifest = df.attrs.get("manifest") or cfg.data.manifest
    inputs = {"config file": cfg.source, "manifest": manifest, "folds file": cfg.cv.folds_file,
              "image folder": cfg.data.image_folder, "data root": df.attrs.get("root") or cfg.data.root,
              "manifest's folder": Path(manifest).parent if manifest else None}
    columns = [c for c in [*df.attrs.get("image_columns", ["image"]), "mask"] if c in df.columns]
    scans = {f"{c} of case {cid!r}": p for c in columns for cid, p in zip(df["case_id"], df[c]) if p}
    inside_ok = {"data root", "manifest's folder"}
    check_output(run_dir, inputs=inputs, what="run folder (output.dir/output.name)", may_lie_inside=inside_ok,
                 scans=scans)
    if cfg.data.cache_dir:
        check_output(cfg.data.cache_dir, inputs=inputs, what="cache folder (data.cache_dir)",
                     may_lie_inside=inside_ok, scans=scans)


def _predict_fold(cfg: Config, data: FoldData, fold_dir: Path, run_dir: Path, device: torch.device) -> None:
    """Held-out, inner-validation (and test) predictions of the fold's best model (DESIGN.md contract)."""
    from medres.checkpoint import fold_model
    from medres.inference.predictor import write_fold_predictions

    model = fold_model(run_dir, data.fold)[0].to(device)  # the best checkpoint, else the last
    sets = ((HELDOUT, data.heldout, True), (INNER_VAL, data.inner_val, False), (TEST, data.test, True))
    for name, records, masks in sets:
        if records:
            write_fold_predictions(run_dir, data.fold, model, records, cfg, name, masks=masks, device=device)
    from medres.training.calibrate import calibrate_fold  # fitted on inner validation only

    calibrate_fold(fold_dir, cfg)
    log.info("fold_%d predictions: %s", data.fold, FoldFolder(fold_dir).predictions.resolve())


def _setup_logging(*, quiet: bool, is_main: bool) -> None:
    logger = logging.getLogger("medres")
    if logger.handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(h)
    logger.setLevel(logging.WARNING if quiet or not is_main else logging.INFO)
    logger.propagate = False
    if quiet:
        quiet_libraries()


def quiet_libraries() -> None:
    """``--quiet``: MLflow's and alembic's INFO lines (store set-up, migrations) and MONAI's per-scan
    warnings silenced; medres's own warnings and every error still print."""
    import warnings

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("mlflow", "alembic", "monai"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "monai" else logging.ERROR)
    warnings.filterwarnings("ignore", module=r"monai(\..*)?$")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medres.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML configuration: a file, or a shipped one by name (ct_chest.yaml: "
                                    "the main job; a file of that name in the working directory wins)")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configurations and exit")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override settings, e.g. --set train.epochs=5 optim.lr=1e-3 (several per flag; "
                        "the flag may repeat)")
    p.add_argument("--fold", type=int, action="append", help="train only this fold (repeatable); default all")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoints")
    p.add_argument("--force", action="store_true",
                   help="resume despite a changed configuration, or overwrite an existing run's folds")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bars")
    p.add_argument("--output", metavar="DIR", help="the runs folder (output.dir)")
    p.add_argument("--learning-curve", type=float, nargs="+", metavar="FRACTION",
                   help="train the same folds on nested fractions of each fold's training patients, one "
                        "sub-run each under RUN/learning_curve/, then the curve of out-of-fold AUROC and "
                        "Dice against the fraction (e.g. 0.25 0.5 0.75 1.0)")
    p.add_argument("--no-predict", dest="predict", action="store_false",
                   help="train and checkpoint only; a later --resume writes the predictions and the report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    global OPENMP_WAITS
    from medres.training.threads import choose_openmp_waits

    OPENMP_WAITS = choose_openmp_waits()  # before torch is imported (medres.training.threads says why)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        import shutil
        import textwrap

        from medres.config import list_shipped_configs

        width = max(60, min(shutil.get_terminal_size().columns, 110))
        for n, d in list_shipped_configs().items():  # the whole first sentence, wrapped
            print(textwrap.fill(d, width, initial_indent=f"{n:24} ", subsequent_indent=" " * 25))
        return 0
    if not args.config:
        parser.error("--config is required (or --list-configs)")
    from medres.config import load_config
    from medres.training.loop import Interrupted

    stop = _StopFlag()
    stop.install()
    overrides = list(args.overrides) + ([f"output.dir={Path(args.output).resolve()}"] if args.output else [])
    try:
        cfg = load_config(args.config, overrides)
        if args.learning_curve:
            if args.fold or not args.predict:
                parser.error("--learning-curve trains, predicts and evaluates every fold: drop --fold "
                             "and --no-predict")
            table = learning_curve(cfg, args.learning_curve, resume=args.resume, force=args.force,
                                   quiet=args.quiet, should_stop=stop)
            print(f"learning curve: {table.resolve()} and {table.with_suffix('.png').resolve()}")
            return 0
        result = run(cfg, folds=args.fold, resume=args.resume, force=args.force, quiet=args.quiet,
                     predict=args.predict, should_stop=stop)
    except Interrupted as e:
        print(f"medres.train: {e}", file=sys.stderr)
        return 128 + e.signum
    except MedresError as e:
        print(f"medres.train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.run_dir.resolve()}")
        if result.predictions:
            print(f"predictions: {RunFolder(result.run_dir.resolve()).tables_glob()}")
        if result.report is not None:  # the headline numbers, ending with the report's path
            from medres.report.headline import headline

            print(headline(Path(result.report).parent, ci_level=result.config.evaluate.ci_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
