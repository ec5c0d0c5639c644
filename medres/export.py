"""``python -m medres.export``: a run's fold models as ONNX, TorchScript and safetensors, with a model card.

    python -m medres.export --run runs/ct_chest --out exported/ [--format onnx torchscript] [--folds 0 1]

Written to ``--out``:

- ``fold<k>.safetensors``: each fold model's weights (the format ``medres.predict --model`` loads);
- ``fold<k>.onnx`` and ``ensemble.onnx`` (every fold model in one graph: a window in, the mean of the
  folds' calibrated class probabilities and of their softmax maps out, and each fold's logits), and
  ``fold<k>.torchscript.pt``; each takes one window ``[B, C, *patch]`` and returns
  ``(cls_logits [B, K], seg_logits [B, S, *patch])``;
- ``export.json``: everything needed to rebuild the exact preprocessing and inference without the run
  folder: the resolved configuration with every path and the data source removed, each member's
  architecture, calibration map and files with their SHA-256, the versions;
- ``checks.json``: ONNX (onnxruntime) and TorchScript against PyTorch on a real scan of the cohort,
  through the whole pipeline and sliding-window inference: maximum absolute difference of the class
  probabilities and of the segmentation probabilities (must be at most 1e-4);
- ``model_card.md`` and ``model_card.json``: intended use, the training cohort (counts by site,
  scanner, sex, age band; label prevalence), preprocessing, architecture and parameter count, recipe,
  out-of-fold and test metrics with their intervals (taken from the run's ``report/summary.json``, so
  they match the report), calibration, subgroups, limitations, versions and hashes.

With ``tasks:`` each graph has one named output per task, a slice of the classification head, in config
order, then ``seg_logits``: a binary/multiclass task's logits ``[B, K]``, a multilabel task's logits ``[B,
columns]`` (sigmoid each), a regression task's value ``[B, 1]`` in STANDARDISED units (value = output x sd +
mean, with each member's ``task_scales`` in export.json); ``export.json`` lists the tasks and their outputs,
the model card each task's prevalence (labels) or distribution (regression) in the cohort. ``ensemble.onnx``
then has one output per task too, in config order (the members' means: calibrated probabilities of a
binary/multiclass task ``[B, K]``, calibrated probabilities per column of a multilabel task ``[B, columns]``,
a regression task's value in the target's UNITS ``[B, 1]``), then ``seg_probs`` and ``member_cls_logits``
(export.json's ``ensemble_window`` lists them).

No exported file holds a path or a patient identifier (TorchScript archives are written without
their debug tables, which name source files). ``medres.predict --model DIR`` predicts from the
export alone.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medres.errors import ConfigError, DataError, MedresError
from medres.runfolder import RunFolder, member_fold, member_name
from medres.safe_text import markdown_text as md

__all__ = ["export_run", "main", "MAX_ABS_DIFF"]

log = logging.getLogger("medres.export")

#: The largest difference of probabilities accepted between an exported graph and PyTorch.
MAX_ABS_DIFF = 1e-4
FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17

#: Config fields that name files or folders (of the data, the run or pretrained weights): never exported.
_PATH_FIELDS = {"data": ("manifest", "demo", "image_folder", "root", "cache_dir"), "model": ("pretrained",),
                "cv": ("folds_file",)}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file (as recorded in export.json)."""
    from medres.inference.members import sha256_file as digest

    return digest(path)


def _summary_name() -> str:
    """The report's summary file, relative to the run folder (as the messages and the card name it)."""
    return RunFolder("").report.summary.as_posix()


def export_config(config: Any) -> dict:
    """The resolved configuration as plain JSON, with every path and the data source removed."""
    cfg = config.model_dump(mode="json")
    for section, fields in _PATH_FIELDS.items():
        for f in fields:
            if f in cfg.get(section, {}):
                cfg[section][f] = None
    cfg["output"] = {"dir": "runs", "name": str(cfg.get("output", {}).get("name", "run"))}
    return cfg


