"""The typed case record: what manifest_to_records builds, its one dict form, and the positive class."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from medres.config import Config, DataConfig
from medres.data.pipeline.datasets import manifest_to_records
from medres.data.records import RECORD_KEYS, Case
from medres.errors import ConfigError


def _manifest() -> pd.DataFrame:
    """As read_manifest gives it: text cells, "" where empty, the data row's number in the index."""
    return pd.DataFrame({
        "case_id": ["a", "b"], "patient_id": ["p1", "p2"], "image": ["a.nii.gz", "b.nii.gz"],
        "image_pet": ["a_pet.nii.gz", "b_pet.nii.gz"], "mask": ["a_seg.nii.gz", ""],
        "label": ["nodule", ""], "site": ["A", ""], "fold": ["0", "1"], "series_uid": ["1.2.3", "1.2.4"],
    }, index=[4, 9])


def test_manifest_rows_become_cases_with_typed_fields_and_text_extras():
    cases = manifest_to_records(_manifest(), DataConfig(labels=["normal", "nodule"]))
    a, b = cases
    assert all(isinstance(c, Case) for c in cases)
    assert (a.case_id, a.patient_id, a.image, a.mask) == ("a", "p1", "a.nii.gz", "a_seg.nii.gz")
    assert (a.label, a.row) == (1, 5)  # "nodule" is data.labels[1]; index 4 is the manifest's row 5
    assert (b.mask, b.label, b.row) == (None, -1, 10)  # no mask, no label; the manifest's own row
    assert (a.fold, a.series_uid, a.study_uid) == ("0", "1.2.3", None)  # no study_uid column
    assert dict(a.extras) == {"site": "A"} and dict(b.extras) == {"site": ""}  # image_pet is a path
    with pytest.raises(TypeError):
        a.extras["site"] = "B"  # read-only


def test_as_item_is_the_one_dict_form_and_the_mapping_view():
    (a, _) = manifest_to_records(_manifest(), DataConfig(labels=["normal", "nodule"],
                                                         image_columns=["image", "image_pet"]))
    assert a.image == ("a.nii.gz", "a_pet.nii.gz") and a.images == ["a.nii.gz", "a_pet.nii.gz"]
    item = a.as_item()
    assert item == {"case_id": "a", "patient_id": "p1", "image": ["a.nii.gz", "a_pet.nii.gz"],
                    "mask": "a_seg.nii.gz", "label": 1, "row": 5, "fold": "0", "series_uid": "1.2.3",
                    "site": "A"}
    assert dict(a) == item and a["row"] == 5 and a.get("study_uid") is None
    item["label"] = 0  # a fresh dict each time: the case is unchanged
    assert a.label == 1 and a["label"] == 1
    assert pickle.loads(pickle.dumps(a)) == a  # DataLoader workers and process pools can take it


def test_a_dict_record_round_trips_and_its_other_keys_are_extras():
    rec = {"case_id": "x", "image": "x.nii.gz", "label": None, "view": "PA", "row": 3}
    case = Case.from_mapping(rec)
    assert (case.label, case.patient_id, case.row, dict(case.extras)) == (-1, "", 3, {"view": "PA"})
    assert Case.from_mapping(case) is case
    assert set(RECORD_KEYS) >= {"case_id", "patient_id", "image", "mask", "label", "row", "fold", "study_uid",
                                "series_uid"}
    assert "p1" not in repr(Case(case_id="c", image="c.nii.gz", patient_id="p1"))  # no patient data shown


def test_positive_index_is_the_positive_label_else_the_last():
    assert DataConfig(labels=["normal", "nodule", "mass"]).positive_index() == 2
    assert DataConfig(labels=["normal", "nodule", "mass"], positive_label="nodule").positive_index() == 1
    cfg = Config().data.model_copy(update={"positive_label": "tumour"})  # bypasses load-time validation
    with pytest.raises(ConfigError, match="data.positive_label"):
        cfg.positive_index()
