"""``python -m medres.plan``: write a planned configuration (and fingerprint.json) for a cohort.

    python -m medres.plan --manifest M --out configs/my_cohort.yaml [--modality CT|MR]
                          [--device cuda --memory-gb 80] [--minutes N] [--folds 5] [--force]

``--out`` ends in ``.yaml``/``.yml``, is never the manifest, and an existing file is replaced only
with ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medres.errors import MedresError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medres.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="the cohort CSV")
    p.add_argument("--out", required=True, help="the YAML to write; fingerprint.json goes beside it")
    p.add_argument("--modality", choices=["CT", "MR"], help="default: inferred from the intensities")
    p.add_argument("--device", default="cpu", help="where training will run: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--memory-gb", type=float, help="memory budget of the training process (default: half "
                   "the free memory on the CPU, 90%% of the free GPU memory)")
    p.add_argument("--minutes", type=float, help="wall-clock budget of the whole cross-validation")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--name", help="output.name (default: the stem of --out)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (and fingerprint.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from medres.logs import route_library_logs

    route_library_logs()  # highdicom's, MLflow's and alembic's INFO lines stay off the terminal
    from medres.plan.planner import PlanOptions, plan_config

    try:
        plan = plan_config(args.manifest, args.out, modality=args.modality, device=args.device,
                           memory_gb=args.memory_gb, minutes=args.minutes,
                           options=PlanOptions(folds=args.folds, name=args.name, force=args.force))
    except MedresError as e:
        print(f"medres.plan: error: {e}", file=sys.stderr)
        return 2
    c = plan.config
    print(f"wrote {plan.path} and {plan.path.parent / 'fingerprint.json'}: spacing {c.data.spacing} mm, "
          f"patch {c.data.patch_size}, batch {c.train.batch_size}, {c.train.epochs} epochs "
          f"(~{plan.measurements['estimated_minutes']:.1f} min estimated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