class _Plain:
    """Wrap a model so it returns a ``(cls_logits, seg_logits)`` pair of tensors (tracing needs tensors)."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch
        from torch import nn

        from medres.inference.sliding import split_output

        class Plain(nn.Module):
            def __init__(self, m: nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                cls, seg = split_output(self.m(x))
                if cls is None:
                    cls = x.new_zeros((x.shape[0], 0))
                if seg is None:
                    seg = x.new_zeros((x.shape[0], 0, *x.shape[2:]))
                return cls, seg

        return Plain(model).eval()


def _layout(config: Any) -> Any:
    """The configuration's ``TaskLayout`` with ``tasks:``, else None (today's single head)."""
    from medres.config.tasks import task_layout

    return task_layout(config) if config.tasks is not None else None


def output_names(config: Any) -> tuple[str, ...]:
    """The exported graphs' outputs: ``cls_logits, seg_logits``, or with ``tasks:`` one per task (its name)
    then ``seg_logits``."""
    layout = _layout(config)
    if layout is None:
        return ("cls_logits", "seg_logits")
    names = tuple(s.name for s in layout)
    if "seg_logits" in names or "window" in names:
        raise ConfigError("a task named 'seg_logits' or 'window' would clash with the exported graph's "
                          "input or segmentation output", field="tasks",
                          hint="rename the task before exporting")
    return (*names, "seg_logits")


class _TaskOutputs:
    """Wrap a model so it returns one tensor per task (its slice of ``cls_logits``), then ``seg_logits``."""

    @staticmethod
    def wrap(model: Any, layout: Any) -> Any:
        import torch
        from torch import nn

        bounds = [(s.start, s.stop) for s in layout]

        class TaskOutputs(nn.Module):
            def __init__(self, m: nn.Module) -> None:
                super().__init__()
                self.m = _Plain.wrap(m)

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                cls, seg = self.m(x)
                return (*[cls[:, a:b] for a, b in bounds], seg)

        return TaskOutputs(model).eval()


class _Joined:
    """An exported task graph read back as ``(cls_logits, seg_logits)``: its task outputs concatenated."""

    @staticmethod
    def wrap(runner: Any) -> Any:
        import torch
        from torch import nn

        class Joined(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.r = runner

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                out = self.r(x)
                return torch.cat(list(out[:-1]), dim=1), out[-1]

        return Joined()


def _ensemble_module(models: Sequence[Any], calibrations: Sequence[Mapping | None]) -> Any:
    """One module for all members: a window in; mean calibrated class probabilities, mean softmax map and
    each member's class logits out. Temperature and Platt maps are applied in the graph."""
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList([_Plain.wrap(m) for m in models])
            self.cal = [dict(c) if c else {"method": "none"} for c in calibrations]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            probs, segs, logits = [], [], []
            for member, cal in zip(self.members, self.cal):
                cls, seg = member(x)
                z = torch.log_softmax(cls, dim=1)
                if cal["method"] == "temperature":
                    p = torch.softmax(z / float(cal["temperature"]), dim=1)
                elif cal["method"] == "platt":
                    pos = int(cal["positive"])
                    d = z[:, pos] - z[:, 1 - pos]
                    pp = torch.sigmoid(float(cal["a"]) * d + float(cal["b"]))
                    p = torch.stack([1 - pp, pp] if pos == 1 else [pp, 1 - pp], dim=1)
                else:
                    p = torch.softmax(z, dim=1)
                probs.append(p)
                segs.append(torch.softmax(seg, dim=1))
                logits.append(cls)
            return torch.stack(probs).mean(0), torch.stack(segs).mean(0), torch.stack(logits, dim=1)

    return Ensemble().eval()


#: the ensemble graph's outputs after its task outputs (with ``tasks:``) or instead of ``cls_probs``
ENSEMBLE_OUTPUTS = ("seg_probs", "member_cls_logits")


def ensemble_output_names(config: Any) -> tuple[str, ...]:
    """``ensemble.onnx``'s outputs: ``cls_probs, seg_probs, member_cls_logits``, or with ``tasks:`` one per
    task (its name, in config order), then ``seg_probs, member_cls_logits``."""
    layout = _layout(config)
    if layout is None:
        return ("cls_probs", *ENSEMBLE_OUTPUTS)
    names = tuple(s.name for s in layout)
    clash = sorted(set(names) & {*ENSEMBLE_OUTPUTS, "window"})
    if clash:
        raise ConfigError(f"a task named {clash[0]!r} would clash with an output of the exported ensemble "
                          "graph", field="tasks", hint="rename the task before exporting")
    return (*names, *ENSEMBLE_OUTPUTS)


def _task_ensemble_module(models: Sequence[Any], calibrations: Sequence[Mapping | None], layout: Any) -> Any:
    """The fold ensemble of a ``tasks:`` model in one module: a window in; per task (config order) the mean
    over members of a binary/multiclass task's calibrated class probabilities ``[B, K]``, of a multilabel
    task's calibrated probabilities per column ``[B, columns]`` (each column's map under the member's
    ``calibration.tasks``), of a regression task's value in the target's units ``[B, 1]`` (each member's
    ``task_scales``); then the mean softmax map and each member's head outputs ``[B, members, width]``.
    The maps are applied in the graph as `medres.inference.tasks.task_outputs` applies them."""
    import torch
    from torch import nn

    from medres.inference.tasks import regression_scale

    def column_map(cal: Mapping | None, task: str, column: str) -> dict:
        entry = ((((cal or {}).get("tasks") or {}).get(task) or {}).get("columns") or {}).get(column) or {}
        return {k: v for k, v in entry.items() if k != "operating_point"} or {"method": "none"}

    slots = list(layout)
    maps = [{s.name: ([column_map(c, s.name, col) for col in s.classes] if s.type == "multilabel" else
                      regression_scale(c, s.name) if s.type == "regression" else None) for s in slots}
            for c in calibrations]

    def calibrated(z: torch.Tensor, cal: Mapping) -> torch.Tensor:
        """Probabilities ``[B, K]`` from log-probabilities or two-class logits ``[B, K]``."""
        method = cal.get("method", "none")
        if method == "temperature":
            return torch.softmax(z / float(cal["temperature"]), dim=1)
        if method == "platt":
            pos = int(cal["positive"])
            pp = torch.sigmoid(float(cal["a"]) * (z[:, pos] - z[:, 1 - pos]) + float(cal["b"]))
            return torch.stack([1 - pp, pp] if pos == 1 else [pp, 1 - pp], dim=1)
        if method != "none":
            raise ConfigError(f"unknown calibration method {method!r} in a member's map",
                              hint="export a run whose calibration.json medres wrote")
        return torch.softmax(z, dim=1)

    class TaskEnsemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList([_Plain.wrap(m) for m in models])
            self.cal = [dict(c) if c else {} for c in calibrations]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            per_task: list[list[torch.Tensor]] = [[] for _ in slots]
            segs, logits = [], []
            for member, cal, mm in zip(self.members, self.cal, maps):
                cls, seg = member(x)
                for i, s in enumerate(slots):
                    z = cls[:, s.start:s.stop]
                    if s.type == "multilabel":
                        cols = [calibrated(torch.stack([torch.zeros_like(z[:, j]), z[:, j]], dim=1),
                                           mm[s.name][j])[:, 1] for j in range(z.shape[1])]
                        per_task[i].append(torch.stack(cols, dim=1))
                    elif s.type == "regression":
                        mean, sd = mm[s.name]
                        per_task[i].append(z * sd + mean)
                    else:  # binary / multiclass: the member's top-level map, as for today's head
                        per_task[i].append(calibrated(torch.log_softmax(z, dim=1), cal))
                segs.append(torch.softmax(seg, dim=1))
                logits.append(cls)
            return (*[torch.stack(p).mean(0) for p in per_task], torch.stack(segs).mean(0),
                    torch.stack(logits, dim=1))

    return TaskEnsemble().eval()


