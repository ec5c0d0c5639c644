"""Start-up time of medres's command lines: ``--help`` of every entry point, and the manifest-only
pre-flight check (``python -m medres.data.check --manifest-only``), each in a fresh interpreter.

    python benchmarks/startup.py [--repeats 5] [--quick] [--importtime-only]

Goal (issue 12): every ``--help`` and the manifest-only check under 1 s, and the latter without
importing torch or MONAI (heavy libraries are imported where they are used). Prints the median wall
and CPU time of each command and which heavy libraries its process imported; exits 1 when the CPU
time of one reaches 1 s (wall time on a shared machine mostly measures the other processes).

Then ``python -X importtime`` of predict, evaluate and train: ``--help``, and the modules each command
imports on its real path (a scan predicted, a run evaluated, a fold trained), with the total and the
packages of largest cumulative import time (cumulative times nest: ``monai`` includes what it imports).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["medres.train", "medres.evaluate", "medres.predict", "medres.data.check", "medres.data.demo"]
HEAVY = ("torch", "monai", "pandas", "scipy", "nibabel", "pydicom", "sklearn")
# runs the module as __main__ and reports the heavy libraries it imported, on stderr
PROBE = "\n".join([
    "import runpy, sys",
    "module, sys.argv = sys.argv[1], sys.argv[1:]",
    "try:",
    "    runpy.run_module(module, run_name='__main__', alter_sys=True)",
    "except SystemExit as e:",
    "    code = e.code",
    "else:",
    "    code = 0",
    f"heavy = {{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})",
    "print('HEAVY=' + ','.join(sorted(heavy)), file=sys.stderr)",
    "sys.exit(code)",
])


def timed(args: list[str], repeats: int) -> tuple[float, float, str]:
    """Median wall seconds, median CPU seconds (user + system of the child: less sensitive to other
    processes on a shared machine) and the heavy libraries the command imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times, cpu, heavy = [], [], ""
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=ROOT, capture_output=True,
                           text=True)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{p.stdout}{p.stderr}")
        heavy = next((line[6:] for line in p.stderr.splitlines() if line.startswith("HEAVY=")), "?")
    return statistics.median(times), statistics.median(cpu), heavy


# what each command imports on its real path (its main() imports these where it uses them)
REAL_PATH = {
    "medres.predict": ["medres.predict", "medres.data.pipeline.datasets", "medres.data.manifest",
                       "medres.data.dicom_objects.seg_write", "medres.inference.predictor",
                       "medres.inference.members"],
    "medres.evaluate": ["medres.evaluate", "medres.evaluation", "medres.evaluation.cases",
                        "medres.evaluation.gallery", "medres.report"],
    "medres.train": ["medres.train", "medres.data.cohort", "medres.data.demo", "medres.cv",
                     "medres.training.fold", "medres.training.loop", "medres.training.tracking",
                     "medres.inference.predictor", "medres.evaluation", "medres.evaluation.cases"],
}


def importtime(args: list[str]) -> tuple[float, list[tuple[str, float, float]]]:
    """``python -X importtime ARGS``: total import seconds and, per top-level package, (name, cumulative s,
    self s summed over its modules), largest cumulative first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{p.stdout}{p.stderr[-3000:]}")
    cumulative: dict[str, float] = {}
    own: dict[str, float] = {}
    total = 0.0
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        name = name.strip()
        package = name.split(".")[0]
        own[package] = own.get(package, 0.0) + int(self_us) / 1e6
        if name == package:
            cumulative[package] = max(cumulative.get(package, 0.0), int(cum_us) / 1e6)
        if depth == 0:
            total += int(cum_us) / 1e6
    rows = sorted(((k, v, own.get(k, 0.0)) for k, v in cumulative.items()), key=lambda r: -r[1])
    return total, rows


def print_importtimes(top: int = 8) -> None:
    print("\n`python -X importtime`: total import seconds; the packages of largest cumulative time "
          "(self time summed over the package's modules)\n")
    print("| command | imports s | largest cumulative (self) s |\n|---|---|---|")
    for module, modules in REAL_PATH.items():
        for args, label in ((["-m", module, "--help"], f"python -m {module} --help"),
                            (["-c", "import " + ", ".join(modules)], f"{module}: real path")):
            total, rows = importtime(args)
            shown = ", ".join(f"{name} {cum:.1f} ({own:.1f})" for name, cum, own in rows[:top])
            print(f"| `{label}` | {total:.1f} | {shown} |")


def tiny_manifest(folder: Path, rows: int = 200) -> Path:
    """A manifest of ``rows`` cases whose image files exist (empty files: only the manifest is checked)."""
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "patient_id", "image", "label"])
        for i in range(rows):
            (folder / f"c{i}.nii.gz").touch()
            w.writerow([f"c{i}", f"p{i}", f"c{i}.nii.gz", ["normal", "nodule"][i % 2]])
    return folder / "manifest.csv"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one run per command")
    p.add_argument("--importtime-only", action="store_true", help="only the python -X importtime tables")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}; median of {repeats} run(s) (importtime: one run each)")
    if args.importtime_only:
        print_importtimes()
        return 0
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [([m, "--help"], f"python -m {m} --help") for m in ENTRY_POINTS]
        manifest = tiny_manifest(Path(tmp))
        cases.append((["medres.data.check", "--manifest", str(manifest), "--manifest-only"],
                      "python -m medres.data.check --manifest M --manifest-only (200 rows)"))
        print("| command | wall s | CPU s | heavy libraries imported |\n|---|---|---|---|")
        for argv, label in cases:
            seconds, cpu, heavy = timed(argv, repeats)
            print(f"| `{label}` | {seconds:.2f} | {cpu:.2f} | {heavy or 'none'} |")
            if cpu >= 1.0 or ("manifest-only" in label and {"torch", "monai"} & set(heavy.split(","))):
                missed.append(label)
    print_importtimes()
    if missed:
        print("goal missed:", "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
