"""One way to rebuild a model: ``torch.load`` only in medres.checkpoint, and every loader (checkpoint file,
checkpoint dict, fold, run, export, Predictor) refuses weights that do not fit their spec with one error."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medres.checkpoint import (
    exported_model,
    fold_model,
    load_checkpoint,
    load_model,
    rebuild_model,
    save_checkpoint,
)
from medres.errors import ConfigError
from tests.tiny_checkpoint import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

#: modules that may call torch.load besides medres/checkpoint.py, and why
TORCH_LOAD_ELSEWHERE = {
    "medres/models/pretrained.py": "third-party backbone weights (MedicalNet, torchvision)",
    "medres/data/pipeline/datasets.py": "the data cache's own tensors",
    "medres/data/pipeline/disk_cache.py": "the disk cache's own entries",
}

READERS = {"torch.load", "safetensors.safe_open", "safetensors.torch.load_file", "safetensors.torch.load"}


def _loads_model_files(tree: ast.AST) -> set[str]:
    """What a module uses to read a model's file: ``torch.load`` and safetensors' readers."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name) \
                and node.value.id == "torch":
            found.add("torch.load")
        elif isinstance(node, ast.ImportFrom):
            found |= {f"{node.module}.{a.name}" for a in node.names} & READERS
    return found


def test_torch_load_is_called_only_in_checkpoint_and_the_named_exceptions():
    users = {}
    for f in sorted((ROOT / "medres").rglob("*.py")):
        found = _loads_model_files(ast.parse(f.read_text()))
        if found:
            users[f.relative_to(ROOT).as_posix()] = found
    assert users.pop("medres/checkpoint.py") >= {"torch.load", "safetensors.safe_open",
                                                 "safetensors.torch.load_file"}
    assert {k: v for k, v in users.items() if k not in TORCH_LOAD_ELSEWHERE} == {}
    assert all(v == {"torch.load"} for v in users.values()), users  # safetensors: checkpoint.py only


def test_the_scan_sees_every_spelling(tmp_path):
    code = "import torch\nfrom safetensors.torch import load_file\nx = torch.load('a')\n"
    assert _loads_model_files(ast.parse(code)) == {"torch.load", "safetensors.torch.load_file"}
    assert _loads_model_files(ast.parse("import torch\ntorch.jit.load('a')\n")) == set()


def test_a_fold_and_a_dict_rebuild_the_stored_weights(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "run" / "fold_0" / "checkpoint_last.pt")
    state = load_checkpoint(path)
    model, ckpt = fold_model(tmp_path / "run", 0)
    assert ckpt["epoch"] == 1 and not model.training
    for k, v in state["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    again, _ = rebuild_model(state, path=path)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state["model"].items())


def test_fold_model_takes_the_best_checkpoint_before_the_last(tmp_path):
    fold = tmp_path / "run" / "fold_2"
    save_tiny_checkpoint(fold / "checkpoint_last.pt")
    save_tiny_checkpoint(fold / "checkpoint_best.pt",
                         prepare=lambda m: [p.fill_(0.5) for p in m.parameters()])
    model, _ = fold_model(tmp_path / "run", 2)
    assert all(bool((p == 0.5).all()) for p in model.parameters())


def test_a_dict_holding_an_object_is_refused(tmp_path):
    state = load_checkpoint(save_tiny_checkpoint(tmp_path / "ck.pt"))
    state["extra"] = {"note": object()}
    with pytest.raises(ConfigError, match="'extra' entry holds something other than tensors"):
        rebuild_model(state, path=tmp_path / "ck.pt")


def _mismatched(tmp_path: Path) -> tuple[Path, dict]:
    """A run whose fold 0 checkpoint's model_spec asks for half the width its weights have, and an export
    of the same weights and spec."""
    from safetensors.torch import save_file

    from medres.config import Config
    from medres.export import export_config

    path = tmp_path / "run" / "fold_0" / "checkpoint_best.pt"
    state = load_checkpoint(save_tiny_checkpoint(path))
    state["model_spec"]["kwargs"]["base_channels"] = 2  # the weights are of base_channels 4
    state["fold"] = 0
    save_checkpoint(state, path)
    folder = tmp_path / "export"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(folder / "fold0.safetensors"))
    meta = {"format": 1, "config": export_config(Config.model_validate(state["config"])),
            "members": [{"name": "fold0", "model_spec": state["model_spec"], "calibration": None,
                         "files": {"safetensors": "fold0.safetensors"}}], "sha256": {}}
    (folder / "export.json").write_text(json.dumps(meta))
    return path, state


def test_every_loader_refuses_weights_that_do_not_fit_their_spec_alike(tmp_path):
    from medres.evaluation.gallery import GradCam
    from medres.inference.members import load_export, load_members, load_run_members
    from medres.inference.predictor import Predictor

    path, state = _mismatched(tmp_path)
    run, export = tmp_path / "run", tmp_path / "export"
    config = SimpleNamespace(model=SimpleNamespace(cls_head=True), tasks=None)
    gradcam = GradCam(SimpleNamespace(run_dir=run, checkpoints=[path], config=config))
    loaders = {
        "rebuild_model(file)": (lambda: rebuild_model(path), path),
        "rebuild_model(dict)": (lambda: rebuild_model(state, path=path), path),
        "load_model": (lambda: load_model(path), path),
        "fold_model (train.py)": (lambda: fold_model(run, 0), path),
        "load_members": (lambda: load_members([path]), path),
        "load_run_members": (lambda: load_run_members(run), path),
        "Predictor.from_checkpoint": (lambda: Predictor.from_checkpoint(path), path),
        "Predictor.from_run": (lambda: Predictor.from_run(run), path),
        "GradCam (gallery)": (lambda: gradcam._model(0), path),
        "exported_model": (lambda: exported_model(export / "fold0.safetensors", state["model_spec"]),
                           export / "fold0.safetensors"),
        "load_export": (lambda: load_export(export), export / "fold0.safetensors"),
        "Predictor.from_export": (lambda: Predictor.from_export(export), export / "fold0.safetensors"),
    }
    reasons = {}
    for name, (load, where) in loaders.items():
        with pytest.raises(ConfigError) as info:
            load()
        assert type(info.value) is ConfigError, name
        assert info.value.path == str(where), name
        reasons[name] = info.value.reason
    first = reasons["rebuild_model(file)"]
    assert "weights of another model or width" in first and "differ in shape" in first
    assert "the file's model is 'dual_resnet10'" in first
    assert {n: r for n, r in reasons.items() if r != first} == {}
