"""The configuration's ``tasks:`` list: every bad setting is a ConfigError naming the field, the task and
the column; without the key nothing changes (the dump, the hash, the single head)."""

from __future__ import annotations

import pytest
import yaml

from medres.config import Config, config_hash, config_to_yaml, load_config
from medres.config.tasks import (
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    RegressionTask,
    effective_tasks,
)
from medres.errors import ConfigError

FINDINGS = {"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion", "cardiomegaly"]}
CTR = {"name": "ctr", "type": "regression", "column": "ctr", "unit": "ratio", "loss": "huber"}


def load(tasks: object, **data: object) -> Config:
    return load_config({"data": {"mask_labels": {0: "background", 1: "lung", 2: "opacity"}, **data},
                        "tasks": tasks})


def refused(tasks: object, **data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tasks, **data)
    return info.value


def test_the_issue_example_loads_and_round_trips(tmp_path):
    cfg = load([{**FINDINGS, "uncertain": "ignore", "pos_weight": "balanced"}, CTR])
    findings, ctr = cfg.tasks
    assert isinstance(findings, MultilabelTask) and findings.columns == FINDINGS["columns"]
    assert isinstance(ctr, RegressionTask) and (ctr.unit, ctr.loss, ctr.weight) == ("ratio", "huber", 1.0)
    assert effective_tasks(cfg) == [findings, ctr]
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    again = load_config(path)
    assert again.tasks == cfg.tasks and config_hash(again) == config_hash(cfg)


def test_without_tasks_the_dump_and_hash_are_as_before():
    cfg = load_config()
    assert cfg.tasks is None
    assert "tasks" not in yaml.safe_load(config_to_yaml(cfg))
    assert "tasks" not in cfg.model_dump() and "tasks" not in cfg.model_dump(mode="json")
    # a checkpoint's config saved before the field existed validates to the same configuration
    assert Config.model_validate(cfg.model_dump()) == cfg


def test_effective_tasks_is_the_single_head_without_tasks():
    (binary,) = effective_tasks(load_config({"data": {"labels": ["normal", "nodule"]}}))
    assert isinstance(binary, BinaryTask)
    assert (binary.name, binary.column, binary.classes) == ("classification", "label", ["normal", "nodule"])
    flipped = effective_tasks(load_config({"data": {"labels": ["nodule", "normal"],
                                                    "positive_label": "nodule"}}))
    assert flipped[0].classes == ["normal", "nodule"]  # [negative, positive]
    (multi,) = effective_tasks(load_config({"data": {"labels": ["a", "b", "c"]},
                                            "loss": {"cls": {"type": "focal"}}}))
    assert isinstance(multi, MulticlassTask) and multi.classes == ["a", "b", "c"] and multi.loss == "focal"
    assert effective_tasks(load_config({"model": {"cls_head": False}})) == []


