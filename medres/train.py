"""``python -m medres.train``: cross-validated training of the configured model, then the evaluation.

    python -m medres.train --config ct_chest.yaml [--set train.epochs=5 ...] [--fold k]
                           [--resume] [--force] [--quiet] [--output DIR]
    torchrun --nproc_per_node=2 -m medres.train --config ...        # DistributedDataParallel

SIGTERM / SIGINT save a resumable checkpoint and exit with 143 / 130; ``--resume`` continues exactly.
From Python: ``run(config) -> Run`` (run folder, per-fold metrics and predictions as DataFrames).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from medres.config import Config, load_config
from medres.errors import MedresError

__all__ = ["run", "main"]

log = logging.getLogger("medres.engine")


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
            log.warning("received signal %d: saving a checkpoint at the next step, then stopping", signum)

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)


def run(config: Config | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        folds: Sequence[int] | None = None,
        resume: bool = False, force: bool = False, quiet: bool = False, evaluate: bool = True,
        predict: bool = True, should_stop=None):
    """Train (and evaluate) the run described by ``config``; return a :class:`medres.engine.run.Run`.

    ``config`` is a ``Config`` or a YAML path (``overrides`` are ``--set`` strings for a path).
    """
    import torch

    from medres.engine.distributed import cleanup_distributed, init_distributed
    from medres.engine.precision import resolve_fast_path
    from medres.engine.run import run_cv

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    dist_info = init_distributed()
    _setup_logging(quiet=quiet, is_main=dist_info.is_main)
    fast = resolve_fast_path(cfg.train, spatial_dims=cfg.model.spatial_dims, local_rank=dist_info.local_rank)
    if dist_info.is_main:
        log.info("%s; %d CPU threads%s", fast.describe(), torch.get_num_threads(),
                 f"; {dist_info.world_size} processes (DDP)" if dist_info.enabled else "")
    progress = dist_info.is_main and not quiet and sys.stdout.isatty() and sys.stderr.isatty()
    try:
        return run_cv(cfg, fast=fast, dist_info=dist_info, folds=folds, resume=resume, force=force,
                      progress=progress, should_stop=should_stop or (lambda: None), evaluate=evaluate,
                      predict=predict)
    finally:
        cleanup_distributed()


def _setup_logging(*, quiet: bool, is_main: bool) -> None:
    logger = logging.getLogger("medres")
    if logger.handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(h)
    logger.setLevel(logging.WARNING if quiet or not is_main else logging.INFO)
    logger.propagate = False


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medres.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML configuration: a file, or a shipped one by name (ct_chest.yaml: "
                                    "the main job; a file of that name in the working directory wins)")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configurations and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--fold", type=int, action="append", help="train only this fold (repeatable); default all")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoints")
    p.add_argument("--force", action="store_true",
                   help="resume despite a changed configuration, or overwrite an existing run's folds")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bars")
    p.add_argument("--output", metavar="DIR", help="the runs folder (output.dir)")
    p.add_argument("--no-predict", dest="predict", action="store_false",
                   help="train and checkpoint only; a later --resume writes the predictions and the report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        from medres.config import list_shipped_configs

        print("\n".join(f"{n:24} {d}" for n, d in list_shipped_configs().items()))
        return 0
    if not args.config:
        parser.error("--config is required (or --list-configs)")
    from medres.engine.loop import Interrupted

    stop = _StopFlag()
    stop.install()
    overrides = list(args.overrides) + ([f"output.dir={Path(args.output).resolve()}"] if args.output else [])
    try:
        cfg = load_config(args.config, overrides)
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
            print(f"predictions: {result.run_dir.resolve()}/fold_*/predictions.parquet")
        if result.report is not None:
            print(f"report: {Path(result.report).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
