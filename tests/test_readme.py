"""Every shell command and every Python block of README.md runs, in README order, in one empty working
directory, as a new user would run them.

Each command runs as written, with three kinds of change, all listed in ``PLACEHOLDERS`` / ``TINY_BY_START``:

- placeholders become the files the earlier commands wrote (``my_cohort.csv``: the main job's demo
  manifest with its paths made relative to the working directory; ``/data/export``: the demo export;
  ``scan.nii.gz``: a demo scan; ``DIR``, ``runs/OTHER``, ``HOST``, ``...``);
- optional ``[--flag value]`` parts are given (except those in ``NOT_HERE``);
- commands whose full size takes too long get the documented ``--set`` overrides (a 12-patient demo
  at a coarse grid, two folds of one epoch) or ``--n-patients``, appended to the command as written.

Python blocks run as written (``python -c``), each followed by a few assertions on what it made.
Commands that cannot run on this machine are in ``NOT_RUN`` with the reason; the test fails when the
README shows a command that is neither run nor listed, and when a listed one is no longer in the README,
so the list cannot grow or go stale silently.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# tiny overrides, appended to the README's command (the run is the README's otherwise)
TINY = ["data.demo.n_patients=12", "data.spacing=[10.0,10.0,10.0]", "data.patch_size=[24,24,24]",
        "cv.folds=2", "cv.val_fraction=0.34", "train.epochs=1", "train.batch_size=2",
        "model.options.base_channels=4", "evaluate.bootstrap_resamples=100", "data.cache=memory"]
TINY_CXR = ["data.demo.n_patients=12", "data.spacing=[12.0,12.0]", "data.patch_size=[32,32]", "cv.folds=2",
            "cv.val_fraction=0.34", "train.epochs=1", "train.batch_size=4", "model.options.base_channels=4",
            "evaluate.bootstrap_resamples=100", "data.cache=memory"]

# Commands this machine cannot run (start of the command -> why); asserted equal to what the README shows.
NOT_RUN = {
    "python3 -m venv": "creates the environment these tests run in (CI runs the README's install as is)",
    'pip install -e ".[dev]"': "installs the environment these tests run in (CI runs it as written)",
    'pip install -e ".[notebooks]"': "installs Jupyter, which the tests do not need",
    "pip install torch torchvision --index-url": "an optional install (CPU wheels); CI: the line above",
    'pip install "medres[export]"': "installs; [dev] includes [export]",
    "pytest": "is this suite",
    "apt-get install -y chromium": "installs a system package (CI installs it)",
    'pip install -e ".[pacs]"': "installs; [dev] includes [pacs]",
    "python -m medres.data.pull": "needs a PACS; tests/data/pacs/ run it against a real Orthanc",
    "python -m medres.data.listen": "a server running until stopped; tests/data/pacs/test_listen.py runs it",
    "python -m medres.predict --push": "needs a PACS; tests/data/pacs/test_push.py runs it against Orthanc",
    "python -m medres.data.pacs.push": "needs a PACS; tests/data/pacs/test_push.py runs it against Orthanc",
    "jupyter lab notebooks/": "opens a browser UI; tests/test_notebooks.py executes the notebooks",
    "MEDRES_RUN=$PWD/runs/ct_chest jupyter lab notebooks/": "as above, with MEDRES_RUN (tested there too)",
    "torchrun": "several processes on several GPUs or machines; its arguments to medres.train are checked "
                "with --help (DDP itself: tests/training/test_distributed.py)",
    "python -m medres.train --config ct_chest_fullres.yaml": "a GPU job; checked with --help",
    "bash benchmarks/gpu_check.sh": "needs a CUDA device",
    "for k in 0 1 2 3 4; do sbatch": "a Slurm cluster and GPUs; the inner command: --help",
    "python -m medres.evaluate --run runs/ct_chest_fullres": "the report of the GPU run above (the same "
                                                              "command runs here on runs/ct_chest)",
}
# optional parts of commands that need hardware this machine lacks
NOT_HERE = {"[--device cuda --memory-gb 80]": "plans for a CUDA device (measures a batch there)"}

PLACEHOLDERS = {
    "my_cohort.csv": "my_cohort.csv (the demo manifest, written by this test)",
    "/data/export": "demo_export/export", "/data/indexed": "demo_export/indexed",
    "labels.csv": "demo_export/labels.csv", "SCAN_OR_SERIES_FOLDER_OR_MANIFEST.csv": "my_cohort.csv",
    "scan.nii.gz": "a NIfTI scan of the demo cohort", "DIR": "report_copy", "runs/OTHER": "runs/ct_chest",
    "[--folds 0 1 2 3 4]": "--folds 0 1 (the tiny run has two folds)", "[--folds ...]": "--folds 0 1",
    "MEDRES_PROJECT_KEY=...": "a key of 64 hex digits",
}


def commands() -> list[str]:
    """The README's shell commands, in order: its bash blocks (continuations joined, comments dropped)
    and the commands quoted in its prose."""
    out = []
    # prose quotes a command with its arguments; `python -m medres.plan` alone names a module
    for block in re.findall(r"```bash\n(.*?)```|`((?:python -m medres\.[\w.]+|python benchmarks/[^`\s]+|pip|"
                            r"jupyter|MEDRES_RUN=\S+ jupyter|apt-get)\s[^`]*)`", README, flags=re.S):
        text = block[0] or block[1]
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$|^#.*$", "", line.strip()).strip()
            if line:
                out.append(re.sub(r"\s+", " ", line))
    return out


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _not_run(command: str) -> str | None:
    return next((k for k in NOT_RUN if command.startswith(k)), None)


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{argv}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_every_command_is_run_or_listed_with_its_reason():
    shown = commands()
    assert len(shown) > 20 and "python -m medres.train --config ct_chest.yaml" in shown
    listed = {k for c in shown if (k := _not_run(c))}
    assert listed == set(NOT_RUN), f"listed but no longer in the README: {set(NOT_RUN) - listed}"
    runnable = [c for c in shown if not _not_run(c)]
    unknown = [c for c in runnable if not any(c.startswith(s) for s in HANDLED)]
    assert unknown == [], f"README commands this test neither runs nor lists in NOT_RUN: {unknown}"
    for part in NOT_HERE:
        assert any(part in c for c in shown), part


def test_several_assignments_per_set_flag_and_repeated_flags():
    from medres.train import _parser

    args = _parser().parse_args(["--config", "c.yaml", "--set", "train.epochs=5", "optim.lr=1e-3",
                                 "--fold", "1", "--set", "cv.folds=3"])
    assert args.overrides == ["train.epochs=5", "optim.lr=1e-3", "cv.folds=3"] and args.fold == [1]


def test_commands_that_cannot_run_here_parse():
    """The torchrun, GPU and scheduler lines: the same arguments to medres.train with --help."""
    checked = 0
    for c in commands():
        if "-m medres.train" in c and _not_run(c):
            argv = shlex.split(c)
            if "-m" not in argv:  # a scheduler loop: the command inside the quoted --wrap "..."
                inner = next(a for a in argv if "-m medres.train" in a)  # shlex keeps the loop's ';' on it
                argv = shlex.split(inner.rstrip(";").replace("$k", "0"))
            args = argv[argv.index("-m"):] + ["--help"]
            assert "--config" in run(args, ROOT).stdout
            checked += 1
    assert checked >= 5


# ---- the walk through the README, in its order

def _argv(command: str) -> list[str]:
    """The command's arguments after ``python``, optional parts given, placeholders left for the caller."""
    for part in NOT_HERE:
        command = command.replace(part, "")
    command = command.replace("[--folds 0 1 2 3 4]", "--folds 0 1").replace("[--folds ...]", "--folds 0 1")
    command = re.sub(r"\[([^\]]+)\]", r"\1", command)  # [--tta] -> --tta
    argv = shlex.split(command)
    assert argv[0] == "python", command
    return argv[1:]