def _ensemble_graph(models: Sequence[Any], calibrations: Sequence[Mapping | None], layout: Any) -> Any:
    """The module ``ensemble.onnx`` is traced from (today's head, or one output per task)."""
    if layout is None:
        return _ensemble_module(models, calibrations)
    return _task_ensemble_module(models, calibrations, layout)


def _onnx_export(module: Any, example: Any, path: Path, outputs: Sequence[str]) -> None:
    import torch

    # The TorchScript-based exporter (dynamo=False): it handles this fixed-shape convolutional graph in
    # one pass, needs no onnxscript, and its outputs match PyTorch to ~1e-6 (checks.json).
    torch.onnx.export(module, (example,), str(path), input_names=["window"], output_names=list(outputs),
                      dynamic_axes={"window": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                      opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)


def _torchscript_export(module: Any, example: Any, path: Path) -> None:
    """Trace and save without the debug tables (``*.debug_pkl`` name the source files: paths)."""
    import torch

    traced = torch.jit.trace(module, (example,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            if item.filename.endswith(".debug_pkl"):
                continue
            dst.writestr(item, src.read(item.filename))


class _OrtModel:
    """An onnxruntime session behaving like a model for ``infer_volume``: window in, (cls, seg) out."""

    @staticmethod
    def wrap(path: Path) -> Any:
        import numpy as np
        import onnxruntime as ort
        import torch
        from torch import nn

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        names = [o.name for o in session.get_outputs()]

        class OrtModel(nn.Module):
            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                out = session.run(names, {"window": x.detach().cpu().numpy()})
                cls = out[0] if len(out) == 2 else np.concatenate(out[:-1], axis=1)  # task outputs joined
                return torch.from_numpy(cls), torch.from_numpy(out[-1])

        return OrtModel()


def _check_volume(config: Any, records: list[dict]) -> tuple[Any, str] | None:
    """The first scan of the cohort through the evaluation pipeline, or None when none can be read."""
    from medres.data.pipeline.transforms import build_transforms

    transform = build_transforms(config.data, train=False)
    for rec in records[:3]:
        try:
            return transform({"image": rec["image"]})["image"], str(rec.get("case_id", ""))
        except Exception:  # noqa: BLE001 - an unreadable scan: try the next one
            continue
    return None


def _probabilities(models: Sequence[Any], image: Any, config: Any) -> list[tuple[Any, Any]]:
    import torch

    from medres.inference.sliding import SlidingWindow, infer_volume_models

    ev = config.evaluate
    layout = _layout(config)
    out = []
    window = SlidingWindow(list(config.data.patch_size), ev.sliding_window_overlap)
    for pred in infer_volume_models(models, image, window, device="cpu", layout=layout):
        seg = torch.softmax(pred.seg_logits.float(), 0) if pred.seg_logits is not None and \
            pred.seg_logits.shape[0] else None
        out.append((pred.cls_probs if layout is None else pred.task_values, seg))
    return out


def _max_diff(a: Any, b: Any) -> float:
    import torch

    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    return float(torch.max(torch.abs(a.double() - b.double())))


def _cohort(config: Any, manifest: Any) -> dict:
    """Counts of the development cohort (``split`` != test): scans, patients, by site/scanner/sex/age band."""
    from medres.report.subgroups import add_age_band

    df = manifest.copy()
    if "split" in df.columns:
        df = df[df["split"].astype(str).str.lower() != "test"]
    df = add_age_band(df)
    out: dict[str, Any] = {"scans": int(len(df)), "patients": int(df["patient_id"].nunique())}
    for col in ("site", "scanner", "sex", "age_band"):
        if col in df.columns:
            values = df[col].astype(str).replace({"": "unknown", "nan": "unknown", "None": "unknown"})
            out[f"by_{col}"] = {str(k): int(v) for k, v in values.value_counts().sort_index().items()}
    if config.tasks is not None:
        out["tasks"] = task_summary(df, config.tasks)
    elif "label" in df.columns:
        counts = df["label"].astype(str).value_counts()
        out["labels"] = {c: {"scans": int(counts.get(c, 0)),
                             "prevalence": float(counts.get(c, 0) / max(len(df), 1))}
                         for c in config.data.labels}
    return out


def task_summary(df: Any, tasks: Sequence[Any]) -> dict:
    """Per task: each label's known cases, positives and prevalence among the known (binary, multilabel;
    per class for multiclass), or the distribution of a regression target (known, mean, sd, quartiles)."""
    import numpy as np

    from medres.data.tasks import parse_task_targets

    table = parse_task_targets(df, list(tasks))
    out: dict[str, Any] = {}
    for task in tasks:
        t = table[task.name]
        entry: dict[str, Any] = {"type": task.type, "columns": {}}
        for j, col in enumerate(t.columns):
            v = t.values[:, j][np.isfinite(t.values[:, j])]
            if task.type == "regression":
                q = np.percentile(v, [0, 25, 50, 75, 100]) if v.size else [float("nan")] * 5
                stats = {"known": int(v.size), "mean": float(v.mean()) if v.size else None,
                         "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                         **{k: float(x) if v.size else None for k, x in zip(("min", "q1", "median", "q3",
                                                                              "max"), q)}}
                entry["unit"] = task.unit
            elif task.type == "multiclass":
                classes = list(task.classes)
                stats = {"known": int(v.size), "classes": {c: {"scans": int((v == k).sum()), "prevalence":
                                                               float((v == k).mean()) if v.size else None}
                                                           for k, c in enumerate(classes)}}
            else:
                stats = {"known": int(v.size), "positive": int(v.sum()),
                         "prevalence": float(v.mean()) if v.size else None}
            entry["columns"][col] = stats
        out[task.name] = entry
    return out


