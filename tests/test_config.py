"""medres.config: YAML surprises, typos, overrides, derived defaults, paths, dumps, hashes, diffs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from medres.config import (
    Config,
    check_resume_config,
    config_hash,
    config_to_yaml,
    diff_configs,
    load_config,
    save_resolved,
)
from medres.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_config_does_not_import_torch():
    code = "import medres.config, sys; medres.config.load_config(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_defaults_and_derived_model_fields():
    cfg = load_config()
    assert (cfg.model.spatial_dims, cfg.model.num_classes, cfg.model.seg_classes, cfg.model.in_channels) == (
        3, 2, 2, 1)
    cfg = load_config(data={"data": {
        "labels": ["a", "b", "c"], "mask_labels": {0: "bg", 1: "x", 2: "y"},
        "windows": [{"name": "lung", "center": -600, "width": 1500},
                    {"name": "soft", "center": 40, "width": 400}]}})
    assert (cfg.model.num_classes, cfg.model.seg_classes, cfg.model.in_channels) == (3, 3, 2)
    mr = load_config(data={"data": {"modality": "MR", "normalize": "zscore",
                                    "image_columns": ["t1", "t2", "flair"]}})
    assert mr.model.in_channels == 3
    nat = load_config(data={"data": {"modality": "natural", "normalize": "imagenet", "spatial_dims": 2,
                                     "patch_size": [224, 224], "image_folder": "imgs"},
                            "model": {"name": "resnet50", "num_classes": 1000}})
    assert (nat.model.in_channels, nat.model.spatial_dims, nat.model.num_classes) == (3, 2, 1000)
    # an explicit value that agrees is kept, and resolved() is idempotent
    cfg = load_config(data={"model": {"in_channels": 1}})
    assert cfg.model.in_channels == 1 and cfg.resolved() == cfg


def test_contradictory_channel_settings_are_config_errors():
    """One channel rule (medres.config.input_channels, also what the pipeline builds): settings that
    contradict it fail here, not as a convolution shape error at the first batch."""
    two = [{"name": "lung", "center": -600, "width": 1500}, {"name": "soft", "center": 40, "width": 400}]
    with pytest.raises(ConfigError, match="ignore them and make 1 channel") as e:
        load_config(data={"data": {"normalize": "zscore", "windows": two}})
    assert e.value.field == "data.windows"
    with pytest.raises(ConfigError, match="makes 2 channel") as e:
        load_config(data={"data": {"windows": two}, "model": {"in_channels": 1}})
    assert e.value.field == "model.in_channels"


def test_batch_size_must_hold_whole_volumes_of_patches():
    with pytest.raises(ConfigError, match="not a multiple of data.patches_per_volume 3") as e:
        load_config(data={"data": {"patches_per_volume": 3}, "train": {"batch_size": 4}})
    assert e.value.field == "data.patches_per_volume"
    ok = load_config(data={"data": {"patches_per_volume": 2}, "train": {"batch_size": 4}})
    assert ok.data.persistent_workers and ok.data.patches_per_volume == 2


def test_yaml_11_surprises(tmp_path):
    # 1e-3 is a string to YAML 1.1; we read it as the number, in files and in --set values
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-3\n  weight_decay: 5E-5\n"))
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 5e-5
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"  # the surprise we correct
    assert load_config(overrides=["optim.lr=3e-4"]).optim.lr == 3e-4
    # NO / yes where text is expected: explained, not silently False
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "data:\n  labels: [normal, NO]\n"))
    assert e.value.field == "data.labels.1" and "YAML 1.1" in str(e.value) and "'NO'" in e.value.hint
    with pytest.raises(ConfigError, match="YAML 1.1"):
        load_config(overrides=["data.positive_label=yes"])
    # ... but fine where a boolean is expected
    train = load_config(write(tmp_path, "train:\n  compile: yes\n  channels_last: off\n")).train
    assert train.compile is True and train.channels_last is False
    # 012 is octal 10 to YAML 1.1: refused with both readings offered
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: 012\n"))
    assert e.value.field == "train.epochs" and "octal number 10" in str(e.value) and "12" in e.value.hint
    assert load_config(write(tmp_path, "output:\n  name: '012'\n")).output.name == "012"
    with pytest.raises(ConfigError, match=r"quote it for text: '2024'"):
        load_config(write(tmp_path, "output:\n  name: 2024\n"))
    with pytest.raises(ConfigError, match="finite"):
        load_config(write(tmp_path, "optim:\n  lr: .nan\n"))


def test_duplicate_keys_fail_with_lines(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: 5\n  batch_size: 2\n  epochs: 6\n"))
    assert "duplicate key 'epochs' on line 4 (first on line 2)" in str(e.value)
    assert e.value.path == str(tmp_path / "c.yaml")


def test_unknown_keys_name_the_path_and_suggest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epoch: 5\n"))
    assert e.value.field == "train.epoch"
    assert "unknown key 'epoch' — did you mean 'epochs'?" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'center'") as e:
        load_config(write(tmp_path, "data:\n  windows:\n    - {name: lung, centre: -600, width: 1500}\n"))
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  epochs: 5\n"))


def test_type_errors_name_field_value_and_type(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: five\n"))
    assert e.value.field == "train.epochs" and "'five'" in str(e.value) and e.value.hint == "expected int"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "optim:\n  name: adam\n"))
    assert "did you mean 'adamw'" in str(e.value) and "'sgd' | 'adamw'" in e.value.hint
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "loss:\n  cls:\n    weights: balance\n"))
    assert e.value.field == "loss.cls.weights" and "did you mean 'balanced'" in str(e.value)
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config(write(tmp_path, "optim:\n  lr: -1\n"))
    with pytest.raises(ConfigError, match="not valid YAML \\(line 2"):
        load_config(write(tmp_path, "a:\n  b: c: d\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n"))


def test_overrides_are_typed_like_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 20\n")
    cfg = load_config(path, ["train.epochs=5", "loss.cls.weights=balanced", "data.patch_size=[32,32,32]",
                             "loss.cls.weights=[1, 3.5]", "model.options.base_channels=16",
                             "train.early_stopping.patience=3", "train.clip_grad_norm=1"])
    assert cfg.train.epochs == 5 and cfg.data.patch_size == [32, 32, 32]
    assert cfg.loss.cls.weights == [1.0, 3.5] and cfg.model.options == {"base_channels": 16}
    assert cfg.train.early_stopping.patience == 3 and cfg.train.clip_grad_norm == 1.0
    assert load_config(path, ["train.clip_grad_norm="]).train.clip_grad_norm is None
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.epoch=5"])
    assert e.value.field == "train.epoch" and "did you mean 'epochs'" in str(e.value)
    with pytest.raises(ConfigError, match="has no sub-settings"):
        load_config(path, ["train.epochs.x=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="Input should be a valid integer"):
        load_config(path, ["train.epochs=many"])


def test_consistency_checks():
    with pytest.raises(ConfigError, match="3 sizes for 2D") as e:
        load_config(data={"data": {"spatial_dims": 2}})
    assert e.value.field == "data.patch_size"
    with pytest.raises(ConfigError, match="3 class weights for 2 classes"):
        load_config(data={"loss": {"cls": {"weights": [1, 2, 3]}}})
    with pytest.raises(ConfigError, match="did you mean 'nodule'"):
        load_config(data={"data": {"positive_label": "nodul"}})
    with pytest.raises(ConfigError, match="window normalization is for CT"):
        load_config(data={"data": {"modality": "MR"}})
    with pytest.raises(ConfigError, match="0..K-1"):
        load_config(data={"data": {"mask_labels": {0: "bg", 2: "x"}}})


def test_relative_input_paths_follow_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = write(sub, "data:\n  manifest: ../manifests/m.csv\n  demo: {out: demo}\nmodel:\n"
                      "  pretrained: {path: /abs/w.pt}\n")
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.data.manifest == str(tmp_path / "manifests" / "m.csv")
    assert cfg.data.demo.out == str(sub / "demo") and cfg.model.pretrained.path == "/abs/w.pt"
    assert cfg.original_paths["data.manifest"] == "../manifests/m.csv" and cfg.source == str(path)
    assert cfg.output.dir == "runs"  # outputs stay relative to the working directory
    # a --set path is relative to the working directory
    monkeypatch.chdir(tmp_path)
    assert load_config(path, ["data.manifest=other.csv"]).data.manifest == str(tmp_path / "other.csv")


def test_dump_roundtrip_hash_and_diff(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  manifest: m.csv\noptim:\n  lr: 1e-5\n"),
                      ["model.options.base_channels=16"])
    saved = save_resolved(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(saved)
    assert config_to_yaml(again) == config_to_yaml(cfg) and config_hash(again) == config_hash(cfg)
    assert again.optim.lr == 1e-5 and again.data.mask_labels == {0: "background", 1: "nodule"}
    assert len(config_hash(cfg)) == 64 and config_hash(cfg) != config_hash(load_config())
    # the hash is stable across processes (no dict-order or id() dependence)
    code = (f"from medres.config import load_config, config_hash; "
            f"print(config_hash(load_config({str(saved)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == config_hash(cfg)

    changed = load_config(saved, ["train.epochs=3", "evaluate.tta_flips=true", "data.num_workers=2"])
    assert diff_configs(cfg, changed) == [("data.num_workers", 0, 2), ("evaluate.tta_flips", False, True),
                                          ("train.epochs", 20, 3)]
    # a checkpoint stores the config as a plain dict
    assert diff_configs(cfg.model_dump(mode="json"), cfg) == []  # int keys / tuples as JSON gives them
    assert diff_configs(cfg.model_dump(), changed, ignore=["evaluate.*"]) == [
        ("data.num_workers", 0, 2), ("train.epochs", 20, 3)]
    with pytest.raises(ConfigError, match=r"train.epochs: 20 -> 3") as e:
        check_resume_config(cfg, changed)
    assert "--force" in e.value.hint
    assert check_resume_config(cfg, changed, force=True) == [("train.epochs", 20, 3)]
    assert check_resume_config(cfg, load_config(saved, ["data.num_workers=4"])) == []


def test_config_class_defaults_still_validate():
    # other modules build Config() directly in their tests
    assert Config().resolved().model.num_classes == 2


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
assert SHIPPED, "no shipped configs found under configs/"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load_and_roundtrip(path, tmp_path):
    cfg = load_config(path)
    again = load_config(save_resolved(cfg, tmp_path / "config.yaml"))
    assert config_hash(again) == config_hash(cfg)


@pytest.mark.parametrize("name", ["../..", "a/b", "..", ".", "", "  ", "a\\b", "x\0y", "/abs"])
def test_a_run_name_is_one_path_component(name, tmp_path):
    with pytest.raises(ConfigError, match="one folder name") as err:
        load_config({"output": {"name": name}})
    assert err.value.field == "output.name" and "Value error" not in str(err.value)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output:\n  name: run\n")
    with pytest.raises(ConfigError, match="one folder name"):
        load_config(cfg_file, [f"output.name={name}"] if "\0" not in name and name.strip() else
                    ["output.name=../x"])
    assert load_config({"output": {"name": "run 2026-12_a"}}).output.name == "run 2026-12_a"


def test_list_configs_shows_each_whole_first_sentence():
    from medres.config.load import first_sentence, list_shipped_configs

    listed = list_shipped_configs()
    assert listed and all(d.endswith(".") and len(d) > 40 for d in listed.values()), listed
    assert listed["ct_chest.yaml"].endswith("by patient, then the evaluation report.")
    text = "A (x. y) 0.7 mm, e.g. c, He et al. 2016."
    assert first_sentence(text + " Next.") == text


def test_window_aggregation_is_a_setting(tmp_path):
    """``evaluate.cls_aggregate`` (documented in docs/ensemble_calibration_export.md) validates: max by
    default, mean when set in a file, anything else a ConfigError naming the field and the choices."""
    assert load_config().evaluate.cls_aggregate == "max"
    path = tmp_path / "mean.yaml"
    path.write_text("evaluate:\n  cls_aggregate: mean\n")
    assert load_config(path).evaluate.cls_aggregate == "mean"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["evaluate.cls_aggregate=median"])
    assert e.value.field == "evaluate.cls_aggregate" and "mean" in str(e.value)


def test_a_field_added_since_a_run_was_saved_is_no_change_at_its_default(tmp_path):
    """A checkpoint's config saved before ``evaluate.cls_aggregate`` existed resumes under the new
    schema when the field holds its default (the old behaviour); set to anything else it is a change."""
    cfg = load_config()
    old = cfg.model_dump(mode="json")
    del old["evaluate"]["cls_aggregate"]
    assert diff_configs(old, cfg) == [] and check_resume_config(old, cfg, ignore=()) == []
    mean = load_config(overrides=["evaluate.cls_aggregate=mean"])
    assert diff_configs(old, mean) == [("evaluate.cls_aggregate", None, "mean")]
    with pytest.raises(ConfigError, match="cls_aggregate"):  # evaluate.* is ignored for resuming by default
        check_resume_config(old, mean, ignore=())
