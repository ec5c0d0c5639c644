"""Every command the README shows runs, as written or at a tiny size.

How each shell command of README.md is run here:

- `python3 -m venv ...`, `pip install -e ".[dev]"`: not run (they install; CI's install does it).
- `pytest`: not run (it is this suite).
- `python -m medres.train --config ct_chest.yaml`: as written, plus tiny `--set` overrides
  (12 demo patients at 10 mm, 24^3 patches, 2 folds of 1 epoch), so it ends with the report.
- `python -m medres.data.check --manifest my_cohort.csv --config ct_chest.yaml`: on that
  run's demo manifest.
- `python -m medres.evaluate --run runs/ct_chest [--output DIR] [--compare runs/OTHER]`: on that run,
  with `--output` and `--compare` (the run against itself).
- `python -m medres.predict --checkpoint .../checkpoint_best.pt --input ... --output ... [--tta]`:
  fold 0's best checkpoint on the demo manifest, with `--tta`.
- the `torchrun ... -m medres.train ...` lines and `... --fold 3`: the same arguments with `--help`
  (several processes or a 5-fold run are too slow here; DDP itself: tests/engine/test_distributed.py).

The README's `--set train.epochs=5 optim.lr=1e-3` (several assignments after one flag) is checked on
the parser. Python blocks are not run here (the notebooks' tests run the same calls).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY = ["data.demo.n_patients=12", "data.spacing=[10.0,10.0,10.0]", "data.patch_size=[24,24,24]",
        "cv.folds=2", "cv.val_fraction=0.34", "train.epochs=1", "train.batch_size=2",
        "model.options.base_channels=4", "evaluate.bootstrap_resamples=100", "data.cache=memory"]


def commands() -> list[str]:
    """The shell commands of the README's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                out.append(line)
    for line in re.findall(r"^\s+(python -m medres\.data\.check .*)$", README, flags=re.M):  # in a list item
        out.append(line.strip())
    return out


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{argv}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_the_readme_shows_the_commands_this_test_runs():
    shown = commands()
    for start in ("python -m medres.train --config ct_chest.yaml", "python -m medres.evaluate --run",
                  "python -m medres.predict --checkpoint", "python -m medres.data.check --manifest",
                  "torchrun --nproc_per_node=4 -m medres.train"):
        assert any(c.startswith(start) for c in shown), start


def test_several_assignments_per_set_flag_and_repeated_flags():
    from medres.train import _parser

    args = _parser().parse_args(["--config", "c.yaml", "--set", "train.epochs=5", "optim.lr=1e-3",
                                 "--fold", "1", "--set", "cv.folds=3"])
    assert args.overrides == ["train.epochs=5", "optim.lr=1e-3", "cv.folds=3"] and args.fold == [1]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a tiny CV run, evaluation and prediction: ~2 min on a quiet 2-core machine
def test_readme_commands_run(tmp_path):
    shown = commands()
    train = next(c for c in shown if c.startswith("python -m medres.train --config ct_chest.yaml")
                 and "--fold" not in c)
    demo, runs = tmp_path / "demo", tmp_path / "runs"
    run(shlex.split(train)[1:] + ["--quiet", "--output", str(runs), "--set", f"data.demo.out={demo}", *TINY],
        ROOT)
    run_dir = runs / "ct_chest"
    assert (run_dir / "report" / "report.html").is_file()
    assert {p.name for p in run_dir.glob("fold_*")} == {"fold_0", "fold_1"}

    check = next(c for c in shown if c.startswith("python -m medres.data.check"))
    argv = shlex.split(check)[1:]
    argv[argv.index("my_cohort.csv")] = str(demo / "manifest.csv")
    assert "OK" in run(argv, ROOT).stdout

    evaluate = next(c for c in shown if c.startswith("python -m medres.evaluate"))
    argv = shlex.split(re.sub(r"\[(--\w+) [^\]]+\]", r"\1", evaluate))[1:]  # [--output DIR] -> --output
    argv = [str(run_dir) if a == "runs/ct_chest" else a for a in argv]
    argv.insert(argv.index("--output") + 1, str(tmp_path / "report"))
    argv.insert(argv.index("--compare") + 1, str(run_dir))
    run(argv, ROOT)
    assert (tmp_path / "report" / "report.html").is_file()

    predict = next(c for c in shown if c.startswith("python -m medres.predict"))
    argv = shlex.split(predict.replace("[--tta]", "--tta"))[1:]
    argv[argv.index("--checkpoint") + 1] = str(run_dir / "fold_0" / "checkpoint_best.pt")
    argv[argv.index("--input") + 1] = str(demo / "manifest.csv")
    argv[argv.index("--output") + 1] = str(tmp_path / "predictions")
    run(argv, ROOT)
    assert (tmp_path / "predictions" / "predictions.csv").is_file()


def test_full_size_readme_commands_parse():
    """The torchrun and per-fold lines: the same arguments to medres.train, with --help (too slow to run)."""
    for c in commands():
        if "-m medres.train" in c and (c.startswith("torchrun") or "--fold" in c):
            argv = shlex.split(c)
            if "-m" not in argv:  # a scheduler loop: the command inside the quoted --wrap "..."
                inner = next(a for a in argv if "-m medres.train" in a)  # shlex keeps the loop's ';' on it
                argv = shlex.split(inner.rstrip(";").replace("$k", "0"))
            args = argv[argv.index("-m"):] + ["--help"]
            assert "--config" in run(args, ROOT).stdout