def _task_lines(tasks: Mapping) -> list[str]:
    """The model card's lines for the cohort's tasks."""
    lines = ["", "**tasks**:"]
    for name, entry in tasks.items():
        parts = []
        for col, st in entry["columns"].items():
            if entry["type"] == "regression":
                unit = f" {md(entry['unit'])}" if entry.get("unit") else ""
                sd = "" if st["sd"] is None else f" (sd {st['sd']:.3g})"
                parts.append(f"{md(col)}: {st['known']} known" + (
                    f", mean {st['mean']:.4g}{unit}{sd}, median {st['median']:.4g} "
                    f"[{st['q1']:.4g}, {st['q3']:.4g}]" if st["known"] else ""))
            elif entry["type"] == "multiclass":
                parts += [f"{md(c)}: {v['scans']} ({(v['prevalence'] or 0):.1%})"
                          for c, v in st["classes"].items()]
            else:
                prev = "" if st["prevalence"] is None else f" ({st['prevalence']:.1%})"
                parts.append(f"{md(col)}: {st['positive']} of {st['known']} known{prev}")
        lines.append(f"- {md(name)} ({entry['type']}): " + "; ".join(parts))
    return lines


def _summary_metrics(summary: Mapping) -> dict:
    """The report's headline records (summary.json), grouped for the card: unchanged values."""
    keep = {
        "oof": lambda r: r["scope"] == "pooled" and r["subgroup"] == "all",
        "test_folds": lambda r: r["scope"] == "test",
        "test_ensemble": lambda r: r["scope"] == "test_ensemble",
        "calibration": lambda r: r["scope"] == "calibration",
        "subgroups": lambda r: r["scope"] == "subgroup" and r["metric"] in ("auroc", "prevalence"),
    }
    fields = ("scope", "subgroup", "fold", "head", "class", "metric", "value", "ci_low", "ci_high",
              "ci_method", "n", "n_pos", "note")
    return {name: [{k: r.get(k) for k in fields} for r in summary.get("records", []) if test(r)]
            for name, test in keep.items()}


