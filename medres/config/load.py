"""``load_config`` and friends: YAML -> validated ``Config``, ``--set`` overrides, dumps, hashes, diffs.

Public names are re-exported by ``medres.config``; import them from there.

Path rule: the input paths ``INPUT_PATH_FIELDS`` written in a config file are relative to that file's
folder; given with ``--set`` (or in a dict without a file) they are relative to the working directory.
Outputs (``output.dir``, ``data.cache_dir``) stay relative to the working directory. The text as
written is kept in ``cfg.original_paths`` for display.

Configs by name: ``load_config("ct_chest.yaml")`` reads ``ct_chest.yaml`` from the working directory when
it is there, else the configuration shipped inside the package (the repository's ``configs/``, installed
as ``medres.configs``;
``resolve_config_path``, ``list_shipped_configs``). A shipped configuration's relative paths resolve
against the working directory (it lives in site-packages once installed, where nothing else does).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medres.config.schema import Config, input_channels
from medres.config.tasks import task_layout
from medres.config.validation import is_mapping, model_in, suggest, translate_validation_error
from medres.config.yaml11 import AmbiguousInt, Yaml11Bool, load_yaml, load_yaml_value
from medres.errors import ConfigError
from medres.files import atomic_write

INPUT_PATH_FIELDS = (
    "data.manifest", "data.root", "data.image_folder", "data.demo.out", "model.pretrained.path",
    "cv.folds_file",
)
# Settings that may change when a run is resumed without --force: they do not change what is learned.
RESUME_IGNORED_FIELDS = (
    "data.num_workers", "data.cache", "data.cache_dir", "train.pin_memory", "train.checkpoint_every_steps",
    "evaluate.*", "output.tracking",
)


# ---------------------------------------------------------------------------------------------------
# YAML markers -> values


def _unmark(obj: Any, path: str, notes: dict[str, str], source: str | None) -> Any:
    if isinstance(obj, Yaml11Bool):
        notes[path] = obj.text
        return obj.value
    if isinstance(obj, AmbiguousInt):
        kind = "octal" if ":" not in obj.text else "base-60"
        raise ConfigError(
            f"{obj.text!r} is read by YAML 1.1 as the {kind} number {obj.value}", field=path or None,
            path=source, hint=f"write {obj.text.lstrip('0') or '0'} for the decimal number, or quote it "
            f"('{obj.text}') for text",
        )
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            # a key written yes/on is meant as text; 012 as a key (mask_labels) keeps YAML's number
            key = k.text if isinstance(k, Yaml11Bool) else k.value if isinstance(k, AmbiguousInt) else k
            out[key] = _unmark(v, f"{path}.{key}" if path else str(key), notes, source)
        return out
    if isinstance(obj, list):
        return [_unmark(v, f"{path}.{i}", notes, source) for i, v in enumerate(obj)]
    return obj


# ---------------------------------------------------------------------------------------------------
# overrides


def _models(annotation: Any) -> set[type[BaseModel]]:
    """Every pydantic model inside an annotation (``list[A | B]`` -> {A, B})."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for a in typing.get_args(annotation) for m in _models(a)}


def _check_override_path(parts: list[str], text: str) -> None:
    """ConfigError with a suggestion when ``a.b.c`` is not a setting of the schema."""
    model: type[BaseModel] | None = Config
    annotation: Any = Config
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if model is None:
            if is_mapping(annotation) or part.isdigit():
                annotation, model = Any, None
                continue
            raise ConfigError(f"--set {text!r}: {'.'.join(parts[:depth])} has no sub-settings", field=here)
        lists = [a for a in (annotation, *typing.get_args(annotation)) if typing.get_origin(a) is list]
        if part.isdigit() and lists:  # an item of a list: data.windows.0, tasks.1
            if len(_models(lists[0])) > 1:
                return  # an item of several kinds (tasks): its keys are checked once the value is applied
            continue
        if part not in model.model_fields:
            close = suggest(part, model.model_fields)
            raise ConfigError(
                f"--set {text!r}: unknown key {part!r}" + (f" — did you mean {close!r}?" if close else ""),
                field=here, hint=f"valid keys: {', '.join(model.model_fields)}",
            )
        annotation = model.model_fields[part].annotation
        model = model_in(annotation)


