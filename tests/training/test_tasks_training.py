"""A configuration with tasks trains end to end: a tiny CXR findings cohort with a multilabel and a
regression task, two epochs of one fold, the checkpoint holding the training fold's task scales."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medres.config import load_config
from medres.config.tasks import task_layout
from medres.data.demo.cxr import generate_cxr_demo

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.epochs=2", "train.batch_size=4", "data.spacing=[12,12]", "data.patch_size=[32,32]",
        "model.name=dual_resnet10", "model.options.base_channels=4", "data.cache=memory",
        "output.tracking=[]", "cv.folds=2", "cv.val_fraction=0.34", "data.num_workers=0"]
TASKS = [{"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion", "cardiomegaly"],
          "pos_weight": "balanced"},
         {"name": "ctr_value", "type": "regression", "column": "ctr", "loss": "huber"}]


@pytest.fixture(scope="module")
def findings_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cxr_findings") / "demo"
    return generate_cxr_demo(out, n_patients=12, seed=0, findings=True)


@pytest.mark.filterwarnings("ignore:inner validation")  # 12 patients: few positives per finding
def test_tasks_train_two_epochs_and_keep_their_scales(findings_demo, tmp_path):
    from medres.checkpoint import load_checkpoint
    from medres.cv import fold_data, read_folds
    from medres.data.cohort import load_cohort
    from medres.data.pipeline.datasets import case_targets
    from medres.train import run

    base = load_config(ROOT / "configs" / "cxr.yaml", [f"data.manifest={findings_demo}",
                                                       f"output.dir={tmp_path / 'runs'}", "output.name=tasks",
                                                       *TINY])
    raw = base.model_dump(mode="json")
    raw["tasks"], raw["model"]["num_classes"] = TASKS, None  # the resolved head width follows the tasks
    cfg = load_config(raw)
    layout = task_layout(cfg)
    assert cfg.model.num_classes == layout.width == 4
    result = run(cfg, folds=[0], quiet=True, predict=False, evaluate=False)
    fold = result.run_dir / "fold_0"
    metrics = pd.read_csv(fold / "metrics.csv")
    assert len(metrics) == 2
    for column in ("loss_findings", "loss_ctr_value", "val_loss_findings", "val_loss_ctr_value",
                   "val_task_loss"):
        assert np.isfinite(metrics[column]).all(), column
    assert metrics["val_task_loss"].tolist() == pytest.approx(
        ((metrics["val_loss_findings"] + metrics["val_loss_ctr_value"]) / 2).tolist())

    ckpt = load_checkpoint(fold / "checkpoint_best.pt")
    scales = ckpt["task_scales"]
    # the scales are the training fold's: recomputed from its cases here
    cfg, df = load_cohort(cfg)
    data = fold_data(cfg, df, read_folds(result.run_dir / "folds.csv"), 0, df.iloc[:0])
    y = case_targets(data.train, cfg.tasks, cfg.data).astype(np.float64)
    ctr = y[:, 3][~np.isnan(y[:, 3])]
    assert scales["ctr_value"] == {"mean": pytest.approx(ctr.mean()), "sd": pytest.approx(ctr.std(ddof=1))}
    for j, col in enumerate(TASKS[0]["columns"]):
        known = y[:, j][~np.isnan(y[:, j])]
        assert scales["findings"]["pos_weight"][col] == pytest.approx((known == 0).sum() / (known == 1).sum())
    assert ckpt["loss"]["task_fns.1.mean"].item() == pytest.approx(ctr.mean())
    assert all(isinstance(v, float) and math.isfinite(v) for v in scales["ctr_value"].values())
    assert torch.is_tensor(ckpt["loss"]["task_fns.0.pos_weight"])