def export_run(run_dir: str | Path, out: str | Path, *, formats: Sequence[str] = FORMATS,
               folds: Sequence[int] | None = None, check: bool = True) -> Path:
    """Export a run folder's fold models (see the module docstring); returns ``out``."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        # the exporters' deprecation notices and the tracer's notes on shape checks in the model code
        # (constant for the fixed window size exported) are not the user's concern
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.filterwarnings("ignore", category=category)
        return _export_run(Path(run_dir), Path(out), formats, folds, check)


def _export_run(run_dir: Path, out: Path, formats: Sequence[str], folds: Sequence[int] | None,
                check: bool) -> Path:
    from medres.inference.ensemble import load_run_members

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown export format {bad[0]!r}", hint=f"use {' '.join(FORMATS)}")
    from medres.files import check_output, check_replace, claim_outputs

    check_output(out, inputs={"run folder": run_dir}, what="export folder (--out)")
    summary_path = RunFolder(run_dir).report.summary
    if not summary_path.is_file():
        raise DataError(f"the run has no {_summary_name()} (the model card quotes its metrics)",
                        path=run_dir, hint=f"python -m medres.evaluate --run {run_dir}")
    wanted = list(folds) if folds is not None else RunFolder(run_dir).trained_folds()
    written = _export_files(wanted, formats)
    check_replace(out, written, what="export folder (--out)")  # before the models are read
    models, config, cals, names = load_run_members(run_dir, folds)
    manifest = config.data.manifest  # the export's checks read a cohort scan through it
    check_output(out, inputs={"run's manifest": manifest,
                              "manifest's folder": Path(manifest).parent if manifest else None},
                 what="export folder (--out)", may_lie_inside={"manifest's folder"})
    with claim_outputs(out, written, what="export folder (--out)"):
        return _write_export(run_dir, out, formats, models, config, cals, names, check, summary_path)


def _export_files(folds: Sequence[int], formats: Sequence[str]) -> list[str]:
    """Every file an export of these folds in these formats may write."""
    names = ["checks.json", "export.json", "model_card.json", "model_card.md"]
    if "onnx" in formats and len(folds) > 1:
        names.append("ensemble.onnx")
    for k in folds:
        names += [f"{member_name(k)}.safetensors"] + [f"{member_name(k)}{_SUFFIX[f]}" for f in formats
                                                       if f in _SUFFIX]
    return names


_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def _write_export(run_dir: Path, out: Path, formats: Sequence[str], models: list, config: Any, cals: list,
                  names: list[str], check: bool, summary_path: Path) -> Path:
    import torch

    summary = json.loads(summary_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg_plain = export_config(config)
    patch = list(config.data.patch_size)
    in_ch = int(config.model.in_channels or 1)
    example = torch.zeros((1, in_ch, *patch))
    members = []
    layout, outputs = _layout(config), output_names(config)
    from medres.checkpoint import load_checkpoint

    # the checked reader (mapped, not read again): the same files load_run_members just verified
    run = RunFolder(run_dir)
    states = [load_checkpoint(run.member(n).predicting_checkpoint(), mmap=True) for n in names]
    for name, model, cal, state in zip(names, models, cals, states):
        from safetensors.torch import save_file

        files = {"safetensors": f"{name}.safetensors"}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / files["safetensors"]),
                  metadata={"format": "medres", "member": name})
        plain = _Plain.wrap(model) if layout is None else _TaskOutputs.wrap(model, layout)
        if "onnx" in formats:
            files["onnx"] = f"{name}{_SUFFIX['onnx']}"
            _onnx_export(plain, example, out / files["onnx"], outputs)
        if "torchscript" in formats:
            files["torchscript"] = f"{name}{_SUFFIX['torchscript']}"
            _torchscript_export(plain, example, out / files["torchscript"])
        members.append({"name": name, "fold": member_fold(name), "model_spec": state["model_spec"],
                        "calibration": cal, "epoch": int(state.get("epoch", 0)),
                        "best": state.get("best"), "best_epoch": state.get("best_epoch"),
                        "parameters": int(sum(p.numel() for p in model.parameters())), "files": files})
        if layout is not None:
            members[-1]["task_scales"] = state.get("task_scales")
    ensemble_file = None
    if "onnx" in formats and len(models) > 1:
        ensemble_file = "ensemble.onnx"
        _onnx_export(_ensemble_graph(models, cals, layout), example, out / ensemble_file,
                     ensemble_output_names(config))

    checks = _run_checks(run_dir, out, config, models, members, ensemble_file, example) if check else {}
    (out / "checks.json").write_text(json.dumps(checks, indent=1) + "\n")
    versions = _versions()
    written = [*(f for m in members for f in m["files"].values()), "checks.json",
               *([ensemble_file] if ensemble_file else [])]  # this export's files, not others in the folder
    hashes = {n: sha256_file(out / n) for n in sorted(written)}
    from medres.inference.members import EXPORT_FORMAT

    meta = {"format": EXPORT_FORMAT, "config": cfg_plain, "labels": list(config.data.labels),
            "members": members, "ensemble_onnx": ensemble_file, "onnx_opset": ONNX_OPSET,
            "window": {"inputs": ["window [B, C, *patch]"], "outputs": ["cls_logits [B, K]",
                                                                         "seg_logits [B, S, *patch]"]},
            "versions": versions, "sha256": hashes}
    if layout is not None:
        meta["window"]["outputs"] = [f"{s.name} [B, {s.stop - s.start}]" for s in layout] + \
            ["seg_logits [B, S, *patch]"]
        meta["tasks"] = task_outputs_meta(layout)
    if ensemble_file is not None:
        meta["ensemble_window"] = {"inputs": ["window [B, C, *patch]"], "outputs": _ensemble_outputs_meta(
            layout, len(members))}
    (out / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    card = model_card(config, cfg_plain, members, summary, run_dir, checks, versions, hashes, ensemble_file)
    (out / "model_card.json").write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    (out / "model_card.md").write_text(card_markdown(card))
    log.info("exported %d model(s) to %s", len(members), out)
    return out


def task_outputs_meta(layout: Any) -> list[dict]:
    """export.json's ``tasks``: each task's output, its slice of the classification head and its meaning."""
    softmax = "logits (softmax over the classes)"
    meaning = {"binary": softmax, "multiclass": softmax,
               "multilabel": "one logit per column (sigmoid each; calibration maps per column under each "
                             "member's calibration.tasks)",
               "regression": "standardised value: value = output x sd + mean (each member's task_scales); "
                             "interval half-width under each member's calibration.tasks"}
    return [{"name": s.name, "type": s.type, "output": s.name, "slice": [s.start, s.stop],
             "classes": list(s.classes), "meaning": meaning[s.type],
             **({"unit": s.task.unit, "interval": s.task.interval} if s.type == "regression" else {})}
            for s in layout]


def _ensemble_outputs_meta(layout: Any, n_members: int) -> list[str]:
    """export.json's ``ensemble_window.outputs``: each output of ``ensemble.onnx``, shape and meaning."""
    tail = ["seg_probs [B, S, *patch]: mean of the members' softmax maps",
            f"member_cls_logits [B, {n_members}, K]: each member's head outputs"]
    if layout is None:
        return ["cls_probs [B, K]: mean of the members' calibrated class probabilities", *tail]
    meaning = {"binary": "mean of the members' calibrated class probabilities",
               "multiclass": "mean of the members' calibrated class probabilities",
               "multilabel": "mean of the members' calibrated probabilities per column",
               "regression": "mean of the members' values in the target's units (interval half-width: the "
                             "mean of the members' calibration.tasks half-widths)"}
    return [f"{s.name} [B, {s.stop - s.start}]: {meaning[s.type]}" for s in layout] + tail