@pytest.mark.parametrize("tasks, field, words", [
    ([FINDINGS, {**CTR, "name": "findings"}], "tasks.1.name", ["two tasks", "'findings'"]),
    ([FINDINGS, {**CTR, "name": "FINDINGS"}], "tasks.1.name", ["two tasks"]),
    ([FINDINGS, {"name": "effusion_yes", "type": "binary", "column": "effusion"}], "tasks.1.column",
     ["'effusion'", "two tasks", "'findings'", "'effusion_yes'"]),
    ([{**FINDINGS, "columns": ["opacity", "opacity"]}], "tasks.0.columns.1", ["twice", "'findings'"]),
    ([{**FINDINGS, "name": "opacity"}], "tasks.0.name", ["mask label 'opacity'"]),
    ([{**FINDINGS, "name": "Lung"}], "tasks.0.name", ["mask label 'lung'"]),
    ([{**CTR, "name": "site"}], "tasks.0.name", ["manifest column 'site'"]),
    ([{**CTR, "name": "label"}], "tasks.0.name", ["manifest column 'label'"]),
    ([{**CTR, "name": "patient_id"}], "tasks.0.name", ["manifest column 'patient_id'"]),
    ([{**CTR, "name": "image_t1"}], "tasks.0.name", ["image column"]),
    ([{**CTR, "name": "segmentation"}], "tasks.0.name", ["segmentation head"]),
    ([{**CTR, "name": "c t r"}], "tasks.0.name", ["letters, digits"]),
    ([{**CTR, "column": "patient_id"}], "tasks.0.column", ["'ctr'", "'patient_id'", "cannot be a target"]),
    ([{**CTR, "column": "mask"}], "tasks.0.column", ["'mask'"]),
    ([{**FINDINGS, "columns": []}], "tasks.0.columns", ["'findings'", "no columns"]),
    ([{**FINDINGS, "columns": ["opacity", " effusion"]}], "tasks.0.columns.1", ["surrounding spaces"]),
    ([{**FINDINGS, "pos_weight": {"efusion": 2.0}}], "tasks.0.pos_weight.efusion",
     ["'findings'", "'efusion'", "did you mean 'effusion'"]),
    ([{**FINDINGS, "pos_weight": {"effusion": 0}}], "tasks.0.pos_weight.effusion", ["positive number"]),
    ([{**FINDINGS, "uncertain": {"cardio": "ones"}}], "tasks.0.uncertain.cardio", ["not one of its columns"]),
    ([{**FINDINGS, "uncertain": "one"}], "tasks.0.uncertain", ["did you mean 'ones'"]),
    ([{"name": "x", "type": "binary", "column": "x", "classes": ["a", "b"], "uncertain": "ones"}],
     "tasks.0.uncertain", ["class names"]),
    ([{"name": "x", "type": "binary", "column": "x", "classes": ["a", "b", "c"]}], "tasks.0.classes",
     ["exactly 2"]),
    ([{"name": "x", "type": "multiclass", "column": "x", "classes": ["a", "a"]}], "tasks.0.classes",
     ["at least 2 different"]),
    ([{"name": "x", "type": "multiclass", "column": "x"}], "tasks.0.classes", ["missing"]),
    ([{**FINDINGS, "column": "opacity"}], "tasks.0.column",
     ["unknown key 'column'", "did you mean 'columns'"]),
    ([{**CTR, "columns": ["ctr"]}], "tasks.0.columns", ["unknown key 'columns'"]),
    ([{**CTR, "uncertain": "ones"}], "tasks.0.uncertain", ["unknown key 'uncertain'"]),
    ([{**CTR, "loss": "bce"}], "tasks.0.loss", ["'mse', 'l1' or 'huber'"]),
    ([{**FINDINGS, "loss": "huber"}], "tasks.0.loss", ["'bce' or 'focal'"]),
    ([{**FINDINGS, "type": "multilable"}], "tasks.0.type", ["did you mean 'multilabel'"]),
    ([{"name": "x", "column": "x"}], "tasks.0.type", ["missing"]),
    ([{**CTR, "weight": -1}], "tasks.0.weight", ["greater than or equal to 0"]),
    ([], "tasks", ["empty"]),
    ([{**FINDINGS, "from_mask": {"opacty": "opacity"}}], "tasks.0.from_mask.opacty",
     ["'findings'", "not one of its columns", "did you mean 'opacity'"]),
    ([{**FINDINGS, "from_mask": {"opacity": "opacities"}}], "tasks.0.from_mask.opacity",
     ["mask label 'opacities'", "did you mean 'opacity'"]),
    ([{**FINDINGS, "from_mask": {"opacity": "background"}}], "tasks.0.from_mask.opacity",
     ["not a foreground label"]),
    ([{**CTR, "from_mask": {"ctr": "lung"}}], "tasks.0.from_mask", ["unknown key 'from_mask'"]),
])
def test_bad_tasks_name_the_field_task_and_column(tasks, field, words):
    err = refused(tasks)
    assert err.field == field, str(err)
    for word in words:
        assert word in str(err), (word, str(err))


