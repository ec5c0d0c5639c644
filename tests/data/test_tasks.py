"""medres.data.tasks: the tasks' cells read from a manifest (0/1/-1/blank, class names, numbers), and
every bad cell a DataError naming the manifest row, the column and the task, found before training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from medres.config import load_config
from medres.config.tasks import AnyTask
from medres.data.cohort import load_cohort
from medres.data.tasks import manifest_rows, parse_task_targets
from medres.errors import ConfigError, DataError, DataErrors

TASKS = [{"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]},
         {"name": "ctr", "type": "regression", "column": "ctr", "unit": "ratio"},
         {"name": "view_cls", "type": "multiclass", "column": "projection", "classes": ["PA", "AP", "LAT"]},
         {"name": "nodule_yes", "type": "binary", "column": "nodule"}]


def tasks(*edits: dict) -> list:
    """The tasks, each validated by its model (not the whole configuration, which allows one single-label
    task: the cell parser reads any number); ``edits[i]`` updates task i."""
    raw = [dict(t, **(edits[i] if i < len(edits) else {})) for i, t in enumerate(TASKS)]
    return TypeAdapter(list[AnyTask]).validate_python(raw)


def manifest(**columns: list[str]) -> pd.DataFrame:
    base = {"case_id": ["a", "b", "c", "d", "e"], "patient_id": ["1", "1", "2", "3", "4"],
            "opacity": ["1", "0", "", "-1", "1.0"], "effusion": ["0.0", "-1", "1", "", "0"],
            "ctr": ["0.52", "", " 0.47", "4.5e-1", "-0.1"], "projection": ["PA", "AP", "", "LAT", "PA"],
            "nodule": ["0", "1", "1", "", "-1"]}
    return pd.DataFrame({**base, **columns}, dtype=str)


def test_cells_are_parsed_with_unknowns_and_uncertain_kept_apart():
    table = parse_task_targets(manifest(), tasks())
    nan = math.nan
    np.testing.assert_array_equal(table["findings"].values,
                                  [[1, 0], [0, nan], [nan, 1], [nan, nan], [1, 0]])
    np.testing.assert_array_equal(table["findings"].uncertain,
                                  [[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(table["ctr"].values[:, 0], [0.52, nan, 0.47, 0.45, -0.1])
    np.testing.assert_array_equal(table["view_cls"].values[:, 0], [0, 1, nan, 2, 0])
    np.testing.assert_array_equal(table["nodule_yes"].values[:, 0], [0, 1, 1, nan, nan])
    assert table.case_ids == ("a", "b", "c", "d", "e") and table.rows == (1, 2, 3, 4, 5)
    counts = table.counts().set_index("column")
    assert counts.loc["opacity", ["known", "unknown", "uncertain", "positive"]].tolist() == [3, 2, 1, 2]
    assert counts.loc["effusion", ["known", "unknown", "uncertain", "positive"]].tolist() == [3, 2, 1, 1]
    assert counts.loc["ctr", ["known", "unknown", "uncertain"]].tolist() == [4, 1, 0]
    assert math.isnan(counts.loc["ctr", "positive"])
    assert counts.loc["projection", "known"] == 4 and counts.loc["nodule", "uncertain"] == 1
    assert (counts["known"] + counts["unknown"] == 5).all()


@pytest.mark.parametrize("policy, opacity, effusion", [
    ("ones", [1, 0, math.nan, 1, 1], [0, 1, 1, math.nan, 0]),
    ("zeros", [1, 0, math.nan, 0, 1], [0, 0, 1, math.nan, 0]),
    ({"opacity": "ones"}, [1, 0, math.nan, 1, 1], [0, math.nan, 1, math.nan, 0]),
])
def test_uncertain_policies(policy, opacity, effusion):
    table = parse_task_targets(manifest(), tasks({"uncertain": policy}))
    np.testing.assert_array_equal(table["findings"].values, np.array([opacity, effusion]).T)
    assert table["findings"].uncertain.sum() == 2  # counted whatever the policy made of them


def test_binary_class_names():
    df = manifest(nodule=["benign", "malignant", "", "benign", "benign"])
    (_, _, _, binary) = tasks({}, {}, {}, {"classes": ["benign", "malignant"]})
    table = parse_task_targets(df, [binary])
    np.testing.assert_array_equal(table["nodule_yes"].values[:, 0], [0, 1, math.nan, 0, 0])


def problems(df: pd.DataFrame, configured: list | None = None) -> list[DataError]:
    with pytest.raises(DataError) as info:
        parse_task_targets(df, configured if configured is not None else tasks(), path="cohort.csv")
    err = info.value
    return err.errors if isinstance(err, DataErrors) else [err]


@pytest.mark.parametrize("column, cells, row, words", [
    ("opacity", ["1", "0", "2", "", "1"], 3, ["'2'", "not 0, 1, -1", "'findings'", "'opacity'"]),
    ("effusion", ["0", "yes", "", "", "0"], 2, ["'yes'", "'findings'", "'effusion'"]),
    ("effusion", ["0", "0", "0.5", "", "0"], 3, ["'0.5'"]),
    ("nodule", ["0", "1", "1", "", "-2"], 5, ["'-2'", "'nodule'"]),
    ("ctr", ["0.5", "0,47", "", "", "1"], 2, ["'0,47'", "not a number", "'ctr'"]),
    ("ctr", ["0.5", "0.4 mm", "", "", "1"], 2, ["not a number"]),
    ("ctr", ["0.5", "", "", "inf", "1"], 4, ["'inf'", "not a finite number"]),
    ("ctr", ["NaN", "", "", "", "1"], 1, ["not a finite number"]),
    ("projection", ["PA", "AP", "", "lateral", "PA"], 4,
     ["a text of 7 characters (not shown)", "not one of the classes", "'view_cls'"]),
    ("projection", ["PA", "pa", "", "LAT", "PA"], 2, ["did you mean 'PA'"]),
])
def test_a_bad_cell_names_its_row_column_and_task(column, cells, row, words):
    (err,) = problems(manifest(**{column: cells}))
    assert err.row == row and err.path == "cohort.csv" and err.hint
    assert err.case_id == "abcde"[row - 1]
    for word in words:
        assert word in str(err), (word, str(err))


def test_names_and_dates_in_a_wrong_column_are_not_shown():
    errs = problems(manifest(ctr=["Jane Doe", "2019-05-03", "", "", "1"]))
    assert [e.row for e in errs] == [1, 2]
    assert all("not shown" in str(e) and "Jane" not in str(e) and "2019" not in str(e) for e in errs)


def test_every_bad_cell_is_reported_at_once_by_row():
    errs = problems(manifest(opacity=["2", "0", "1", "x", "1"], ctr=["a", "", "", "", "b"]))
    assert sorted((e.row, e.reason.split(":")[0]) for e in errs) == [
        (1, "task 'ctr', column 'ctr'"), (1, "task 'findings', column 'opacity'"),
        (4, "task 'findings', column 'opacity'"), (5, "task 'ctr', column 'ctr'")]


def test_a_missing_column_names_the_task_and_suggests():
    (err,) = problems(manifest().rename(columns={"effusion": "Effusion"}))
    assert "'findings'" in err.reason and "'effusion'" in err.reason and "did you mean 'Effusion'" in err.hint
    errs = problems(manifest().drop(columns=["ctr", "nodule"]))
    assert sorted(e.reason for e in errs) == [
        "task 'ctr' reads column 'ctr', which the manifest lacks",
        "task 'nodule_yes' reads column 'nodule', which the manifest lacks"]


@pytest.mark.parametrize("policy, field", [
    ("ones", "tasks.3.uncertain"),
    ("zeros", "tasks.3.uncertain"),
])
def test_an_uncertain_mapping_with_no_minus_one_is_a_config_error(policy, field):
    df = manifest(nodule=["0", "1", "1", "", "0"])
    with pytest.raises(ConfigError) as info:
        parse_task_targets(df, tasks({}, {}, {}, {"uncertain": policy}))
    assert info.value.field == field and "'nodule'" in str(info.value) and "no -1" in str(info.value)
    parse_task_targets(df, tasks())  # ignore: nothing to say


def test_an_uncertain_mapping_per_column():
    df = manifest(effusion=["0", "0", "1", "", "0"])  # opacity keeps its -1
    with pytest.raises(ConfigError) as info:
        parse_task_targets(df, tasks({"uncertain": {"opacity": "ones", "effusion": "zeros"}}))
    assert info.value.field == "tasks.0.uncertain.effusion" and "'effusion'" in str(info.value)
    parse_task_targets(df, tasks({"uncertain": "ones"}))  # one policy for the task: opacity has a -1
    with pytest.raises(ConfigError, match="none of its columns"):
        parse_task_targets(df.assign(opacity="1"), tasks({"uncertain": "ones"}))


def test_rows_of_a_filtered_frame_stay_the_manifest_rows():
    df = manifest().iloc[[1, 3]]
    assert manifest_rows(df) == [2, 4]
    (err,) = problems(df.assign(ctr=["0.5", "x"]))
    assert err.row == 4


def test_a_run_refuses_a_bad_cell_before_training(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"")
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"img/{i}.png",
                     "opacity": ["0", "1", "2", "0"][i], "ctr": "0.5"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    raw = {"data": {"manifest": str(tmp_path / "m.csv"), "modality": "XR", "normalize": "zscore",
                    "spatial_dims": 2, "patch_size": [32, 32]},
           "tasks": [{"name": "findings", "type": "multilabel", "columns": ["opacity"]},
                     {"name": "ratio", "type": "regression", "column": "ctr"}]}
    with pytest.raises(DataError) as info:
        load_cohort(load_config(raw))
    assert info.value.row == 3 and "'opacity'" in info.value.reason
    assert str(tmp_path / "m.csv") in str(info.value)
    pd.DataFrame(rows).assign(opacity="1").to_csv(tmp_path / "m.csv", index=False)
    _, df = load_cohort(load_config(raw))  # no label column needed with tasks
    assert len(df) == 4


def test_the_cohort_check_lists_bad_task_cells(tmp_path, capsys):
    from medres.data.check import check_cohort
    from medres.data.check.__main__ import main

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"")
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"img/{i}.png",
                     "opacity": ["0", "1", "2", "0"][i], "ctr": ["0.5", "x", "0.4", ""][i]})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    config = tmp_path / "c.yaml"
    config.write_text("data: {manifest: m.csv}\n"
                      "tasks:\n  - {name: findings, type: multilabel, columns: [opacity], uncertain: ones}\n"
                      "  - {name: ratio, type: regression, column: ctr}\n")
    assert main(["--config", str(config), "--manifest-only"]) == 1  # no label column needed with tasks
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "'2' is not 0, 1, -1" in out and "'x' is not a number" in out
    table = [line.split()[:2] for line in out.splitlines() if line.split()[:1] in (["2"], ["3"])]
    assert table == [["2", "c1"], ["3", "c2"]]
    result = check_cohort(tmp_path / "m.csv", manifest_only=True,
                          tasks=load_config({"tasks": [{"name": "o", "type": "binary", "column": "opacity",
                                                        "uncertain": "ones"}]}).tasks)
    assert [(e.row, "'2'" in e.reason) for e in result.problems] == [(3, True)]
