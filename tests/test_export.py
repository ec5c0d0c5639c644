"""End to end on the smoke configuration with a test split: the fold ensemble scores the test split, each
fold is calibrated on its inner validation only, the export (ONNX checked with onnxruntime, TorchScript,
safetensors, model card) predicts without the run folder, and nothing exported names a path or a patient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medres.config import load_config
from medres.data.demo import generate_demo
from medres.export import MAX_ABS_DIFF
from medres.export import main as export_main
from medres.predict import main as predict_main
from medres.train import run
from medres.training.calibrate import case_ids_digest

ROOT = Path(__file__).resolve().parents[1]
TEST_PATIENTS = ("P0003", "P0008")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("e2e")
    manifest = generate_demo(root / "demo", n_patients=12, seed=0)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df["split"] = np.where(df["patient_id"].isin(TEST_PATIENTS), "test", "train")
    df.to_csv(manifest, index=False)
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      [f"data.manifest={manifest}", "data.demo=null", f"output.dir={root / 'runs'}",
                       "cv.val_fraction=0.5"])
    result = run(cfg, quiet=True)
    return result.run_dir, root, df


@pytest.mark.slow
def test_ensemble_scores_the_test_split_and_folds_calibrate_on_inner_validation_only(trained):
    run_dir, _, manifest = trained
    test_cases = set(manifest.loc[manifest["split"] == "test", "case_id"])
    ens = pd.read_parquet(run_dir / "ensemble" / "test_predictions.parquet")
    assert set(ens["case_id"]) == test_cases and (ens["fold"] == -1).all()
    folds = [pd.read_parquet(run_dir / f"fold_{k}" / "test_predictions.parquet").set_index("case_id")
             for k in range(2)]
    for k, f in enumerate(folds):  # the ensemble's per-fold columns are the folds' own test predictions
        np.testing.assert_allclose(ens.set_index("case_id")[f"p_nodule_fold{k}"], f.loc[ens["case_id"],
                                   "p_nodule"], atol=1e-7)
    np.testing.assert_allclose(ens["p_nodule"], ens[["p_nodule_fold0", "p_nodule_fold1"]].mean(axis=1),
                               atol=1e-12)
    for k in range(2):
        cal = json.loads((run_dir / f"fold_{k}" / "calibration.json").read_text())
        inner = pd.read_parquet(run_dir / f"fold_{k}" / "inner_val_predictions.parquet")
        held = pd.read_parquet(run_dir / f"fold_{k}" / "predictions.parquet")
        assert cal["fitted_on"] == "inner_val" and cal["n"] == len(inner)
        assert cal["case_ids_sha256"] == case_ids_digest(inner["case_id"])
        assert not set(inner["case_id"]) & (set(held["case_id"]) | test_cases)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    scopes = {(r["scope"], r["head"]) for r in summary["records"]}
    assert {("test_ensemble", "segmentation"), ("test", "segmentation"), ("test_ensemble", "classification"),
            ("calibration", "classification")} <= scopes
    html = (run_dir / "report" / "report.html").read_text()
    assert "by each fold model and by the fold ensemble" in html and "before and after recalibration" in html


@pytest.mark.slow
def test_export_checks_card_and_predict_without_the_run_folder(trained, tmp_path):
    run_dir, root, manifest = trained
    out = tmp_path / "export"
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 0
    from medres.files import written_list

    assert {"report.html", "summary.json"} <= set(written_list(run_dir / "report"))  # training's report
    assert "fold0.onnx" in written_list(out)
    checks = json.loads((out / "checks.json").read_text())
    assert checks["passed"] and checks["max_abs_diff"] <= MAX_ABS_DIFF
    assert set(checks["members"]["fold0"]) == {"onnx", "torchscript"} and "ensemble_window" in checks
    names = {p.name for p in out.iterdir()}
    assert {"fold0.onnx", "fold1.onnx", "ensemble.onnx", "fold0.torchscript.pt", "fold0.safetensors",
            "model_card.md", "model_card.json", "export.json"} <= names

    # the card quotes the report's records unchanged
    card = json.loads((out / "model_card.json").read_text())
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    keys = ("scope", "subgroup", "fold", "head", "class", "metric", "value", "ci_low", "ci_high", "ci_method",
            "n", "n_pos", "note")
    pooled = [{k: r.get(k) for k in keys} for r in summary["records"]
              if r["scope"] == "pooled" and r["subgroup"] == "all"]
    assert card["metrics"]["oof"] == pooled and any(r["metric"] == "auroc" for r in pooled)
    assert card["metrics"]["test_ensemble"] and card["metrics"]["calibration"]
    dev = manifest[manifest["split"] != "test"]
    assert card["cohort"]["scans"] == len(dev) and card["cohort"]["patients"] == dev["patient_id"].nunique()
    assert card["cohort"]["by_site"] == dev["site"].value_counts().sort_index().to_dict()
    assert card["cohort"]["labels"]["nodule"]["scans"] == int((dev["label"] == "nodule").sum())
    assert card["architecture"]["parameters_per_model"] > 0 and card["preprocessing"]["spacing"] == [10.0] * 3

    # no path, no patient identifier, no DICOM patient field in any exported file
    secrets = [str(root).encode(), str(tmp_path).encode(), b"/tmp/", b"DEMO^", b"Demo Hospital", b"ACCP0",
               *[p.encode() for p in manifest["patient_id"]]]
    for path in out.iterdir():
        data = path.read_bytes()
        for s in secrets:
            assert s not in data, (path.name, s)

    # predict from the export alone, the run folder moved away: the same predictions as from the run
    scan = str(root / "demo" / manifest["image"].iloc[0])
    by_run = tmp_path / "by_run"
    assert predict_main(["--run", str(run_dir), "--input", scan, "--output", str(by_run),
                         "--device", "cpu"]) == 0
    moved = root / "moved"
    shutil.move(str(run_dir), moved)
    try:
        by_export = tmp_path / "by_export"
        assert predict_main(["--model", str(out), "--input", scan, "--output", str(by_export),
                             "--device", "cpu"]) == 0
    finally:
        shutil.move(str(moved), run_dir)
    a, b = pd.read_csv(by_run / "predictions.csv"), pd.read_csv(by_export / "predictions.csv")
    assert list(a.columns) == list(b.columns)
    cols = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[cols], b[cols], atol=1e-7)
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(by_run / a["seg_path"][0]).dataobj),
                                  np.asarray(nib.load(by_export / b["seg_path"][0]).dataobj))
    # a rerun into its own export folder replaces its own files
    assert export_main(["--run", str(run_dir), "--out", str(out), "--format", "onnx", "--no-check"]) == 0
    assert set(json.loads((out / "export.json").read_text())["sha256"]) == {
        "fold0.onnx", "fold1.onnx", "ensemble.onnx", "fold0.safetensors", "fold1.safetensors", "checks.json"}


def test_export_errors_are_one_message(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert export_main(["--run", str(run_dir), "--out", str(tmp_path / "o")]) == 2
    assert "report/summary.json" in capsys.readouterr().err
    assert predict_main(["--model", str(run_dir), "--input", str(run_dir), "--output",
                         str(tmp_path / "o")]) == 2
    assert "no export.json" in capsys.readouterr().err


def test_an_export_folder_on_around_or_inside_the_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "summary.json").write_text("{}")
    for out, said in ((run_dir, "is the run folder"), (run_dir / "exported", "lies inside the run folder"),
                      (tmp_path / "runs", "contains the run folder"),
                      (run_dir / "report" / "..", "is the run folder")):
        assert export_main(["--run", str(run_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and str(out) in err, err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs", "runs/r", "runs/r/report", "runs/r/report/summary.json"]


def test_a_file_export_did_not_write_is_never_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "summary.json").write_text("{}")
    (run_dir / "fold_0").mkdir()
    (run_dir / "fold_0" / "checkpoint_best.pt").write_bytes(b"refused before it is read")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model_card.md").write_text("# the user's own card\n")
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds model_card.md, a file medres did not write there" in err and str(out) in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["model_card.md"]
    assert (out / "model_card.md").read_text() == "# the user's own card\n"


# -- hostile export folders, built by the test (no training)

def _tiny_export(folder: Path) -> tuple[Path, dict]:
    import torch
    from safetensors.torch import save_file

    from medres.export import export_config
    from medres.training.fold import build_model, model_spec

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "fold0.safetensors"))
    meta = {"format": 1, "config": export_config(cfg), "labels": list(cfg.data.labels),
            "members": [{"name": "fold0", "fold": 0, "model_spec": model_spec(cfg), "calibration": None,
                         "files": {"safetensors": "fold0.safetensors"}}], "sha256": {}}
    (folder / "export.json").write_text(json.dumps(meta))
    return folder, meta


def _write(folder: Path, meta: object) -> None:
    (folder / "export.json").write_text(json.dumps(meta))


def test_a_tiny_export_loads_its_exact_weights(tmp_path):
    from safetensors.torch import load_file

    from medres.inference.members import load_export

    folder, _ = _tiny_export(tmp_path / "exp")
    (model,), _, _, names = load_export(folder)
    stored = load_file(str(folder / "fold0.safetensors"))
    assert names == ["fold0"] and stored.keys() == model.state_dict().keys()
    assert all(np.array_equal(stored[k].numpy(), v.numpy()) for k, v in model.state_dict().items())


def test_an_export_asking_for_a_huge_model_is_refused_before_allocating(tmp_path, capsys):
    import resource

    folder, meta = _tiny_export(tmp_path / "exp")
    meta["members"][0]["model_spec"]["kwargs"]["base_channels"] = 65536  # ~21 GiB of weights
    _write(folder, meta)
    assert (folder / "export.json").stat().st_size < 8192
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (tmp_path / "in").mkdir()
    argv = ["--model", str(folder), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert predict_main(argv) == 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 2**30
    err = capsys.readouterr().err
    assert "weights of another model or width" in err and "fold0.safetensors" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_an_export_asking_for_a_huge_window_is_refused_before_inference(tmp_path, capsys):
    import resource

    folder, meta = _tiny_export(tmp_path / "exp")
    meta["config"]["data"]["patch_size"] = [4096, 4096, 4096]  # 256 GiB of float32 per channel
    _write(folder, meta)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "in" / "a.nii.gz")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    argv = ["--model", str(folder), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert predict_main(argv) == 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 2**30
    err = capsys.readouterr().err
    assert "4096 x 4096 x 4096 voxels" in err and "256.0 GiB for its input alone" in err
    assert "export.json" in err and "data.patch_size" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("hostile, words", [
    ([1, 2], "holds a list, not an object"),
    ({"format": 1}, "no valid 'members' list"),
    ("{not json", "not valid JSON"),
    ({"members": "fold0"}, "no valid 'members' list"),
])
def test_a_malformed_export_json_is_a_config_error(tmp_path, hostile, words):
    from medres.errors import ConfigError
    from medres.inference.members import load_export

    folder, meta = _tiny_export(tmp_path / "exp")
    if isinstance(hostile, dict):
        hostile = {**meta, **hostile} if "format" not in hostile else {"format": 1, "config": meta["config"]}
    (folder / "export.json").write_text(hostile if isinstance(hostile, str) else json.dumps(hostile))
    with pytest.raises(ConfigError, match=words):
        load_export(folder)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "onnx"])
def test_every_file_an_export_names_lies_inside_it(tmp_path, where):
    from medres.errors import ConfigError
    from medres.inference.members import load_export

    folder, meta = _tiny_export(tmp_path / "exp")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(folder / "fold0.safetensors", outside)
    files = meta["members"][0]["files"]
    if where == "parent":
        files["safetensors"] = "../outside.safetensors"
    elif where == "absolute":
        files["safetensors"] = str(outside)
    elif where == "symlink":
        (folder / "fold0.safetensors").unlink()
        (folder / "fold0.safetensors").symlink_to(outside)
    else:
        files["onnx"] = "../../etc/passwd"
    _write(folder, meta)
    with pytest.raises(ConfigError, match="outside the export folder|not a relative path inside"):
        load_export(folder)


def test_a_safetensors_file_with_a_lying_header_is_a_config_error(tmp_path):
    import struct

    from medres.errors import ConfigError
    from medres.inference.members import load_export

    folder, _ = _tiny_export(tmp_path / "exp")
    header = json.dumps({"backbone.conv1.weight": {"dtype": "F32", "shape": [100000, 100000],
                                                   "data_offsets": [0, 40_000_000_000]}}).encode()
    (folder / "fold0.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ConfigError, match="not a valid safetensors file") as info:
        load_export(folder)
    assert info.value.path == str(folder / "fold0.safetensors")


def test_model_card_markdown_escapes_strings_from_the_manifest():
    """Site, scanner, label and subgroup names reach model_card.md as text: no HTML, link or emphasis."""
    markdown = pytest.importorskip("markdown")
    from medres.export import card_markdown

    evil = "<script>alert(1)</script>"
    link = "[x](javascript:alert(1))"
    card = {
        "model": "medres resnet10 fold ensemble (2 models)", "intended_use": f"Research use: {evil} scans.",
        "cohort": {"scans": 4, "patients": 3, "by_site": {evil: 2, link: 1, "**B**": 1},
                   "by_scanner": {"<img src=x onerror=alert(1)>": 4},
                   "labels": {"normal": {"scans": 2, "prevalence": 0.5},
                              "_nod_": {"scans": 2, "prevalence": 0.5}}},
        "preprocessing": {"modality": "CT", "orientation": "RAS", "spacing": [1, 1, 1],
                          "patch_size": [8, 8, 8], "normalize": "window",
                          "windows": [{"name": "lung", "center": -600, "width": 1500}]},
        "inference": {}, "architecture": {"name": "resnet10", "parameters_per_model": 10, "models": 2,
                                          "model_spec": {}},
        "recipe": {}, "metrics_source": "the report", "metrics": {"subgroups": [
            {"metric": "auroc", "head": "cls", "class": "_nod_", "subgroup": f"site={evil} | {link}",
             "fold": "pooled", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 4, "ci_method": "bca"}]},
        "calibration": {"method": "temperature", "fitted_on": "inner validation", "maps": {}},
        "export_checks": {}, "limitations": [], "versions": {}, "sha256": {}}
    text = card_markdown(card)
    html = markdown.markdown(text, extensions=["tables"])
    for tag in ("<script", "<img", "<a ", "<strong>B", "<em>nod"):
        assert tag not in html, tag
    assert evil in html.replace("&lt;", "<").replace("&gt;", ">")
    table = [line for line in text.splitlines() if line.startswith("| auroc")]
    assert len(table) == 1 and table[0].count(" | ") == 4  # the subgroup's '|' does not split the row


def test_model_card_flags_an_implausible_predicted_volume():
    from medres.export import implausible_volumes

    def rec(metric, value, cls="nodule"):
        return {"head": "segmentation", "class": cls, "metric": metric, "value": value}

    fov = 240.0**3 / 1000  # the demo's 240 mm cube: 13.8 L
    wild = [rec("ref_volume_ml", 12.0), rec("pred_volume_ml", 4700.0),
            rec("pred_volume_ml", 9e3, "nodule (reference present)")]
    flags = implausible_volumes(wild, fov)
    assert len(flags) == 1 and "4700 mL" in flags[0] and "34% of a scan's field of view (13.8 L)" in flags[0]
    assert "392 times the mean reference volume (12.0 mL)" in flags[0]
    assert implausible_volumes([rec("ref_volume_ml", 12.0), rec("pred_volume_ml", 30.0)], fov) == []
    assert implausible_volumes([rec("pred_volume_ml", 2000.0)], None) == []  # no bound known: no claim


# -- several questions per scan (tasks:): one named output per task, the cohort's per-task statistics

def _tasks_config():
    return load_config({
        "data": {"labels": ["normal", "nodule"], "windows": [{"name": "lung", "center": -600, "width": 1500}],
                 "normalize": "window", "spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": [{"name": "nodule_task", "type": "binary", "column": "nodule"},
                  {"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]},
                  {"name": "ctr_task", "type": "regression", "column": "ctr", "unit": "ratio"}]})


def test_a_tasks_model_exports_one_named_output_per_task(tmp_path):
    import onnxruntime as ort
    import torch
    from monai.data import MetaTensor

    from medres.config.tasks import task_layout
    from medres.export import (
        _Joined,
        _onnx_export,
        _OrtModel,
        _probabilities,
        _TaskOutputs,
        _torchscript_export,
        output_names,
    )
    from medres.training.fold import build_model

    cfg = _tasks_config()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    layout = task_layout(cfg)
    names = output_names(cfg)
    assert names == ("nodule_task", "findings", "ctr_task", "seg_logits")
    example = torch.zeros((1, 1, 16, 16, 16))
    wrapped = _TaskOutputs.wrap(model, layout)
    _onnx_export(wrapped, example, tmp_path / "m.onnx", names)
    _torchscript_export(wrapped, example, tmp_path / "m.torchscript.pt")
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        want = model(x).cls_logits
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(names)
    got = session.run(list(names), {"window": x.numpy()})
    assert [g.shape[1] for g in got[:-1]] == [2, 2, 1]
    for g, slot in zip(got, layout):
        assert np.abs(g - want[:, slot.start:slot.stop].numpy()).max() < MAX_ABS_DIFF
    scripted = _Joined.wrap(torch.jit.load(str(tmp_path / "m.torchscript.pt")))
    assert torch.allclose(scripted(x)[0], want, atol=MAX_ABS_DIFF)
    # the export check's path: whole-volume task outputs of the ONNX graph against PyTorch
    image = MetaTensor(torch.randn(1, 20, 18, 16), affine=torch.eye(4))
    (ref, _), = _probabilities([model], image, cfg)
    (onnx_out, _), = _probabilities([_OrtModel.wrap(tmp_path / "m.onnx")], image, cfg)
    assert ref.shape == (5,) and float((ref - onnx_out).abs().max()) < MAX_ABS_DIFF


def test_the_model_card_gives_each_tasks_prevalence_or_distribution():
    from medres.export import _task_lines, task_summary

    cfg = _tasks_config()
    df = pd.DataFrame({"case_id": list("abcdef"), "nodule": ["1", "0", "0", "1", "", "0"],
                       "opacity": ["1", "1", "0", "0", "0", "-1"], "effusion": ["", "", "1", "0", "0", "0"],
                       "ctr": ["0.40", "0.50", "", "0.45", "0.60", "0.55"]})
    summary = task_summary(df, cfg.tasks)
    assert summary["nodule_task"]["columns"]["nodule"] == {"known": 5, "positive": 2, "prevalence": 0.4}
    assert summary["findings"]["columns"]["opacity"]["prevalence"] == pytest.approx(2 / 5)  # -1: unknown
    assert summary["findings"]["columns"]["effusion"]["known"] == 4
    ctr = summary["ctr_task"]["columns"]["ctr"]
    values = np.array([0.40, 0.50, 0.45, 0.60, 0.55])
    assert ctr["known"] == 5 and ctr["mean"] == pytest.approx(values.mean())
    assert ctr["sd"] == pytest.approx(values.std(ddof=1)) and ctr["median"] == pytest.approx(0.5)
    text = "\n".join(_task_lines(summary))
    assert "nodule: 2 of 5 known (40.0%)" in text and "mean 0.5 ratio" in text
    json.dumps(summary, allow_nan=False)  # model_card.json refuses NaN


def test_a_tasks_ensemble_exports_one_output_per_task_as_inference_computes_them(tmp_path):
    """ensemble.onnx of a tasks model: per task the mean over folds of what `task_outputs` (the inference
    path) gives each fold model on the window: calibrated class and label probabilities, values in units."""
    import onnxruntime as ort
    import torch

    from medres.config.tasks import task_layout
    from medres.errors import ConfigError
    from medres.export import (
        _ensemble_outputs_meta,
        _ensemble_window_check,
        _onnx_export,
        _task_ensemble_module,
        ensemble_output_names,
    )
    from medres.inference.tasks import task_outputs
    from medres.training.fold import build_model

    cfg = _tasks_config()
    layout = task_layout(cfg)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg).eval())
    platt = {"method": "platt", "a": 1.7, "b": -0.4, "positive": 1, "operating_point": {"threshold": 0.3}}
    cals = [{"method": "temperature", "temperature": 1.8,
             "task_scales": {"ctr_task": {"mean": 0.5, "sd": 0.05}},
             "tasks": {"findings": {"columns": {"opacity": platt}}, "ctr_task": {"half_width": 0.04}}},
            {"method": "none", "task_scales": {"ctr_task": {"mean": 0.48, "sd": 0.07}},
             "tasks": {"findings": {"columns": {"opacity": {**platt, "a": 0.6, "b": 0.9},
                                                "effusion": {"method": "temperature", "temperature": 2.5}}}}}]
    names = ensemble_output_names(cfg)
    assert names == ("nodule_task", "findings", "ctr_task", "seg_probs", "member_cls_logits")
    module = _task_ensemble_module(models, cals, layout)
    example = torch.zeros((1, 1, 16, 16, 16))
    with torch.no_grad():
        _onnx_export(module, example, tmp_path / "ensemble.onnx", names)
    x = torch.randn(3, 1, 16, 16, 16)
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(names)
    got = dict(zip(names, session.run(list(names), {"window": x.numpy()})))
    with torch.no_grad():
        outs = [m(x) for m in models]
    for b in range(len(x)):  # each window as the inference path reads one case's task values
        values = []
        for o in outs:
            z = o.cls_logits[b].double()
            v = z.clone()
            v[0:2] = torch.softmax(z[0:2], dim=0)  # a single-label task's values are its probabilities
            values.append(v.numpy())
        ref = task_outputs(values, layout, cals)
        np.testing.assert_allclose(got["nodule_task"][b], np.mean(ref["nodule_task"]["probs"], axis=0),
                                   atol=MAX_ABS_DIFF)
        np.testing.assert_allclose(got["findings"][b], np.mean(ref["findings"]["p"], axis=0),
                                   atol=MAX_ABS_DIFF)
        assert got["ctr_task"][b, 0] == pytest.approx(np.mean(ref["ctr_task"]["value"]), abs=MAX_ABS_DIFF)
    assert got["nodule_task"].sum(axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    seg = torch.stack([torch.softmax(o.seg_logits, dim=1) for o in outs]).mean(0)
    assert np.abs(got["seg_probs"] - seg.numpy()).max() < MAX_ABS_DIFF
    assert got["member_cls_logits"].shape == (3, 2, 5)
    assert np.abs(got["member_cls_logits"][:, 1] - outs[1].cls_logits.numpy()).max() < MAX_ABS_DIFF
    with torch.no_grad():  # the export's own check of the graph (checks.json's ensemble_window)
        check = _ensemble_window_check(tmp_path / "ensemble.onnx", cfg, models, cals, x[:1])
    assert set(check) == {"cls_max_abs_diff", "seg_max_abs_diff"} and max(check.values()) < MAX_ABS_DIFF
    meta = _ensemble_outputs_meta(layout, 2)
    assert [m.split(" ")[0] for m in meta] == list(names) and "units" in meta[2]
    with pytest.raises(ConfigError, match="task_scales"):  # a regression member without its scale
        _task_ensemble_module(models, [cals[0], {"method": "none"}], layout)


def test_the_export_reads_a_tasks_cohort_whose_label_column_no_task_reads(tmp_path):
    """As training does: with tasks: that do not read ``label``, its values need not be in data.labels (the
    export's checks and model card read the cohort through this)."""
    from medres.errors import DataError
    from medres.export import _read_cohort_manifest

    for k in range(2):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / f"s{k}.nii.gz")
    pd.DataFrame({"case_id": ["a", "b"], "patient_id": ["p1", "p2"], "image": ["s0.nii.gz", "s1.nii.gz"],
                  "label": ["opacity", "normal"], "opacity": ["1", "0"], "effusion": ["0", ""],
                  "ctr": ["0.5", "0.45"]}).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = load_config({"data": {"manifest": str(tmp_path / "manifest.csv"), "labels": ["normal", "nodule"],
                                "patch_size": [16, 16, 16]},
                       "tasks": [{"name": "findings", "type": "multilabel",
                                  "columns": ["opacity", "effusion"]},
                                 {"name": "ctr_task", "type": "regression", "column": "ctr"}]})
    df = _read_cohort_manifest(cfg)
    assert list(df["case_id"]) == ["a", "b"] and "label" not in df.columns and "opacity" in df.columns
    single = load_config({"data": {"manifest": str(tmp_path / "manifest.csv"), "labels": ["normal", "nodule"],
                                   "patch_size": [16, 16, 16]}})
    with pytest.raises(DataError, match="not in the vocabulary"):  # the single head's labels are checked
        _read_cohort_manifest(single)
