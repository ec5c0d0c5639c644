"""The task layout: each task's slice of the one wide classification head and of a batch's targets."""

from __future__ import annotations

import pytest

from medres.config import load_config
from medres.config.tasks import task_layout
from medres.errors import ConfigError

FINDINGS = {"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion", "cardiomegaly"]}
CTR = {"name": "ctr", "type": "regression", "column": "ctr", "loss": "huber"}
ABNORMAL = {"name": "abnormal", "type": "binary", "column": "abn"}


def test_layout_slices_tasks_in_config_order():
    cfg = load_config({"tasks": [FINDINGS, CTR, ABNORMAL]})
    layout = task_layout(cfg)
    assert not layout.single_head and len(layout) == 3
    assert layout.logit_slices == {"findings": slice(0, 3), "ctr": slice(3, 4), "abnormal": slice(4, 6)}
    assert layout.target_slices == {"findings": slice(0, 3), "ctr": slice(3, 4), "abnormal": slice(4, 5)}
    assert (layout.width, layout.n_targets) == (6, 5)
    assert cfg.model.num_classes == 6
    assert layout.single_label.name == "abnormal" and layout["abnormal"].classes == ("0", "1")
    assert layout["findings"].outputs[:3] == ("p_opacity", "y_opacity", "logit_opacity")
    assert layout["ctr"].outputs == ("pred_ctr", "y_ctr", "pred_ctr_lo", "pred_ctr_hi")
    assert layout["ctr"].task.interval == 0.9


def test_without_tasks_the_layout_is_the_single_head():
    cfg = load_config({"data": {"labels": ["nodule", "normal"], "positive_label": "nodule"}})
    (slot,) = task_layout(cfg)
    assert task_layout(cfg).single_head and cfg.model.num_classes == 2 == task_layout(cfg).width
    assert slot.classes == ("nodule", "normal")  # data.labels order = the head's output order
    assert (slot.name, slot.outputs) == ("classification", ("p_nodule", "p_normal"))
    assert len(task_layout(load_config({"model": {"cls_head": False}}))) == 0


@pytest.mark.parametrize("config, field, words", [
    ({"tasks": [ABNORMAL, {**ABNORMAL, "name": "other", "column": "other"}]}, "tasks.1.type",
     ["one binary/multiclass task", "'abnormal'", "'other'"]),
    ({"tasks": [FINDINGS], "model": {"cls_head": False}}, "model.cls_head", ["cls_head"]),
    ({"tasks": [FINDINGS], "model": {"num_classes": 2}}, "model.num_classes", ["need 3 outputs"]),
    ({"tasks": [{**CTR, "interval": 1.0}]}, "tasks.0.interval", []),
])
def test_layout_refusals(config, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert field in text
    for w in words:
        assert w in text
