"""The configuration: pydantic models of the YAML files in ``configs/`` and ``load_config``.

This module never imports torch, so a configuration validates instantly. Every problem is a
``ConfigError`` naming the file, the setting's dotted path and a hint (for a typo, the closest valid
name). ``load_config(path, overrides)``:

- reads YAML with ``safe_load`` semantics, but ``1e-3`` is a number, duplicate keys are refused,
  ``yes``/``NO`` in a text field and ``012`` (octal to YAML 1.1) are explained and refused;
- applies ``--set a.b.c=value`` overrides, each value read as YAML and validated like the file's;
- fills the derived model settings (``Config.resolved``: spatial_dims, num_classes, seg_classes,
  in_channels from the data section) and checks cross-field consistency;
- resolves the input paths (``INPUT_PATH_FIELDS``: data.manifest, data.root, data.image_folder,
  data.demo.out, model.pretrained.path, cv.folds_file) against the config file's folder (``--set``
  values: the working directory); ``cfg.original_paths`` keeps the text as written. Outputs
  (output.dir, data.cache_dir) stay relative to the working directory.

``save_resolved`` writes the result into the run folder, ``config_hash`` fingerprints it, and
``diff_configs`` / ``check_resume_config`` compare a run's saved configuration with the current one.
Field names are the contract other modules build on: add fields, do not rename them.
"""

from __future__ import annotations

from medres.config.load import (
    INPUT_PATH_FIELDS,
    RESUME_IGNORED_FIELDS,
    check_resume_config,
    config_hash,
    config_to_yaml,
    diff_configs,
    flatten_dict,
    list_shipped_configs,
    load_config,
    resolve_config_path,
    save_resolved,
)
from medres.config.schema import (
    DEFAULT_CT_WINDOWS,
    AugmentConfig,
    ClsLossConfig,
    Config,
    CVConfig,
    DataConfig,
    DemoConfig,
    EarlyStoppingConfig,
    EvalConfig,
    IndexConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PretrainedConfig,
    ScheduleConfig,
    SegLossConfig,
    TaskWeightConfig,
    TrainConfig,
    WindowConfig,
    ct_windows,
    input_channels,
)

__all__ = [
    "WindowConfig", "AugmentConfig", "DemoConfig", "DataConfig", "PretrainedConfig", "ModelConfig",
    "ClsLossConfig", "SegLossConfig", "TaskWeightConfig", "LossConfig", "OptimConfig", "ScheduleConfig",
    "EarlyStoppingConfig", "TrainConfig", "CVConfig", "EvalConfig", "OutputConfig", "Config",
    "load_config", "config_to_yaml", "save_resolved", "config_hash", "diff_configs", "flatten_dict",
    "check_resume_config", "INPUT_PATH_FIELDS", "RESUME_IGNORED_FIELDS", "DEFAULT_CT_WINDOWS", "ct_windows",
    "input_channels", "IndexConfig",
    # configs by name (configs/, installed as medres.configs)
    "resolve_config_path", "list_shipped_configs",
]
