"""Generate a demo cohort locally: ``python -m medres.data.demo [--out X] [--kind cxr] [--layout export]``.

``--kind cxr_findings``: the chest X-ray cohort with effusion, cardiomegaly and the cardiothoracic ratio
beside the opacity (several questions per radiograph; ``medres.data.demo.cxr``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from medres.data.demo.ct import generate_demo
from medres.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder to write (reused if it holds the same cohort); "
                                                     "default demo_data/KIND")
    parser.add_argument("--kind", choices=("ct_chest", "cxr", "cxr_findings"), default="ct_chest",
                        help="ct_chest: 3D chest CT (default); cxr: 2D chest radiographs "
                             "(medres.data.demo.cxr); cxr_findings: the radiographs with opacity, effusion, "
                             "cardiomegaly and the cardiothoracic ratio")
    parser.add_argument("--n-patients", type=int, default=None,
                        help="default: 100 (ct_chest), 150 (cxr, cxr_findings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["builtin", "export"], default="builtin",
                        help="export: the cohort as a hospital DICOM export (medres.data.demo.export)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress (a bar on a terminal, else a line per stage on stderr)")
    args = parser.parse_args(argv)
    progress = not args.quiet
    if args.layout == "export" and args.kind != "ct_chest":
        parser.error("--layout export writes the chest CT cohort only (--kind ct_chest)")
    n_patients = args.n_patients or (100 if args.kind == "ct_chest" else 150)
    args.out = args.out or str(Path("demo_data") / args.kind)
    start = time.perf_counter()
    if args.layout == "export":
        from medres.data.demo.export import generate_export

        try:
            builtin = generate_demo(Path(args.out) / "builtin", n_patients=n_patients, seed=args.seed,
                                    workers=min(os.cpu_count() or 1, 16), progress=progress)
            labels = generate_export(builtin, args.out, seed=args.seed, progress=progress)
        except DataError as e:
            parser.exit(2, f"error: {e}\n")
        export, indexed = Path(args.out) / "export", Path(args.out) / "indexed"
        print(f"demo export: {export} and {labels} ({time.perf_counter() - start:.1f} s); next: "
              f"python -m medres.data.index {export} --out {indexed} --labels {labels}")
        return 0
    try:
        if args.kind in ("cxr", "cxr_findings"):
            from medres.data.demo.cxr import generate_cxr_demo

            manifest = generate_cxr_demo(args.out, n_patients=n_patients, seed=args.seed,
                                         findings=args.kind == "cxr_findings", progress=progress)
        else:
            manifest = generate_demo(args.out, n_patients=n_patients, seed=args.seed,
                                     workers=min(os.cpu_count() or 1, 16), progress=progress)
    except DataError as e:
        parser.exit(2, f"error: {e}\n")
    with open(manifest) as f:
        n = sum(1 for _ in f) - 1
    print(f"demo cohort: {n} scans, manifest {manifest} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
