"""Leave-one-site-out cross-validation of the chest X-ray job on its 3-site demo cohort, end to end.

Trains ``configs/cxr.yaml`` with ``cv.strategy: leave_group_out`` and ``cv.group_column: site``: one fold
per site, each fold's model (and its inner validation) from the other two sites only, then the report.
Prints each held-out site's AUROC with its interval, calibration-in-the-large and slope, and the
DerSimonian-Laird random-effects summary with I², tau² and the prediction interval, all read back from
the run's ``summary.json`` (the records the report shows).

The demo gives a fifth of its patients a follow-up, some at another site; a patient under two sites
is refused by leave-group-out (he would be trained on and held out at once), so this script writes a
manifest next to the demo's that keeps each patient's scans at the site of the first scan only, and
says how many scans it left out.

    python benchmarks/leave_site_out.py --set train.epochs=8          # 150 patients, as in BENCHMARKS.md
    python benchmarks/leave_site_out.py --patients 15 --set train.epochs=1 --set data.spacing=[12,12] \\
        --set data.patch_size=[32,32]                                 # a smoke run (tests use this)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from medres.config import load_config  # noqa: E402
from medres.data.demo.cxr import generate_cxr_demo  # noqa: E402

MANIFEST = "manifest_one_site_per_patient.csv"


@dataclass
class LeaveSiteOut:
    """What one leave-site-out run gave: the run folder, the scans dropped and the report's records."""

    run_dir: Path
    dropped_scans: int
    sites: pd.DataFrame  # one row per held-out site: the external_group records, wide
    pooled: pd.DataFrame  # the external_pooled records (metric, value, ci_low, ci_high, note)
    seconds: float


def one_site_per_patient(manifest: Path) -> tuple[Path, int]:
    """Write `MANIFEST` beside ``manifest``: each patient's scans at the site of its first scan (case
    order). Returns its path and the number of scans left out."""
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    first = df.groupby("patient_id", sort=False)["site"].transform("first")
    keep = df["site"] == first
    out = manifest.with_name(MANIFEST)
    df[keep].to_csv(out, index=False)
    return out, int((~keep).sum())


def leave_site_out(out: Path, *, patients: int = 150, overrides: list[str] | None = None,
                   quiet: bool = True) -> LeaveSiteOut:
    """Generate the CXR demo under ``out/demo``, train and report leave-one-site-out under ``out/runs``."""
    from medres.train import run

    t0 = time.perf_counter()
    demo = out / "demo"
    generate_cxr_demo(demo, n_patients=patients, seed=0)
    manifest, dropped = one_site_per_patient(demo / "manifest.csv")
    cfg = load_config(ROOT / "configs" / "cxr.yaml", [
        f"data.manifest={manifest}", "cv.strategy=leave_group_out", "cv.group_column=site",
        "output.tracking=[]", f"output.dir={out / 'runs'}", "output.name=cxr_leave_site_out",
        *(overrides or [])])
    result = run(cfg, quiet=quiet)
    summary = json.loads((Path(result.report).parent / "summary.json").read_text())
    rec = pd.DataFrame(summary["records"])
    groups = rec[rec["scope"] == "external_group"]
    rows = []
    for (fold, site), part in groups.groupby(["fold", "subgroup"], sort=True):
        by = part.set_index("metric")
        row = {"fold": fold, "held out": site, "scans": int(part["n"].iloc[0]),
               "positives": int(part["n_pos"].iloc[0])}
        for metric in ("auroc", "calibration_intercept", "calibration_slope"):
            if metric in by.index:
                row[metric] = (by.loc[metric, "value"], by.loc[metric, "ci_low"], by.loc[metric, "ci_high"])
        rows.append(row)
    pooled = rec.loc[rec["scope"] == "external_pooled", ["metric", "value", "ci_low", "ci_high", "note"]]
    return LeaveSiteOut(result.run_dir, dropped, pd.DataFrame(rows), pooled.reset_index(drop=True),
                        time.perf_counter() - t0)


def _ci(cell) -> str:
    if not isinstance(cell, tuple):
        return "n/a"
    value, lo, hi = (math.nan if v is None else float(v) for v in cell)
    return f"{value:.3f} ({lo:.3f}-{hi:.3f})" if math.isfinite(lo) else f"{value:.3f}"


def render(res: LeaveSiteOut) -> str:
    """The per-site table and the pooled estimate as Markdown."""
    lines = ["| held out | scans | positives | AUROC (95% CI) | calibration-in-the-large "
             "| calibration slope |", "|---|---|---|---|---|---|"]
    for _, r in res.sites.iterrows():
        lines.append(f"| {r['held out']} | {r['scans']} | {r['positives']} | {_ci(r.get('auroc'))} | "
                     f"{_ci(r.get('calibration_intercept'))} | {_ci(r.get('calibration_slope'))} |")
    by = res.pooled.set_index("metric")
    if "auroc" in by.index:
        p = by.loc["auroc"]
        text = ("pooled AUROC (DerSimonian-Laird, logit scale): "
                f"{_ci((p['value'], p['ci_low'], p['ci_high']))}")
        if "auroc_i2" in by.index:
            pi = by.loc["auroc_prediction_interval"]
            text += (f"; I² {100 * by.loc['auroc_i2', 'value']:.1f}%, "
                     f"tau² {by.loc['auroc_logit_tau2', 'value']:.4f}"
                     f", Q {by.loc['auroc_q', 'value']:.2f}; prediction interval for a new site "
                     f"{_ci((pi['value'], pi['ci_low'], pi['ci_high']))}")
        lines += ["", text + f" ({p['note']})"]
    lines += ["", f"scans left out (a follow-up at another site): {res.dropped_scans}; "
              f"{res.seconds / 60:.1f} min end to end; run folder {res.run_dir}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/leave_site_out"),
                    help="folder for the demo cohort and the run")
    ap.add_argument("--patients", type=int, default=150, help="demo patients (3 sites)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a configuration override, as medres.train --set")
    args = ap.parse_args(argv)
    print(render(leave_site_out(args.out.resolve(), patients=args.patients, overrides=args.overrides)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
