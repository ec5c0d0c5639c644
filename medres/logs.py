"""Where log lines go: medres's own to the terminal, the libraries' chatter to the run's log file.

highdicom logs every module it copies into a SEG ("copy attributes of module ..."), MLflow and alembic
log their store set-up and migrations at INFO: useful in a log file, noise on a terminal. The
command-line entry points call :func:`route_library_logs` once where they configure logging (training
again with its run's ``train.log`` once the run folder is known). Standard library only, so every
``--help`` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["LIBRARY_LOGGERS", "LOG_FORMAT", "route_library_logs"]

#: The libraries whose INFO lines go to the log file only (their warnings still reach the terminal).
LIBRARY_LOGGERS = ("highdicom", "mlflow", "alembic")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_medres_route"  # the handlers this module installed, replaced on the next call


def _handlers(log_file: Path | None) -> tuple[logging.Handler, logging.Handler | None]:
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    file = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        file.setLevel(logging.INFO)
        file.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    for h in (terminal, file):
        if h is not None:
            setattr(h, _MARK, True)
    return terminal, file


def _replace(logger: logging.Logger, new: list[logging.Handler]) -> None:
    for h in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(h)
        h.close()
    for h in new:
        logger.addHandler(h)


def route_library_logs(log_file: str | os.PathLike[str] | None = None, *, medres_too: bool = False) -> None:
    """Send the INFO lines of highdicom, MLflow and alembic to ``log_file`` (appended; None: nowhere) and
    only their warnings and errors to the terminal (stderr). With ``medres_too`` medres's own lines are
    also copied to ``log_file`` (its terminal output is left as it is). Calling again replaces what an
    earlier call installed (e.g. the next run's log file).
    """
    # MLflow installs its own terminal handler when imported unless told not to (read at import time)
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    path = Path(log_file) if log_file is not None else None
    terminal, file = _handlers(path)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if getattr(h, _MARK, False)]  # MLflow's own, if any
        _replace(logger, [terminal] + ([file] if file is not None else []))
        logger.setLevel(logging.INFO if file is not None else logging.WARNING)
        logger.propagate = False
    medres = logging.getLogger("medres")
    _replace(medres, [file] if file is not None and medres_too else [])
