"""One prepared GPU check: every GPU figure medres claims, in one run (``benchmarks/gpu_check.sh``).

Stages (each writes its result into ``gpu_check.json`` and ``gpu_check.md`` as soon as it ends, so a
run cut short by its time limit still leaves the finished stages; a stage that fails is recorded with
its error and the next one runs):

1. ``device``: GPU, driver, CUDA, torch (CPU name in a dry run).
2. ``pytest_gpu``: ``pytest -m gpu`` (the CUDA branches of the suite, resume bit-identity included).
3. ``resnet50``: ResNet-50 2D training images/s, 224², synthetic data already on the GPU, batch 256,
   bf16 autocast (fp16 + scaler without bf16), channels_last, SGD: medres's ``resnet50`` against
   torchvision's ``resnet50`` in the same loop (steps alternate in blocks), eager and ``torch.compile``
   (compile time apart).
4. ``fullres_switches``: the full-resolution 3D dual head's training samples/s on on-device data
   (``benchmarks/pipeline.device_rate``) at the config's settings, then with one fast path changed at a
   time: fp32, no channels_last_3d, no cuDNN benchmark, unfused AdamW, compile, compile with CUDA graphs.
5. ``fullres_loader``: the input pipeline's samples/s (``pipeline.loader_rate``) and loader / device.
6. ``e2e_ct_chest`` / ``e2e_fullres``: shortened end-to-end runs of ``configs/ct_chest.yaml`` and
   ``configs/ct_chest_fullres.yaml`` through ``medres.train`` (fold 0): wall time, held-out AUROC,
   inner-validation Dice.

``--dry-run`` runs every stage on the CPU at tiny sizes (compile stages skipped: compiling on a CPU
takes minutes), so the script is known to work before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

GOALS = {"resnet50_bf16_img_s": 3000.0, "resnet50_vs_torchvision": 0.97, "loader_over_device": 1.2,
         "ct_chest_job_s": 180.0}

# tiny sizes for --dry-run (the CPU): the fullres grid at 5x larger voxels, 6 mm, 32^3 patches
DRY_FULLRES = ["data.demo.n_patients=8", "data.demo.grid_scale=5", "data.demo.workers=1",
               "data.spacing=[6,6,6]", "data.patch_size=[32,32,32]", "data.num_workers=0",
               "model.options.base_channels=8",
               "train.batch_size=2", "loss.cls.weights=[1,1]", "schedule.warmup_epochs=0",
               "evaluate.bootstrap_resamples=100"]
DRY_CT_CHEST = ["data.demo.n_patients=8", "data.spacing=[10,10,10]", "data.patch_size=[24,24,24]",
                "model.options.base_channels=8", "train.batch_size=2", "loss.cls.weights=[1,1]",
                "schedule.warmup_epochs=0", "evaluate.bootstrap_resamples=100"]

DRY_E2E = ["train.epochs=1", "cv.folds=2", "cv.val_fraction=0.34"]


class Check:
    """Results so far, rewritten to ``out`` after every stage."""

    def __init__(self, out: Path, dry: bool) -> None:
        self.out, self.dry = out, dry
        self.results: dict[str, Any] = {"dry_run": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                  time.gmtime()),
                                        "goals": GOALS, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = {"ok": True, **fn()}
        except Exception as e:  # record and go on: one failing stage must not cost the others
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
            print(res["traceback"], file=sys.stderr, flush=True)
        res["stage_s"] = round(time.perf_counter() - t0, 2)
        self.results["stages"][name] = res
        self.write()
        print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, default=str)[:1500], flush=True)

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    """The table for BENCHMARKS.md: one row per figure, with the goal where there is one."""
    s = results["stages"]
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, goal: str = "") -> None:
        rows.append((what, value, goal))

    dev = s.get("device", {})
    dry = " (DRY RUN on the CPU: the figures mean nothing)" if results["dry_run"] else ""
    head = (f"{dev.get('name', '?')}, driver {dev.get('driver', '-')}, CUDA {dev.get('cuda', '-')}, "
            f"torch {dev.get('torch', '-')}{dry}")
    for name, res in s.items():
        if not res.get("ok", False) and name != "device":
            row(name, f"FAILED: {res.get('error', '')[:120]}")
    p = s.get("pytest_gpu", {})
    if p.get("ok"):
        row("pytest -m gpu", f"{p['passed']} passed, {p['failed']} failed, {p['skipped']} skipped")
    for mode in ("eager", "compile"):
        r = s.get("resnet50" if mode == "eager" else "resnet50_compile", {})
        m = r.get(mode)
        if isinstance(m, dict):
            ratio = m["medres"] / m["torchvision"]
            compile_s = f"; compile {_fmt(m.get('compile_s'))} s" if mode == "compile" else ""
            row(f"ResNet-{r.get('depth', 50)} 2D {r.get('size')}², batch {r.get('batch')}, "
                f"{r.get('precision')}, channels_last, {mode}: medres img/s (torchvision)",
                f"{_fmt(m['medres'])} ({_fmt(m['torchvision'])}); ratio {ratio:.3f}{compile_s}",
                f">= {GOALS['resnet50_bf16_img_s']:.0f} img/s, ratio >= {GOALS['resnet50_vs_torchvision']}")
        elif m is not None:
            row(f"ResNet-50 2D {mode}", str(m))
    variants = {**s.get("fullres_switches", {}).get("variants", {}),
                **s.get("fullres_compile", {}).get("variants", {})}
    for name, v in variants.items():
        if isinstance(v, dict):
            extra = f", compile {_fmt(v['compile_s'])} s" if v.get("compile_s") is not None else ""
            row(f"full-res 3D dual head, training samples/s: {name}", f"{_fmt(v['samples_per_s'], 2)}{extra}")
        else:
            row(f"full-res 3D dual head: {name}", str(v))
    lo = s.get("fullres_loader", {})
    if lo.get("ok"):
        row(f"full-res loader samples/s ({lo['num_workers']} workers, cache {lo['cache']})",
            _fmt(lo["samples_per_s"], 2))
        two = lo.get("patches_per_volume_2")
        if isinstance(two, dict):
            row("full-res loader samples/s, 2 patches per loaded volume", _fmt(two["samples_per_s"], 2))
        if lo.get("loader_over_device") is not None:
            row("loader / device (full-res)", _fmt(lo["loader_over_device"], 2),
                f">= {GOALS['loader_over_device']}")
    for name in ("e2e_ct_chest", "e2e_fullres"):
        e = s.get(name, {})
        if e.get("ok"):
            goal = f"whole job < {GOALS['ct_chest_job_s']:.0f} s" if name == "e2e_ct_chest" else ""
            row(f"{name}: {e['what']}", f"{_fmt(e['seconds'])} s; held-out AUROC {_fmt(e.get('auroc'), 3)}, "
                f"val Dice {_fmt(e.get('dice'), 3)}" + (f"; 5 folds ~{_fmt(e.get('job_s_estimate'))} s"
                                                       if e.get("job_s_estimate") else ""), goal)
    lines = [f"gpu_check ({results['started']}): {head}", "", "| figure | value | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def device_info(dry: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    else:
        info["name"] = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                             .splitlines() if line.startswith("model name")), platform.processor() or "CPU")
        if not dry:
            raise RuntimeError("no CUDA device visible (use --dry-run to check the script on the CPU)")
    return info


def pytest_gpu(out: Path, dry: bool) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    junit = out / "pytest_gpu.xml"
    paths = ["tests/training/test_gpu_paths.py", "tests/training/test_device_input.py"] if dry else ["tests"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", *paths], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    (out / "pytest_gpu.log").write_text(p.stdout[-20000:] + p.stderr[-5000:])
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    return {"passed": n["tests"] - failed - n["skipped"], "failed": failed, "skipped": n["skipped"],
            "returncode": p.returncode, "tail": p.stdout[-600:]}


def resnet50(dry: bool, mode: str) -> dict[str, Any]:
    """medres resnet50 vs torchvision resnet50, same loop, steps in alternating blocks."""
    import torch
    import torchvision

    from medres.models import create_model

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    batch, size, blocks, per_block = (2, 32, 2, 1) if dry else (256, 224, 6, 5)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if gpu else None
    torch.backends.cudnn.benchmark = gpu
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device, generator=g)
    depth = 18 if dry else 50  # the dry run checks the loop, not the figure: the smaller net is quicker
    builders = {"medres": lambda: create_model(f"resnet{depth}", spatial_dims=2, in_channels=3,
                                               num_classes=1000),
                "torchvision": lambda: getattr(torchvision.models, f"resnet{depth}")()}

    def make(build: Callable[[], torch.nn.Module], compiled: bool) -> Callable[[int], None]:
        torch.manual_seed(0)
        model = build().to(device, memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        net = torch.compile(model) if compiled else model

        def steps(n: int) -> None:
            for _ in range(n):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if gpu:
                torch.cuda.synchronize()
        return steps

    precision = str(dtype).removeprefix("torch.") if dtype else "fp32"
    out: dict[str, Any] = {"depth": depth, "batch": batch, "size": size, "precision": precision,
                           "device": str(device)}
    if mode == "compile" and dry:
        out[mode] = "skipped in the dry run (compiling on a CPU takes minutes)"
        return out
    fns, compile_s = {}, {}
    for name, build in builders.items():
        fns[name] = make(build, mode == "compile")
        t0 = time.perf_counter()
        fns[name](1 if dry else 3)  # warm-up (and the compilation)
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in fns}
    for b in range(blocks):
        order = list(fns) if b % 2 == 0 else list(fns)[::-1]  # who goes first alternates
        for name in order:
            t0 = time.perf_counter()
            fns[name](per_block)
            times[name].append((time.perf_counter() - t0) / per_block)
    res = {k: batch / sorted(v)[len(v) // 2] for k, v in times.items()}
    res["compile_s"] = compile_s["medres"] if mode == "compile" else None
    res["warmup_s"] = compile_s
    out[mode] = res
    del fns
    if gpu:
        torch.cuda.empty_cache()
    return out


def fullres_switches(dry: bool, compiled: bool) -> dict[str, Any]:
    from pipeline import device_rate

    from medres.config import load_config

    base = DRY_FULLRES if dry else []
    variants = {"config defaults": [], "fp32": ["train.precision=fp32"],
                "no channels_last_3d": ["train.channels_last=false"],
                "no cudnn.benchmark": ["train.cudnn_benchmark=false"],
                "unfused AdamW": ["train.fused_optimizer=false"], "compile": ["train.compile=true"],
                "compile + CUDA graphs": ["train.compile=true", "train.compile_mode=reduce-overhead"]}
    variants = {k: v for k, v in variants.items() if ("compile" in k) == compiled}
    if dry:  # the code path of each kind, not every switch
        variants = dict(list(variants.items())[:2]) if not compiled else {}
    out: dict[str, Any] = {"variants": {}}
    steps, warm = (2, 1) if dry else (12, 3)
    if dry and compiled:
        out["variants"]["compile"] = "skipped in the dry run (compiling on a CPU takes minutes)"
    for name, extra in variants.items():
        try:
            cfg = load_config(ROOT / "configs" / "ct_chest_fullres.yaml", [*base, *extra])
            out["variants"][name] = device_rate(cfg, steps=steps, warmup=warm)
        except Exception as e:  # e.g. CUDA graphs refusing a dynamic part: recorded, not fatal
            out["variants"][name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
        _free()
    return out


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fullres_loader(check: Check, out: Path, dry: bool) -> dict[str, Any]:
    from pipeline import loader_rate

    from medres.config import load_config

    demo = f"data.demo.out={out / 'demo_ct_chest_fullres'}"  # the cohort e2e_fullres reuses
    over = [*DRY_FULLRES, demo] if dry else [demo]
    cfg = load_config(ROOT / "configs" / "ct_chest_fullres.yaml", over)
    res = loader_rate(cfg, batches=4 if dry else 36, cache_dir=out / "cache_fullres")  # e2e_fullres reuses it
    # two patches per loaded volume (the same cache): does it pay off over one?
    path = ROOT / "configs" / "ct_chest_fullres.yaml"
    two = load_config(path, [*over, "data.patches_per_volume=2"])
    res["patches_per_volume_2"] = loader_rate(two, batches=2 if dry else 16, cache_dir=out / "cache_fullres")
    device = check.results["stages"].get("fullres_switches", {}).get("variants", {}).get("config defaults")
    if isinstance(device, dict):
        res["loader_over_device"] = res["samples_per_s"] / device["samples_per_s"]
    return res


def e2e(config: str, out: Path, dry: bool, overrides: list[str], what: str, folds: int | None
        ) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    name = Path(config).stem
    cmd = [sys.executable, "-m", "medres.train", "--config", str(ROOT / "configs" / config),
           "--output", str(out / "runs"), "--fold", "0", "--force", "--quiet",
           "--set", f"data.demo.out={out / ('demo_' + name)}",
           *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - t0
    (out / f"{name}.log").write_text(p.stdout[-20000:] + p.stderr[-20000:])
    if p.returncode != 0:
        raise RuntimeError(f"medres.train exited {p.returncode}: {p.stderr[-800:]}")
    fold = out / "runs" / name / "fold_0"
    m = pd.read_csv(fold / "metrics.csv")
    dice = m["val_dice"].dropna() if "val_dice" in m else []
    res: dict[str, Any] = {"what": what, "seconds": seconds, "epochs": len(m),
                           "dice": float(dice.iloc[-1]) if len(dice) else None}
    pred = pd.read_parquet(fold / "predictions.parquet")
    pcol = [c for c in pred.columns if c.startswith("p_")][-1]
    if pred["y_true"].nunique() > 1:
        res["auroc"] = float(roc_auc_score(np.asarray(pred["y_true"]) == pred["y_true"].max(), pred[pcol]))
    if folds:  # the whole job: every fold like fold 0 (demo generation and cache filling counted each time)
        res["job_s_estimate"] = seconds * folds
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, logs")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    p.add_argument("--skip", action="append", default=[], help="stage to leave out (repeatable)")
    a = p.parse_args(argv)
    dry, out = a.dry_run, a.out.resolve()
    check = Check(out, dry)
    # compile stages last: a run cut short by its time limit loses the compile figures only
    stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("device", lambda: device_info(dry)),
        ("pytest_gpu", lambda: pytest_gpu(out, dry)),
        ("resnet50", lambda: resnet50(dry, "eager")),
        ("fullres_switches", lambda: fullres_switches(dry, compiled=False)),
        ("fullres_loader", lambda: fullres_loader(check, out, dry)),
        ("e2e_ct_chest", lambda: e2e("ct_chest.yaml", out, dry,
                                     [*DRY_CT_CHEST, *DRY_E2E] if dry else ["data.num_workers=8"],
                                     "fold 0 of 5, all epochs" if not dry else "dry run", 5)),
        ("e2e_fullres", lambda: e2e("ct_chest_fullres.yaml", out, dry,
                                    [*DRY_FULLRES, *DRY_E2E, f"data.cache_dir={out / 'cache_fullres'}"] if dry
                                    else ["train.epochs=5", f"data.cache_dir={out / 'cache_fullres'}"],
                                    "fold 0 of 5, 5 epochs" if not dry else "dry run", None)),
        ("resnet50_compile", lambda: resnet50(dry, "compile")),
        ("fullres_compile", lambda: fullres_switches(dry, compiled=True)),
    ]
    for name, fn in stages:
        if name in a.skip:
            continue
        check.stage(name, fn)
        if name == "device" and not check.results["stages"]["device"]["ok"]:
            break
    print((out / "gpu_check.md").read_text())
    ok = all(r.get("ok") for r in check.results["stages"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
