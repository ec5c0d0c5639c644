"""The main job on a hospital export against the built-in cohort: same folds, and within noise the same
out-of-fold AUROC and Dice (issue 9, item 4). Not a speed benchmark: a parity measurement that trains.

    PYTHONPATH=. python benchmarks/export_parity.py --builtin-run runs/ct_chest --work /tmp/parity

Steps, each what a user would do:

1. the built-in demo cohort the built-in run used (its ``config.yaml`` names it) written as a hospital
   export (``medres.data.demo.export.generate_export``: nested tree, SOP-UID file names, localizer,
   thick and coronal series, SEG / RTSTRUCT, ``labels.csv`` keyed by AccessionNumber);
2. ``medres.data.index`` on it (labels and the ``site`` column carried into the manifest);
3. the built-in run's ``folds.csv`` carried over to the export's pseudonymous patient ids through
   ``private/pseudonyms.csv`` (pseudonyms are keyed hashes, so folds drawn afresh would differ: a
   project moving to an export keeps its folds with ``cv.folds_file``);
4. ``python -m medres.train --config ct_chest.yaml`` with ``data.manifest`` and ``cv.folds_file`` set;
5. both runs' ``summary.json``: the folds compared patient for patient, AUROC and Dice side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _summary(run: Path) -> dict:
    return json.loads((run / "report" / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--builtin-run", type=Path, required=True, help="a finished run of ct_chest.yaml")
    p.add_argument("--work", type=Path, required=True, help="folder for the export, index and run")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for the export run (compare with a built-in run of the same settings)")
    a = p.parse_args()
    from medres.config import IndexConfig
    from medres.data.demo.export import generate_export
    from medres.data.index import index_dicom

    saved = yaml.safe_load((a.builtin_run / "config.yaml").read_text())
    manifest = Path(saved["data"]["manifest"])
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDRES_PROJECT_KEY", "export-parity-benchmark-key-0123456789")
    t0 = time.perf_counter()
    labels = (a.work / "labels.csv") if (a.work / "export").exists() else generate_export(manifest, a.work)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    index_dicom(a.work / "export", a.work / "indexed", labels=labels,
                rules=IndexConfig(label_columns=["label", "site"]))
    t_index = time.perf_counter() - t0

    # 3. carry the folds: built-in patient P0007 <-> accession ACC0007<study> <-> export pseudonym
    builtin_fold = {r["patient_id"]: r["fold"] for r in _read(a.builtin_run / "folds.csv")}
    carried = {}
    for r in _read(a.work / "indexed" / "private" / "pseudonyms.csv"):
        carried[r["patient_id"]] = builtin_fold[f"P{r['AccessionNumber'][3:7]}"]
    folds_file = a.work / "folds_carried.csv"
    with open(folds_file, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "fold"])
        w.writerows(sorted(carried.items()))

    # 4. train as a user would
    runs = a.work / "runs"
    cmd = [sys.executable, "-m", "medres.train", "--config", "ct_chest.yaml", "--quiet",
           "--output", str(runs), "--set", f"data.manifest={a.work / 'indexed' / 'manifest.csv'}",
           f"cv.folds_file={folds_file}", *a.set]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    t_train = time.perf_counter() - t0

    # 5. compare
    run = runs / "ct_chest"
    export_fold = {r["patient_id"]: r["fold"] for r in _read(run / "folds.csv")}
    same_folds = export_fold == carried
    ours, theirs = _summary(run), _summary(a.builtin_run)
    print(f"export written in {t_export:.0f} s, indexed in {t_index:.0f} s, trained in {t_train:.0f} s")
    print(f"same folds, patient for patient: {same_folds} ({len(export_fold)} patients)")
    print(json.dumps({"builtin": _headline(theirs), "export": _headline(ours)}, indent=1))
    if not same_folds:
        sys.exit(1)


def _headline(summary: dict) -> dict:
    """Pooled out-of-fold AUROC (patient bootstrap interval) and Dice on the scans with a nodule, and the
    per-fold AUROC, from a run's summary.json."""
    out: dict = {"auroc_per_fold": {}}
    for r in summary["records"]:
        if r["subgroup"] != "all":
            continue
        seg = r["head"] == "segmentation" and "reference present" in r["class"] and r["metric"] == "dice"
        auroc = r["head"] == "classification" and r["metric"] == "auroc"
        if r["scope"] == "pooled" and "bootstrap" in r["ci_method"] and (auroc or seg):
            out["auroc" if auroc else "dice"] = [round(r[k], 3) for k in ("value", "ci_low", "ci_high")]
        elif r["scope"] == "fold" and auroc:
            out["auroc_per_fold"][r["fold"]] = round(r["value"], 3)
    return out


if __name__ == "__main__":
    main()