def _read_cohort_manifest(config: Any) -> Any:
    """The run's manifest as training read it: ``label`` from ``data.labels`` without ``tasks:``; with
    ``tasks:`` the label column dropped when no task reads it (its values need not be in ``data.labels``)."""
    from medres.data.manifest import read_manifest

    tasks = config.tasks
    df = read_manifest(config.data.manifest, vocabulary=config.data.labels if tasks is None else None,
                       root=config.data.root, link_roots=config.data.link_roots,
                       key_file=config.data.index.key_file)
    if tasks is not None and "label" in df.columns and not any("label" in t.target_columns() for t in tasks):
        df = df.drop(columns="label")
    return df


def _run_checks(run_dir: Path, out: Path, config: Any, models: list, members: list[dict],
                ensemble_file: str | None, example: Any) -> dict:
    """Exported graphs against PyTorch on a real cohort scan (whole pipeline, sliding windows)."""
    import torch

    from medres.data.pipeline.datasets import manifest_to_records

    try:
        manifest = _read_cohort_manifest(config)
        found = _check_volume(config, manifest_to_records(manifest, config.data))
    except (MedresError, OSError, TypeError):
        found = None
    if found is None:
        return {"note": "no scan of the cohort could be read: the exported graphs were not checked"}
    image, _ = found
    ref = _probabilities(models, image, config)
    result: dict[str, Any] = {"scan": "the first readable scan of the training cohort (not named here)",
                              "grid": [int(s) for s in image.shape[1:]], "tolerance": MAX_ABS_DIFF,
                              "members": {}}
    for m, member in enumerate(members):
        rows = {}
        runners = {}
        if "onnx" in member["files"]:
            runners["onnx"] = _OrtModel.wrap(out / member["files"]["onnx"])
        if "torchscript" in member["files"]:
            runners["torchscript"] = torch.jit.load(str(out / member["files"]["torchscript"]),
                                                    map_location="cpu")
            if config.tasks is not None:
                runners["torchscript"] = _Joined.wrap(runners["torchscript"])
        for fmt_name, runner in runners.items():
            (cls, seg), = _probabilities([runner], image, config)
            rows[fmt_name] = {"cls_max_abs_diff": _max_diff(cls, ref[m][0]),
                              "seg_max_abs_diff": _max_diff(seg, ref[m][1])}
        result["members"][member["name"]] = rows
    if ensemble_file is not None:
        window = _center_window(image, list(config.data.patch_size))
        result["ensemble_window"] = _ensemble_window_check(out / ensemble_file, config, models,
                                                           [m["calibration"] for m in members], window)
    diffs = [v for rows in result["members"].values() for r in rows.values() for v in r.values()]
    diffs += list(result.get("ensemble_window", {}).values())
    result["max_abs_diff"] = max(diffs) if diffs else None
    result["passed"] = bool(diffs) and max(diffs) <= MAX_ABS_DIFF
    if not result["passed"]:
        raise ConfigError(f"an exported graph differs from PyTorch by {max(diffs):.3g} (> {MAX_ABS_DIFF})",
                          path=out / "checks.json", hint="report this; export with --format torchscript only")
    return result