def _apply_override(raw: dict, text: str, notes: dict[str, str]) -> str:
    """Apply ``a.b.c=value`` to the raw mapping; returns the dotted key."""
    key, sep, value_text = text.partition("=")
    key = key.strip().removeprefix("--set").strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE", hint="e.g. --set train.epochs=5")
    parts = key.split(".")
    _check_override_path(parts, text)
    value = _unmark(load_yaml_value(value_text, field=key), key, notes, None)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if int(part) >= len(node):
                raise ConfigError(f"--set {text!r}: index {part} is past the list's end ({len(node)} items)",
                                  field=key)
            node = node[int(part)]
            continue
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            if parts[depth + 1].isdigit() and depth + 2 < len(parts):
                raise ConfigError(f"--set {text!r}: the configuration has no {'.'.join(parts[:depth + 1])} "
                                  "list to change an item of", field=key,
                                  hint="write the whole list in the configuration file")
            child = node[part] = {}
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if int(last) >= len(node):
            raise ConfigError(f"--set {text!r}: index {last} is past the list's end ({len(node)} items)",
                              field=key)
        node[int(last)] = value
    else:
        node[last] = value
    return key


# ---------------------------------------------------------------------------------------------------
# consistency checks after validation


def _check(cfg: Config, source: str | None) -> None:
    def fail(field: str, reason: str, hint: str = "") -> None:
        raise ConfigError(reason, field=field, hint=hint, path=source)

    d, m, loss = cfg.data, cfg.model, cfg.loss
    if not d.labels or len(set(d.labels)) != len(d.labels):
        fail("data.labels", f"the class vocabulary must be non-empty and unique; got {d.labels}")
    if d.positive_label is not None and d.positive_label not in d.labels:
        close = suggest(d.positive_label, d.labels)
        fail("data.positive_label", f"{d.positive_label!r} is not one of data.labels {d.labels}",
             f"did you mean {close!r}?" if close else "use one of data.labels")
    if sorted(d.mask_labels) != list(range(len(d.mask_labels))):
        fail("data.mask_labels", f"mask label values must be 0..K-1 with 0 = background; got "
             f"{sorted(d.mask_labels)}")
    dims = m.spatial_dims
    if dims != d.spatial_dims:
        fail("model.spatial_dims", f"model.spatial_dims={dims} but data.spatial_dims={d.spatial_dims}",
             "remove model.spatial_dims; it follows the data")
    if len(d.patch_size) != dims:
        fail("data.patch_size", f"{len(d.patch_size)} sizes for {dims}D data", f"give {dims} sizes")
    if d.spacing is not None and len(d.spacing) != dims:
        fail("data.spacing", f"{len(d.spacing)} spacings for {dims}D data", f"give {dims} values in mm")
    if d.normalize == "window" and d.modality != "CT":
        fail("data.normalize", f"window normalization is for CT (HU); data.modality is {d.modality}",
             "use zscore for MR, imagenet for natural images")
    if d.windows and not (d.modality == "CT" and d.normalize == "window"):
        fail("data.windows", f"{len(d.windows)} CT windows are listed but normalize is {d.normalize!r} "
             f"(modality {d.modality}), so the pipeline would ignore them and make "
             f"{input_channels(d)} channel(s)", "set data.normalize: window, or remove data.windows")
    if d.modality != "natural" and m.in_channels != input_channels(d):
        fail("model.in_channels", f"model.in_channels={m.in_channels} but the data pipeline makes "
             f"{input_channels(d)} channel(s) (image columns x CT windows)",
             "remove model.in_channels; it follows the data section")
    if not (m.cls_head or m.seg_head):
        fail("model.cls_head", "both heads are switched off", "keep at least one of cls_head / seg_head")
    if cfg.tasks is not None:  # one wide head sliced by the task layout
        layout = task_layout(cfg)
        if m.num_classes != layout.width:
            fail("model.num_classes", f"model.num_classes={m.num_classes} but the tasks need {layout.width} "
                 "outputs", "remove model.num_classes; it follows the tasks")
        single, w = layout.single_label, loss.cls.weights
        if isinstance(w, list) and (single is None or len(w) != len(single.classes)):
            k = f"{len(single.classes)} classes of task {single.name!r}" if single else "no single-label task"
            fail("loss.cls.weights", f"{len(loss.cls.weights)} class weights for {k}")
    elif d.image_folder is None and m.num_classes != len(d.labels):
        fail("model.num_classes", f"model.num_classes={m.num_classes} but data.labels has "
             f"{len(d.labels)} classes", "remove model.num_classes; it follows data.labels")
    if cfg.tasks is None and isinstance(loss.cls.weights, list) and len(loss.cls.weights) != m.num_classes:
        fail("loss.cls.weights", f"{len(loss.cls.weights)} class weights for {m.num_classes} classes")
    if cfg.train.batch_size % d.patches_per_volume:
        fail("data.patches_per_volume", f"train.batch_size {cfg.train.batch_size} is not a multiple of "
             f"data.patches_per_volume {d.patches_per_volume} (a batch holds whole volumes' patches)",
             "make train.batch_size a multiple of data.patches_per_volume")
    if loss.seg.class_weights is not None and len(loss.seg.class_weights) != m.seg_classes:
        fail("loss.seg.class_weights", f"{len(loss.seg.class_weights)} weights for {m.seg_classes} "
             "segmentation classes (background included)")


