"""Dataset items of a configuration with tasks: the targets read once from the cases' manifest cells."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medres.config import load_config
from medres.config.tasks import task_layout
from medres.data.pipeline.datasets import CaseDataset, case_targets, manifest_to_records
from medres.errors import DataError

TASKS = [{"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"], "uncertain": "ones"},
         {"name": "dx", "type": "multiclass", "column": "label", "classes": ["nodule", "normal", "mass"]},
         {"name": "size", "type": "regression", "column": "size_mm"}]


def _frame(**cells: list[str]) -> pd.DataFrame:
    n = len(next(iter(cells.values())))
    base = {"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
            "image": [f"/x/{i}.nii.gz" for i in range(n)], "mask": [""] * n}
    return pd.DataFrame({**base, **cells})


def test_targets_in_task_order_with_unknowns_and_the_single_label():
    cfg = load_config({"data": {"labels": ["normal", "nodule", "mass"]}, "tasks": TASKS})
    df = _frame(opacity=["1", "0", "", "-1"], effusion=["0", "-1", "1", ""],
                label=["nodule", "mass", "", "normal"], size_mm=["12.5", "", "3", "0"])
    records = manifest_to_records(df, cfg.data)
    nan = math.nan
    want = np.array([[1, 0, 0, 12.5], [0, 1, 2, nan], [nan, 1, nan, 3], [1, nan, 1, 0]], dtype=np.float32)
    got = case_targets(records, cfg.tasks, cfg.data)
    assert got.dtype == np.float32 and got.shape == (4, task_layout(cfg).n_targets)
    np.testing.assert_array_equal(got, want)
    ds = CaseDataset(records, cfg.data, train=False, cache="none", tasks=cfg.tasks)
    # label: the task's own class order (nodule, normal, mass), not data.labels'
    assert ds.labels() == [0, 2, -1, 1]
    np.testing.assert_array_equal(ds.records[1]["targets"].numpy(), want[1])
    plain = CaseDataset(records, cfg.data, train=False, cache="none")
    assert plain.labels() == [1, 2, -1, 0] and "targets" not in plain.records[0]


def test_a_bad_cell_names_its_row_and_column():
    cfg = load_config({"tasks": [TASKS[0]]})
    records = manifest_to_records(_frame(opacity=["1", "2"], effusion=["0", "0"]), cfg.data)
    with pytest.raises(DataError) as info:
        case_targets(records, cfg.tasks, cfg.data)
    assert info.value.row == 2 and "'opacity'" in str(info.value)
