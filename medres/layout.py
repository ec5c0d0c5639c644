"""The names of the files in a run folder that more than one stage reads (DESIGN.md, "Run folder").

``runs/<name>/config.yaml``, ``folds.csv``, and per fold ``fold_k/`` with the checkpoints below,
``metrics.csv`` and the predictions tables. Torch-free, so the report can find them too.
"""

from __future__ import annotations

__all__ = ["CHECKPOINT_LAST", "CHECKPOINT_PREV", "CHECKPOINT_BEST", "CHECKPOINTS_BEST_FIRST"]

CHECKPOINT_LAST = "checkpoint_last.pt"  # written every epoch (and every N steps): what --resume reads
CHECKPOINT_PREV = "checkpoint_prev.pt"  # the last one before it, kept as a fallback for a damaged file
CHECKPOINT_BEST = "checkpoint_best.pt"  # the best epoch by train.early_stopping.monitor: what predicts
CHECKPOINTS_BEST_FIRST = (CHECKPOINT_BEST, CHECKPOINT_LAST)  # a fold's model for prediction, in order