def _ensemble_window_check(path: Path, config: Any, models: Sequence[Any],
                           calibrations: Sequence[Mapping | None], window: Any) -> dict[str, float]:
    """``ensemble.onnx`` (onnxruntime) against the PyTorch ensemble on one window: the largest difference
    of the task or class outputs and of the mean softmax map."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ensemble_output_names(config)[:-1]  # the probabilities (and values), not the members' logits
    got = session.run(list(names), {"window": window.numpy()})
    want = _ensemble_graph(models, calibrations, _layout(config))(window)
    cls_diff = max(_max_diff(torch.from_numpy(g), w) for g, w in zip(got[:-1], want[:-1]))
    return {"cls_max_abs_diff": cls_diff, "seg_max_abs_diff": _max_diff(torch.from_numpy(got[-1]), want[-2])}


def _center_window(image: Any, patch: list[int]) -> Any:
    """A patch-size window ``[1, C, *patch]`` from the centre of ``image`` [C, *spatial] (zero-padded)."""
    import torch

    x = torch.as_tensor(image).float()
    pad = []
    for s, p in zip(reversed(x.shape[1:]), reversed(patch)):
        pad += [0, max(0, p - s)]
    x = torch.nn.functional.pad(x, pad)
    idx = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(x.shape[1:], patch))
    return x[(slice(None), *idx)][None].contiguous()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("medres", "torch", "monai", "onnx", "onnxruntime", "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg == "medres":
                from medres import __version__

                out[pkg] = __version__
    return out


def _metric_lines(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        ci = "" if r.get("ci_low") is None or r.get("ci_high") is None else \
            f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        value = "n/a" if r.get("value") is None else f"{r['value']:.3f}"
        where = " ".join(str(x) for x in (r.get("head"), r.get("class"), r.get("subgroup") if
                                            r.get("subgroup") != "all" else "", r.get("fold") if
                                            r.get("fold") not in ("pooled", None) else "") if x)
        lines.append(f"| {md(r['metric'])} | {md(where)} | {value}{ci} | {r.get('n')} | "
                     f"{md(r.get('ci_method') or '')} |")
    return lines


def model_card(config: Any, cfg_plain: dict, members: list[dict], summary: Mapping, run_dir: Path,
               checks: dict, versions: dict, hashes: dict, ensemble_file: str | None) -> dict:
    """The model card as plain data (``model_card.json``); :func:`card_markdown` renders it."""
    manifest = None
    try:
        manifest = _read_cohort_manifest(config)
        cohort = _cohort(config, manifest)
    except (MedresError, OSError, TypeError):
        cohort = {"note": "the training manifest could not be read at export time"}
    d, m = cfg_plain["data"], cfg_plain["model"]
    metrics = _summary_metrics(summary)
    volume_flags = implausible_volumes(metrics["oof"], _field_of_view_ml(config, manifest))
    return {
        "model": f"medres {m['name']} fold ensemble ({len(members)} models)",
        "intended_use": (
            f"Research use: {_questions(config)} of {d['modality']} scans and "
            f"segmentation of {', '.join(v for k, v in config.data.mask_labels.items() if int(k) != 0)}, on "
            "scans like the training cohort's (same modality, protocol and population). Not a medical "
            "device; not validated for clinical decisions."),
        "cohort": cohort,
        "synthetic_cohort": config.data.demo is not None and config.data.manifest is not None
        and "demo" in str(config.data.manifest),
        "preprocessing": {k: d[k] for k in ("modality", "orientation", "spacing", "windows", "normalize",
                                            "patch_size", "image_columns", "spatial_dims")},
        "inference": {"sliding_window_overlap": cfg_plain["evaluate"]["sliding_window_overlap"],
                      "tta_flips": cfg_plain["evaluate"]["tta_flips"],
                      "window_aggregation": cfg_plain["evaluate"]["cls_aggregate"],
                      "ensemble": "mean of the folds' calibrated class probabilities; argmax of the mean of "
                                  "their softmax maps",
                      "decision": "y_pred: the positive class where its probability reaches the mean "
                                  "of the folds' operating thresholds (each chosen on its inner validation, "
                                  "as in the report: calibration maps, operating_point); y_pred_argmax: the "
                                  "most probable class"},
        "architecture": {"name": m["name"], "model_spec": members[0]["model_spec"],
                         "parameters_per_model": members[0]["parameters"], "models": len(members)},
        "recipe": {k: cfg_plain[k] for k in ("loss", "optim", "schedule", "train", "cv")}
        | {"augment": d["augment"]},
        "members": [{k: v for k, v in mm.items() if k in ("name", "fold", "epoch", "best", "best_epoch",
                                                          "calibration")} for mm in members],
        "metrics": metrics,
        "metrics_source": f"the run's report ({_summary_name()}), unchanged",
        "calibration": {"method": config.evaluate.calibration,
                        "fitted_on": "each fold's inner-validation predictions only",
                        "maps": {mm["name"]: mm["calibration"] for mm in members}},
        "export_checks": checks,
        "volume_flags": volume_flags,
        "limitations": volume_flags + _limitations(config, cohort, members),
        "versions": versions,
        "sha256": hashes,
        "files": {"ensemble_onnx": ensemble_file, **{mm["name"]: mm["files"] for mm in members}},
    }


def _questions(config: Any) -> str:
    """What the model answers, for the intended use: the labels' classification, or each task."""
    if config.tasks is None:
        return f"{', '.join(config.data.labels)} classification"
    return "; ".join(f"{t.name} ({t.type}: {', '.join(t.target_columns())})" for t in config.tasks)


def _field_of_view_ml(config: Any, manifest: Any) -> float | None:
    """The field of view of the cohort's first readable 3D scan after preprocessing, in mL."""
    if manifest is None or config.data.spatial_dims != 3:
        return None
    from medres.data.pipeline.datasets import manifest_to_records

    try:
        found = _check_volume(config, manifest_to_records(manifest, config.data))
    except (MedresError, OSError, TypeError):
        return None
    if found is None:
        return None
    image = found[0]  # a MetaTensor: its affine gives the voxel size after resampling
    return float(math.prod(image.shape[-3:]) * math.prod(float(v) for v in image.pixdim[:3]) / 1000.0)


def implausible_volumes(oof: Sequence[Mapping], fov_ml: float | None) -> list[str]:
    """Warnings for classes whose mean predicted volume per scan cannot be right: above a tenth of the
    scans' field of view (``fov_ml``), or more than ten times the mean reference volume."""
    seg = [r for r in oof if r.get("head") == "segmentation" and "(" not in str(r.get("class"))]
    reference = {r["class"]: r["value"] for r in seg if r["metric"] == "ref_volume_ml"}
    out = []
    for r in seg:
        value, ref = r["value"], reference.get(r["class"])
        if r["metric"] != "pred_volume_ml" or value is None or not math.isfinite(value):
            continue
        why = []
        if fov_ml and value > 0.1 * fov_ml:
            why.append(f"{value / fov_ml:.0%} of a scan's field of view ({fov_ml / 1000:.1f} L)")
        if ref is not None and math.isfinite(ref) and ref > 0 and value > 10 * ref:
            why.append(f"{value / ref:.0f} times the mean reference volume ({ref:.1f} mL)")
        if why:
            out.append(f"Implausible segmentation: the mean predicted {r['class']} volume is {value:.0f} mL "
                       f"per scan, {' and '.join(why)}; the segmentation head is likely undertrained. "
                       "Do not use its masks or volumes before checking them.")
    return out