# ---------------------------------------------------------------------------------------------------
# configs by name (the ones shipped as medres.configs: the repository's configs/, mapped in setup.py)

def _shipped_folder() -> Path:
    try:
        return Path(str(importlib.resources.files("medres.configs"))).resolve()
    except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed: the repository's own folder
        return Path(__file__).resolve().parents[2] / "configs"


SHIPPED_CONFIGS = _shipped_folder()


def list_shipped_configs() -> dict[str, str]:
    """The configurations shipped in the package: file name -> the first sentence of its leading comment."""
    out = {}
    for p in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        lines = p.read_text(encoding="utf-8").splitlines()
        comment = []
        for ln in lines[next((i for i, ln in enumerate(lines) if ln.startswith("#")), len(lines)):]:
            if not ln.startswith("#"):
                break
            comment.append(ln.lstrip("#").strip())
        out[p.name] = first_sentence(" ".join(comment))
    return out


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence: not inside parentheses, not in a number (``0.7``)
    nor an abbreviation (``e.g.``, ``et al.``)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        ends = ch == "." and depth <= 0 and (i + 1 == len(text) or text[i + 1] == " ")
        if ends and not re.search(r"(?:\be\.g|\bi\.e|\bet al|\bcf|\bvs)$", text[:i]):
            return text[: i + 1]
    return text


def resolve_config_path(name: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Where the configuration ``name`` is, and whether it is a shipped one.

    An existing file wins (``ct_chest.yaml`` in the working directory, or any path). Otherwise a bare
    name (``ct_chest.yaml``, or ``ct_chest``), or ``configs/<name>.yaml`` (the repository's layout, whose
    files are the shipped ones), means the shipped file of that name. A file inside the shipped
    folder (``configs/`` of the repository, ``medres/configs/`` once installed) counts as shipped however
    it is addressed.

    Raises:
        ConfigError: nothing of that name exists; the hint lists the shipped names.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path, path.resolve().parent == SHIPPED_CONFIGS
    wanted = path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml"
    by_name = path.parent == Path(".") or (path.parent.name == "configs" and not path.parent.is_dir())
    shipped = SHIPPED_CONFIGS / wanted
    if by_name and shipped.is_file():
        return shipped, True
    raise ConfigError("config file not found", path=str(name),
                      hint="check the --config path, or give the name of a shipped configuration: "
                           f"{', '.join(list_shipped_configs()) or '(none installed)'} "
                           "(python -m medres.train --list-configs)")


# ---------------------------------------------------------------------------------------------------
# public API


def _resolve_paths(cfg: Config, base: Path, cwd_fields: set[str]) -> Config:
    raw = cfg.model_dump(mode="python")
    originals: dict[str, str] = {}
    for field in INPUT_PATH_FIELDS:
        *parents, leaf = field.split(".")
        node: Any = raw
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(leaf) is None:
            continue
        text = node[leaf]
        originals[field] = text
        anchor = Path.cwd() if field in cwd_fields else base
        node[leaf] = os.path.normpath(anchor / Path(text).expanduser())
    out = Config.model_validate(raw)
    out._source, out._original_paths = cfg.source, originals
    return out


def load_config(path: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                overrides: Iterable[str] = (), *, data: Mapping[str, Any] | None = None) -> Config:
    """Read, override, validate and resolve a configuration.

    Args:
        path: a YAML file, or the name of a shipped one (``resolve_config_path``), or a mapping (like
            ``data``); None with ``data`` None: all defaults.
        overrides: ``"a.b.c=value"`` strings (``--set``); each value is read as YAML (``5``, ``1e-3``,
            ``[32,32,32]``, ``balanced``) and validated like the file's.
        data: the configuration as a mapping instead of a file (relative paths: working directory).

    Returns:
        The validated ``Config`` with derived defaults filled (``Config.resolved``) and input paths
        absolute (see the module docstring).

    Raises:
        ConfigError: naming the file, the dotted field, what is wrong and a hint (closest valid key).
    """
    if isinstance(path, Mapping):
        path, data = None, path
    if path is not None and data is not None:
        raise ConfigError("give a config file or a mapping, not both")
    source = None
    if path is not None:
        path, shipped = resolve_config_path(path)
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", path=source, hint="check the --config path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the config file: {e.__class__.__name__}", path=source) from None
        raw = load_yaml(text, path=source)
        base = Path.cwd() if shipped else Path(path).expanduser().resolve().parent
    else:
        raw = dict(data) if data is not None else {}
        base = Path.cwd()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, not {type(raw).__name__}",
                          path=source, hint="start with e.g. 'data:' on the first line")
    notes: dict[str, str] = {}
    raw = _unmark(raw, "", notes, source)
    cwd_fields: set[str] = set()
    for text in overrides:
        key = _apply_override(raw, text, notes)
        cwd_fields.update(f for f in INPUT_PATH_FIELDS if f == key or f.startswith(key + "."))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise translate_validation_error(e, notes, source) from None
    cfg._source = source
    cfg = _resolve_paths(cfg.resolved(), base, cwd_fields)
    _check(cfg, source)
    return cfg


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def config_to_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML (every field, defaults included); ``load_config`` reads it back
    to an equal ``Config``."""
    return yaml.safe_dump(_plain(cfg.model_dump(mode="python")), sort_keys=False, allow_unicode=True)


def save_resolved(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``config_to_yaml(cfg)`` to ``path`` (e.g. ``runs/<name>/config.yaml``) atomically."""
    text = f"# resolved medres configuration (sha256 {config_hash(cfg)[:12]})\n" + config_to_yaml(cfg)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def config_hash(cfg: Config) -> str:
    """sha256 (hex) of the resolved dump: equal configurations, equal hash, on every run."""
    return hashlib.sha256(config_to_yaml(cfg).encode("utf-8")).hexdigest()