def test_from_mask_gives_the_model_its_logit_and_mask_class():
    from medres.config.tasks import mask_scores
    from medres.training.fold import model_spec

    cfg = load([CTR, {**FINDINGS, "from_mask": {"effusion": "lung", "opacity": "opacity"}}])
    # ctr is logit 0, the findings 1..3 in column order; mask classes by data.mask_labels
    assert mask_scores(cfg) == [[2, 1], [1, 2]]
    assert model_spec(cfg)["kwargs"]["mask_scores"] == [[2, 1], [1, 2]]
    assert "mask_scores" not in model_spec(load([CTR, FINDINGS]))["kwargs"]
    with pytest.raises(ConfigError, match="segmentation head") as info:
        load_config({"data": {"mask_labels": {0: "background", 1: "lung", 2: "opacity"}},
                     "model": {"seg_head": False},
                     "tasks": [{**FINDINGS, "from_mask": {"opacity": "opacity"}}]})
    assert info.value.field == "model.seg_head"


def test_tasks_need_a_manifest_not_class_folders(tmp_path):
    err = refused([CTR], image_folder=str(tmp_path))
    assert err.field == "tasks" and "image_folder" in str(err)


def test_a_task_column_may_share_its_name_and_be_a_subgroup_or_the_label():
    # one single-label task per configuration for now: the subgroup and the label column in turn
    cfg = load([{**CTR, "name": "ctr"},
                {"name": "sex_pred", "type": "binary", "column": "sex", "classes": ["F", "M"]}])
    assert [t.target_columns() for t in cfg.tasks] == [["ctr"], ["sex"]]
    cfg = load([{**CTR, "name": "ctr"},
                {"name": "dx", "type": "multiclass", "column": "label", "classes": ["normal", "nodule"]}])
    assert [t.target_columns() for t in cfg.tasks] == [["ctr"], ["label"]]


def test_task_weighting_modes_exist():
    cfg = load([FINDINGS, CTR])
    assert cfg.loss.task.mode == "fixed"
    learned = load_config({"tasks": [CTR], "loss": {"task": {"mode": "uncertainty"}}})
    assert learned.loss.task.mode == "uncertainty"


def test_set_changes_one_task_and_names_what_is_wrong():
    cfg = load_config({"tasks": [FINDINGS, CTR]}, ["tasks.1.loss=l1", "tasks.0.columns=[a, b]"])
    assert cfg.tasks[1].loss == "l1" and cfg.tasks[0].columns == ["a", "b"]
    for override, field, words in [
        ("tasks.1.units=mm", "tasks.1.units", ["unknown key 'units'", "did you mean 'unit'"]),
        ("tasks.2.unit=mm", "tasks.2.unit", ["past the list's end (2 items)"]),
        ("tasks.1.name=findings", "tasks.1.name", ["two tasks"]),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config({"tasks": [FINDINGS, CTR]}, [override])
        assert info.value.field == field and all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(ConfigError, match="no tasks list"):
        load_config(None, ["tasks.0.unit=mm"])
    # a list of one kind of setting: an item's keys are checked as before
    windows = {"data": {"windows": [{"name": "lung", "center": -600, "width": 1500}]}}
    assert load_config(windows, ["data.windows.0.center=-500"]).data.windows[0].center == -500
    with pytest.raises(ConfigError, match="did you mean 'center'"):
        load_config(windows, ["data.windows.0.centre=-500"])


@pytest.mark.parametrize("tasks, column", [
    # a multilabel column named like the single-label task's class: two p_opacity columns
    ([{"name": "status", "type": "binary", "column": "label", "classes": ["normal", "opacity"]}, FINDINGS],
     "p_opacity"),
    # a multilabel column named like a regression task: two y_ctr columns
    ([{**FINDINGS, "columns": ["opacity", "ctr"]}, {**CTR, "column": "ctr_measured"}], "y_ctr"),
])
def test_two_tasks_writing_one_prediction_column_are_refused(tasks, column):
    err = refused(tasks)
    first, second = tasks[0]["name"], tasks[1]["name"]
    assert err.field == "tasks.1"
    assert repr(column) in str(err) and repr(first) in str(err) and repr(second) in str(err)