def _swap(argv: list[str], mapping: dict[str, str]) -> list[str]:
    return [mapping.get(a, a) for a in argv]


class Walk:
    """The working directory and what the README's commands left in it."""

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.env = cwd, {"MEDRES_PROJECT_KEY": "0123456789abcdef" * 4}
        self.done: list[str] = []

    def python(self, argv: list[str]) -> subprocess.CompletedProcess:
        return run(argv, self.cwd, self.env)

    def demo_scan(self) -> str:
        return str(sorted((self.cwd / "demo_data" / "ct_chest" / "images").glob("*.nii.gz"))[0]
                   .relative_to(self.cwd))


def _train_main(w: Walk, c: str) -> None:
    p = w.python(_argv(c) + ["--set", *TINY])
    # progress without a terminal: the demo generation and the folds say what they do
    assert re.search(r"demo cohort: writing ct_chest: (\d+)/\1 scans done in", p.stderr), p.stderr[-2000:]
    run_dir = w.cwd / "runs" / "ct_chest"
    assert (run_dir / "report" / "report.html").is_file()
    assert {p.name for p in run_dir.glob("fold_*")} == {"fold_0", "fold_1"}
    # my_cohort.csv: a manifest of one's own (the demo's, paths relative to the working directory)
    demo = w.cwd / "demo_data" / "ct_chest"
    with open(demo / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["image"], r["mask"] = f"demo_data/ct_chest/{r['image']}", f"demo_data/ct_chest/{r['mask']}"
    with open(w.cwd / "my_cohort.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _train_fold(w: Walk, c: str) -> None:  # --fold 3 of the main job: a run with four folds
    w.python(_argv(c) + ["--set", *TINY, "cv.folds=4", "output.name=ct_chest_fold3"])
    assert {p.name for p in (w.cwd / "runs" / "ct_chest_fold3").glob("fold_*")} == {"fold_3"}


def _list_configs(w: Walk, c: str) -> None:
    out = w.python(_argv(c)).stdout
    assert "ct_chest.yaml" in out and "cxr.yaml" in out


def _check(w: Walk, c: str) -> None:
    argv = _swap(_argv(c), {"/data/indexed/manifest.csv": "demo_export/indexed/manifest.csv"})
    assert "OK" in w.python(argv).stdout


def _plan(w: Walk, c: str) -> None:
    w.python(_argv(c))
    assert (w.cwd / "configs" / "my_cohort.yaml").is_file()


def _train_planned(w: Walk, c: str) -> None:
    w.python(_argv(c) + ["--fold", "0", "--set", *TINY])
    assert (w.cwd / "runs" / "my_cohort" / "fold_0" / "predictions.parquet").is_file()


def _demo_export(w: Walk, c: str) -> None:
    p = w.python(_argv(c) + ["--n-patients", "12"])
    assert "python -m medres.data.index" in p.stdout
    assert re.search(r"demo export: writing studies: (\d+)/\1 studies done in", p.stderr), p.stderr[-2000:]


def _index(w: Walk, c: str) -> None:
    argv = _swap(_argv(c), {"/data/export": "demo_export/export", "/data/indexed": "demo_export/indexed",
                            "labels.csv": "demo_export/labels.csv"})
    w.python(argv)
    assert (w.cwd / "demo_export" / "indexed" / "manifest.csv").is_file()


def _train_indexed(w: Walk, c: str) -> None:
    argv = [a.replace("/data/indexed", "demo_export/indexed") for a in _argv(c)]
    w.python(argv + ["--fold", "0", "--set", *TINY, "output.name=hospital"])
    assert (w.cwd / "runs" / "hospital" / "fold_0" / "predictions.parquet").is_file()


def _train_cxr(w: Walk, c: str) -> None:
    w.python(_argv(c) + ["--fold", "0", "--set", *TINY_CXR])
    assert (w.cwd / "demo_data" / "cxr" / "manifest.csv").is_file()
    assert (w.cwd / "runs" / "cxr" / "fold_0" / "predictions.parquet").is_file()


def _train_cxr_findings(w: Walk, c: str) -> None:
    w.python(_argv(c) + ["--fold", "0", "--set", *TINY_CXR, "tasks.1.interval=0.5"])
    assert (w.cwd / "demo_data" / "cxr_findings" / "manifest.csv").is_file()
    assert (w.cwd / "runs" / "cxr_findings" / "fold_0" / "predictions.parquet").is_file()


def _demo_cxr(w: Walk, c: str) -> None:
    w.python(_argv(c) + ["--n-patients", "6"])
    assert (w.cwd / "demo_cxr" / "manifest.csv").is_file()


def _evaluate(w: Walk, c: str) -> None:
    w.python(_swap(_argv(c), {"DIR": "report_copy", "runs/OTHER": "runs/ct_chest"}))
    assert (w.cwd / "report_copy" / "report.html").is_file()


def _predict(w: Walk, c: str) -> None:
    argv = _swap(_argv(c), {"SCAN_OR_SERIES_FOLDER_OR_MANIFEST.csv": "my_cohort.csv",
                            "scan.nii.gz": w.demo_scan()})
    w.python(argv)
    out = w.cwd / argv[argv.index("--output") + 1]
    assert (out / "predictions.csv").is_file()


def _export(w: Walk, c: str) -> None:
    w.python(_argv(c))
    assert (w.cwd / "exported" / "export.json").is_file()


HANDLED = {
    "python -m medres.train --config ct_chest.yaml --set data.manifest=": _train_indexed,
    "python -m medres.train --config ct_chest.yaml --fold 3": _train_fold,
    "python -m medres.train --config ct_chest.yaml": _train_main,
    "python -m medres.train --list-configs": _list_configs,
    "python -m medres.data.check": _check,
    "python -m medres.plan": _plan,
    "python -m medres.train --config configs/my_cohort.yaml": _train_planned,
    "export MEDRES_PROJECT_KEY=": lambda w, c: None,  # the walk's environment holds a key
    "python -m medres.data.demo --out demo_export --layout export": _demo_export,
    "python -m medres.data.index": _index,
    "python -m medres.train --config cxr.yaml": _train_cxr,
    "python -m medres.train --config cxr_findings.yaml": _train_cxr_findings,
    "python -m medres.data.demo --kind cxr --out demo_cxr": _demo_cxr,
    "python -m medres.evaluate --run runs/ct_chest [": _evaluate,
    "python -m medres.predict": _predict,
    "python -m medres.export": _export,
}

# what each Python block must have made (run after the block, in its process)
BLOCK_CHECKS = {
    "Predictor.from_run": "assert set(pred.probabilities) == {'normal', 'nodule'}, pred.probabilities\n"
                          "assert pred.mask.shape[-3:] == medres_load(scan).shape[-3:]\n"
                          "assert run.run_dir.name == 'smoke' and len(run.predictions) == 2\n",
    "annotation_to_mask": "import nibabel as nib\n"
                          "assert nib.load('masks/c1.nii.gz').get_fdata().max() == 1\n",
    "create_model": "assert tuple(out.cls_logits.shape) == (2, 2)\n"
                    "assert tuple(out.seg_logits.shape) == (2, 2, 32, 64, 64)\n",
}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # tiny runs of every README command: ~8 min on a quiet 2-core machine
def test_the_readme_runs_as_written(tmp_path):
    w = Walk(tmp_path)
    commands_left = [c for c in commands() if not _not_run(c)]
    blocks_left = python_blocks()
    # the README's order; Python blocks run once the command before them in the README has run
    positions = sorted([(README.index(b), "py", b) for b in blocks_left]
                       + [(_position(c), "sh", c) for c in dict.fromkeys(commands_left)])
    for _, kind, item in positions:
        start = time.perf_counter()
        if kind == "sh":
            handler = next(h for s, h in HANDLED.items() if item.startswith(s))
            handler(w, item)
        else:
            check = next(v for k, v in BLOCK_CHECKS.items() if k in item)
            code = item + "\nfrom medres import load_image as medres_load\n" + check
            run(["-c", code], w.cwd, w.env)
        w.done.append(item)
        print(f"{time.perf_counter() - start:6.1f} s  {item.splitlines()[0][:90]}")  # shown with -s / -rP
    assert len([d for d in w.done if d in blocks_left]) == len(blocks_left) == 3


# commands the README shows after the one that needs their output: run just before that one
BEFORE = {"python -m medres.data.demo --out demo_export --layout export": "python -m medres.data.index"}


def _position(command: str) -> int:
    """Where a (joined, comment-less) command starts in the README (for those in BEFORE: just before
    the command that needs them)."""
    if command in BEFORE:
        return _position(next(c for c in commands() if c.startswith(BEFORE[command]))) - 1
    pattern = r"\s+(?:\\\s+)?".join(re.escape(t) for t in command.split(" "))
    return re.search(pattern, README).start()
