"""The import graph of every medres module holds DESIGN.md's layering (read from the source, so function
-level imports count too): lower layers never import higher ones, models and data never import each
other, report, metrics and config import no torch, nothing imports an entry point, and there are no
cycles."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {"medres", "errors", "files", "layout", "runfolder", "progress", "_startup", "safe_text", "logs"}
# which top-level parts of medres each part may import (besides itself)
MAY_IMPORT = {
    "medres": {"errors", "_startup"}, "progress": set(), "_startup": set(),
    "errors": set(), "logs": set(), "files": {"errors"}, "layout": {"errors"}, "safe_text": set(),
    "runfolder": {"errors", "files", "layout"},
    "distributed": {"errors"},  # torchrun's process group, for training and prediction
    "config": BASE,
    "models": BASE | {"config"}, "data": BASE | {"config"}, "metrics": BASE, "cv": BASE | {"config", "data"},
    "report": BASE | {"config", "metrics"},
    "checkpoint": BASE | {"config", "models", "data"},
    "inference": BASE | {"config", "models", "data", "metrics", "checkpoint", "distributed"},
    "training": BASE | {"config", "models", "data", "metrics", "cv", "checkpoint", "inference",
                        "distributed"},
    "evaluation": BASE | {"config", "models", "data", "metrics", "cv", "checkpoint", "inference", "report"},
    # fingerprint a cohort, measure an epoch
    "plan": BASE | {"config", "models", "data", "checkpoint", "training"},
}
# may import any part but these
ENTRY_POINTS = {"medres.train", "medres.evaluate", "medres.predict", "medres.export"}
NO_TORCH = ("config", "metrics", "report", "cv", "errors", "files", "layout", "runfolder", "progress",
            "_startup", "safe_text", "logs")


def modules() -> dict[str, Path]:
    out = {}
    for f in (ROOT / "medres").rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, f: Path, known: dict[str, Path]) -> tuple[set[str], set[str], set[str]]:
    """(medres modules imported, third-party top-level packages, names imported from medres modules)."""
    ours, theirs, names = set(), set(), set()
    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(pkg[: len(pkg) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            names |= {f"{mod}:{a.name}" for a in node.names}
        else:
            continue
        for t in targets:
            (ours if t.split(".")[0] == "medres" else theirs).add(t if t in known else t.split(".")[0])
    return {t for t in ours if t in known and t != name}, theirs, names


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "medres"


def test_import_graph_follows_the_layers():
    known = modules()
    graph, problems = {}, []
    for name, f in known.items():
        ours, theirs, names = imports(name, f, known)
        graph[name] = ours
        for t in ours:
            if t in ENTRY_POINTS or any(n.startswith(f"{t}:main") for n in names):
                problems.append(f"{name} imports the entry point {t}")
            elif name not in ENTRY_POINTS and part(t) != part(name) and part(t) not in MAY_IMPORT[part(name)]:
                problems.append(f"{name} (layer {part(name)}) imports {t}")
        if part(name) in NO_TORCH and theirs & {"torch", "monai", "torchvision"}:
            problems.append(f"{name} imports {sorted(theirs & {'torch', 'monai', 'torchvision'})}")
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:  # depth-first search; a grey node seen again = a cycle
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                problems.append("cycle: " + " -> ".join(path[path.index(m):] + [m]))
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not problems, "\n".join(problems)


def test_report_imports_neither_torch_nor_higher_layers():
    """At run time too: a report is rebuilt in a notebook without torch."""
    code = (
        "import sys, medres.report; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai') "
        "or m.startswith(('medres.models', 'medres.data', 'medres.training', 'medres.cv', "
        "'medres.evaluation', 'medres.inference', 'medres.checkpoint'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def _heavy_after_import(modules: list[str]) -> list[str]:
    """The torch/MONAI modules present after importing ``modules`` in a fresh interpreter."""
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'torchvision')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return eval(res.stdout.strip().splitlines()[-1])  # a list of module names printed by the child


def test_torch_free_packages_import_without_torch_at_run_time():
    """The static check above sees import statements; this one catches what they pull in (a torch-free
    package importing a third-party module that imports torch). One interpreter for all of them; on a
    failure, one per package to name the culprits."""
    packages = [f"medres.{p}" for p in NO_TORCH]
    if _heavy_after_import(packages):
        culprits = {p: heavy[:3] for p in packages if (heavy := _heavy_after_import([p]))}
        raise AssertionError(f"importing these pulls in torch/MONAI: {culprits}")


def test_no_private_name_crosses_a_part():
    """``from medres.X import _name`` only within one top-level part: what another part needs is public."""
    known = modules()
    problems = []
    for name, f in known.items():
        for imported in sorted(imports(name, f, known)[2]):
            mod, _, attr = imported.partition(":")
            if attr.startswith("_") and not attr.startswith("__") and part(mod) != part(name):
                problems.append(f"{name} imports the private {attr} from {mod}")
    assert not problems, "\n".join(problems)


#: a run folder's file names: spelled only in medres/runfolder.py, every other module asks it for the path
RUN_FILE_NAMES = ("config.yaml", "folds.csv", "train.log", "mlflow.db", ".mlflow.lock", "checkpoint_last.pt",
                  "checkpoint_prev.pt", "checkpoint_best.pt", "metrics.csv", "predictions.parquet",
                  "calibration.json", "train_patients.csv", "summary.json", "case_keys.csv")
#: run sub-folders, caught where a path is joined with them (``run_dir / "report"``)
RUN_DIR_NAMES = ("report", "ensemble", "tensorboard", ".lock")


def _run_path_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals (docstrings aside) that spell a run-folder path: a run file's name, alone or at the
    end of a path; a ``fold_*`` glob; ``fold_{k}`` formatted; a path joined with a run sub-folder."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    names = "|".join(re.escape(n) for n in RUN_FILE_NAMES)
    spelled = re.compile(rf"(^|/)[\w.]*({names})$|fold_\*|checkpoint_\*")
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and spelled.search(node.value):
            hits.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            for a, b in zip(node.values, node.values[1:]):
                if isinstance(a, ast.Constant) and str(a.value).endswith("fold_") \
                        and isinstance(b, ast.FormattedValue):
                    hits.append((node.lineno, f"{a.value}{{...}}"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) \
                and isinstance(node.right, ast.Constant) and node.right.value in RUN_DIR_NAMES:
            hits.append((node.lineno, f"/ {node.right.value!r}"))
    return hits


def test_run_folder_paths_are_spelled_in_runfolder_only():
    """Every reader and writer of a run folder goes through ``medres.runfolder`` (a renamed file cannot
    leave a stale copy of its name behind)."""
    problems = [f"{f.relative_to(ROOT)}:{line}: {text!r}" for name, f in sorted(modules().items())
                if name != "medres.runfolder"
                for line, text in _run_path_literals(ast.parse(f.read_text()))]
    assert not problems, "spell these through medres.runfolder:\n" + "\n".join(problems)