def flatten_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}``: dotted keys; an empty mapping is a value."""
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _ignored(field: str, ignore: Iterable[str]) -> bool:
    return any(field == p or (p.endswith(".*") and field.startswith(p[:-1])) for p in ignore)


def diff_configs(a: Config | Mapping[str, Any], b: Config | Mapping[str, Any], *,
                 ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """The settings that differ, as ``(dotted field, value in a, value in b)`` sorted by field.

    Accepts Configs or plain dicts (a checkpoint's ``config``). Fields matching ``ignore`` (exact or
    ``section.*``) are left out. Lists compare whole (``data.patch_size``). A field one side lacks (a
    configuration saved before the field existed) that holds its schema default on the other is no
    change: a new field's default keeps the old behaviour.
    """
    fa = flatten_dict(_plain(a.model_dump(mode="python") if isinstance(a, Config) else dict(a)))
    fb = flatten_dict(_plain(b.model_dump(mode="python") if isinstance(b, Config) else dict(b)))
    ignore = tuple(ignore)
    missing = object()
    defaults = flatten_dict(_plain(Config().model_dump(mode="python")))
    out = []
    for field in sorted(set(fa) | set(fb)):
        va, vb = fa.get(field, missing), fb.get(field, missing)
        if missing in (va, vb) and (vb if va is missing else va) == defaults.get(field, missing):
            continue
        if va != vb and not _ignored(field, ignore):
            out.append((field, None if va is missing else va, None if vb is missing else vb))
    return out


def check_resume_config(saved: Config | Mapping[str, Any], current: Config, *, force: bool = False,
                        ignore: Iterable[str] = RESUME_IGNORED_FIELDS) -> list[tuple[str, Any, Any]]:
    """Compare a run's saved configuration with the current one before resuming.

    Returns the differences (including ignored ones, for logging when ``force``); raises ConfigError
    listing them when any learning-relevant setting changed and ``force`` is False.
    """
    changes = diff_configs(saved, current, ignore=ignore)
    if changes and not force:
        lines = "\n".join(f"  - {f}: {va!r} -> {vb!r}" for f, va, vb in changes[:20])
        more = f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else ""
        raise ConfigError(f"the configuration changed since the run started:\n{lines}{more}",
                          field=changes[0][0],
                          hint="resume with the run's config.yaml, start a new run (output.name), or pass "
                               "--force to continue anyway")
    return changes