def _limitations(config: Any, cohort: Mapping, members: list[dict]) -> list[str]:
    out = [
        "Performance was estimated by patient-level cross-validation (and the held-out test split where the "
        "manifest has one) on one cohort; it is not an external validation.",
        "Scans unlike the training cohort (other scanners, protocols, reconstruction kernels, populations, "
        "paediatric patients) may be predicted poorly, without warning.",
        "Calibration was fitted per fold on small inner-validation subsets; recalibrate on local data before "
        "relying on probabilities.",
        "The ensemble ONNX graph works on one window; whole-volume inference (sliding windows, window "
        "aggregation, resampling back to the scan) is medres.predict's.",
    ]
    if "scans" in cohort and cohort["scans"] < 200:
        out.append(f"Small training cohort ({cohort['scans']} scans): intervals are wide.")
    if any((mm.get("calibration") or {}).get("method", "none") == "none" for mm in members):
        out.append("At least one fold kept uncalibrated probabilities (see calibration.maps: its inner "
                   "validation could not support a fit).")
    return out


def card_markdown(card: Mapping) -> str:
    """``model_card.md`` from the card's data; every string that comes from the manifest or the config is
    escaped (``medres.safe_text.markdown_text``), so a site or label name cannot inject HTML or Markdown."""
    c = card["cohort"]
    lines = [f"# Model card: {md(card['model'])}", "", "## Intended use", "", md(card["intended_use"]), "",
             "## Training cohort", ""]
    if "scans" in c:
        lines.append(f"{c['scans']} scans of {c['patients']} patients (development split; test split "
                     "excluded).")
        if card.get("synthetic_cohort"):
            lines.append("The cohort is medres's synthetic demo cohort.")
        for key in ("by_site", "by_scanner", "by_sex", "by_age_band"):
            if key in c:
                lines += ["", f"**{key[3:].replace('_', ' ')}**: " + ", ".join(f"{md(k)}: {v}"
                                                                              for k, v in c[key].items())]
        if "tasks" in c:
            lines += _task_lines(c["tasks"])
        if "labels" in c:
            lines += ["", "**labels**: " + ", ".join(f"{md(k)}: {v['scans']} ({v['prevalence']:.1%})"
                                                     for k, v in c["labels"].items())]
    else:
        lines.append(c.get("note", ""))
    p = card["preprocessing"]
    arch = card["architecture"]
    lines += ["", "## Preprocessing", "",
              f"- modality: {md(p['modality'])}; orientation: {md(p['orientation'])}",
              f"- spacing (mm): {p['spacing']}; patch (window): {p['patch_size']}",
              f"- intensity: {md(p['normalize'])}; windows: " + (", ".join(
                  f"{md(w['name'])} (centre {w['center']}, width {w['width']})" for w in p["windows"])
                  or "none"),
              f"- inference: {json.dumps(card['inference'])}",
              "", "## Architecture", "",
              f"{md(arch['name'])}, {arch['parameters_per_model']:,} parameters "
              f"per model, {card['architecture']['models']} models; spec "
              f"`{json.dumps(card['architecture']['model_spec'])}`", "",
              "## Training recipe", "", f"```json\n{json.dumps(card['recipe'], indent=1)}\n```", ""]
    lines += ["## Metrics", "", f"Source: {card['metrics_source']}.", ""]
    titles = {"oof": "Out-of-fold (pooled)", "test_folds": "Test split, each fold model",
              "test_ensemble": "Test split, fold ensemble", "calibration": "Calibration (before / after)",
              "subgroups": "Subgroups (out-of-fold)"}
    for key, title in titles.items():
        recs = card["metrics"].get(key, [])
        if not recs:
            continue
        lines += [f"### {title}", "", "| metric | where | value [CI] | n | interval |",
                  "|---|---|---|---|---|", *_metric_lines(recs), ""]
    lines += ["## Calibration", "", f"{card['calibration']['method']} scaling, fitted on "
              f"{card['calibration']['fitted_on']}:", ""]
    for name, cal in card["calibration"]["maps"].items():
        lines.append(f"- {name}: `{json.dumps(cal)}`")
    ch = card["export_checks"]
    lines += ["", "## Export checks", "", f"Maximum absolute difference of probabilities, exported graph vs "
              f"PyTorch, on a real cohort scan: {ch.get('max_abs_diff')} (tolerance {ch.get('tolerance')}); "
              f"passed: {ch.get('passed')}. {ch.get('note', '')}", "", "## Known limitations", ""]
    lines += [f"- {x}" for x in card["limitations"]]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), "",
              "## Files (SHA-256)", ""]
    lines += [f"- {k}: `{v}`" for k, v in card["sha256"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medres.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder (runs/NAME) with its report")
    p.add_argument("--out", required=True, help="the export folder")
    p.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS, help="graph formats")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="folds to export (default: all)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime/TorchScript check")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medres.logs import route_library_logs

    route_library_logs()  # highdicom's, MLflow's and alembic's INFO lines stay off the terminal
    try:
        out = export_run(args.run, args.out, formats=args.format, folds=args.folds, check=not args.no_check)
    except MedresError as e:
        print(f"medres.export: error: {e}", file=sys.stderr)
        return 2
    print(f"export: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
