"""Stages meet only at their public surface: every import of ``medres.X...`` from outside stage X names
something X publishes. A module publishes the names in its ``__all__`` (a module without one publishes
nothing); a name or module with a leading underscore is private. Read from the source, so imports inside
functions, attribute uses of an imported module (``runfolder.RunFolder``) and the lazy ``_LAZY`` maps of
``medres`` and ``medres.data`` count too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"training", "inference", "evaluation", "report", "plan", "data", "models", "metrics", "config",
          "cv", "checkpoint", "runfolder"}
#: each folder under medres/data (readers, pipeline, dicom_objects, index, demo, pacs) is a stage of its own
DATA_PACKAGES = {p.name for p in (ROOT / "medres" / "data").iterdir()
                 if p.is_dir() and not p.name.startswith("_") and any(p.glob("*.py"))}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in (root / "medres").rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def stage(module: str) -> str | None:
    """The stage ``module`` belongs to (``data.readers`` for ``medres.data.readers.io``); None outside any."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in STAGES:
        return None
    if parts[1] == "data" and len(parts) > 2 and parts[2] in DATA_PACKAGES:
        return f"data.{parts[2]}"
    return parts[1]


def _names(node: ast.expr, assigned: dict[str, ast.expr]) -> list[str]:
    """The strings of an ``__all__`` value: a list/tuple literal, ``*others``, ``list(_LAZY)``, ``a + b``."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        out: list[str] = []
        for e in node.elts:
            out += _names(e.value, assigned) if isinstance(e, ast.Starred) else [ast.literal_eval(e)]
        return out
    if isinstance(node, ast.Dict):
        return [ast.literal_eval(k) for k in node.keys if k is not None]
    if isinstance(node, ast.Name):
        return _names(assigned[node.id], assigned)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("list", "tuple",
                                                                                          "sorted"):
        return _names(node.args[0], assigned)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _names(node.left, assigned) + _names(node.right, assigned)
    raise ValueError(f"cannot read __all__ from {ast.unparse(node)}")


def public_names(f: Path) -> set[str] | None:
    """A module's ``__all__`` as written at its top level; None when it has none."""
    assigned: dict[str, ast.expr] = {}
    found: list[str] | None = None
    for node in ast.parse(f.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    assigned[t.id] = node.value
                    if t.id == "__all__":
                        found = _names(node.value, assigned)
        elif isinstance(node, ast.AugAssign) and getattr(node.target, "id", None) == "__all__":
            found = (found or []) + _names(node.value, assigned)
    return None if found is None else set(found)


def reach_ins(root: Path = ROOT) -> list[str]:
    """Every import across stages of a name its module does not publish, as ``importer:line -> mod:name``."""
    known = modules(root)
    surface = {m: public_names(f) for m, f in known.items()}

    def published(mod: str, name: str) -> bool:
        private_module = any(p.startswith("_") and p not in ("__init__", "__main__") for p in mod.split("."))
        return not private_module and not name.startswith("_") and name in (surface[mod] or ())

    problems = []
    for name, f in known.items():
        here = stage(name)
        pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(f.read_text())
        uses: list[tuple[str, str, int]] = []  # (module, name, line)
        bound: dict[str, str] = {}  # local name -> another stage's module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + [node.module or ""]).strip(".") if node.level else node.module or ""
                for a in node.names:
                    if f"{mod}.{a.name}" in known:  # a module: what is used of it is checked below
                        bound[a.asname or a.name] = f"{mod}.{a.name}"
                    elif mod in known:
                        uses.append((mod, a.name, node.lineno))
            elif isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in known}
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and \
                    any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
                uses += [(ast.literal_eval(v), ast.literal_eval(k), node.lineno)
                         for k, v in zip(node.value.keys, node.value.values) if k is not None]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) in bound:
                uses.append((bound[node.value.id], node.attr, node.lineno))
        for mod, attr, line in uses:
            if stage(mod) is not None and stage(mod) != here and not published(mod, attr):
                problems.append(f"{name}:{line} -> {mod}:{attr}")
    return sorted(set(problems))


def test_no_stage_reaches_into_another_stages_internals():
    problems = reach_ins()
    assert not problems, "names used across stages that their module does not publish in __all__:\n" + \
        "\n".join(problems)


def test_the_check_sees_a_reach_in(tmp_path):
    """A private name, a name left out of ``__all__`` and a module without ``__all__`` are each caught,
    through ``from`` imports and attribute uses alike; the same names used inside their own stage are not."""
    (tmp_path / "medres" / "training").mkdir(parents=True)
    (tmp_path / "medres" / "training" / "loop.py").write_text(
        "_LAZY = {'fit': 'x'}\n__all__ = ['step', *_LAZY]\n__all__ += ['stop']\n"
        "def step(): ...\ndef fit(): ...\ndef stop(): ...\ndef inner(): ...\ndef _hidden(): ...\n")
    (tmp_path / "medres" / "training" / "plain.py").write_text("def helper(): ...\n")
    (tmp_path / "medres" / "training" / "fold.py").write_text(
        "from medres.training.loop import _hidden, inner\n"
        "from medres.training import plain\nplain.helper()\n")
    (tmp_path / "medres" / "train.py").write_text(
        "from medres.training.loop import step, fit, stop, inner\nfrom medres.training import loop, plain\n"
        "loop.stop(); loop._hidden(); plain.helper()\n")
    assert public_names(tmp_path / "medres" / "training" / "loop.py") == {"step", "fit", "stop"}
    assert public_names(tmp_path / "medres" / "training" / "plain.py") is None
    assert reach_ins(tmp_path) == ["medres.train:1 -> medres.training.loop:inner",
                                   "medres.train:3 -> medres.training.loop:_hidden",
                                   "medres.train:3 -> medres.training.plain:helper"]
    assert stage("medres.data.readers.io") == "data.readers" and stage("medres.data.manifest") == "data"
    assert stage("medres.train") is None and stage("medres.inference.predictor") == "inference"


def _chooses_best_else_last(tree: ast.AST) -> list[int]:
    """Lines of a choice between a fold's best and last checkpoint (``best if best.exists() else last``,
    ``best or last``, an ``if`` on the best that falls back to the last, runfolder's best-first order)."""
    def names(node: ast.AST) -> set[str]:
        return {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(node)}

    def chooses(node: ast.AST) -> bool:
        if isinstance(node, (ast.IfExp, ast.BoolOp)):
            return {"checkpoint_best", "checkpoint_last"} <= names(node)
        if isinstance(node, ast.If):
            branches = set().union(*(names(n) for n in node.body + node.orelse))
            return "checkpoint_best" in names(node.test) and "checkpoint_last" in branches
        return "CHECKPOINTS_BEST_FIRST" in (getattr(node, "id", None), getattr(node, "attr", None))

    return [node.lineno for node in ast.walk(tree) if chooses(node)]


def test_best_else_last_is_decided_in_runfolder_only():
    """Which checkpoint a fold predicts with is ``medres.runfolder``'s ``predicting_checkpoint``."""
    found = {f.relative_to(ROOT).as_posix(): lines for f in sorted((ROOT / "medres").rglob("*.py"))
             if f.name != "runfolder.py" and (lines := _chooses_best_else_last(ast.parse(f.read_text())))}
    assert found == {}, found
    assert "predicting_checkpoint" in (ROOT / "medres" / "runfolder.py").read_text()
    sample = "p = f.checkpoint_best if f.checkpoint_best.exists() else f.checkpoint_last\n"
    assert _chooses_best_else_last(ast.parse(sample)) == [1]
